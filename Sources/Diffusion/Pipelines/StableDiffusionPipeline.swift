import Foundation
import NN
import Tensors

/// A request Stable Diffusion cannot run, named before any work starts.
public struct StableDiffusionError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// diffusers' `StableDiffusionPipeline` (and `StableDiffusionImg2ImgPipeline`, which has the same
/// parts): a CLIP text encoder and its tokenizer, a `UNet2DConditionModel`, an `AutoencoderKL`
/// and a scheduler, stored as a folder with `model_index.json`, `text_encoder/`, `tokenizer/`,
/// `unet/`, `vae/` and `scheduler/`.
///
/// ```swift
/// let pipeline = try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: "stable-diffusion-v1-5"))
/// var parameters = StableDiffusionParameters(prompt: "a photo of an astronaut riding a horse on mars")
/// parameters.steps = 25
/// var generator = RandomGenerator(seed: 1)
/// let output = try pipeline.generate(parameters, generator: &generator)
/// let pictures = StableDiffusionImageProcessor.pixelImages(output.images)
/// ```
///
/// The safety checker and feature extractor a folder may list are accepted and not run
/// (``componentsNotRun`` names them).
public final class StableDiffusionPipeline {
    public let textEncoder: CLIPTextModel
    public let tokenizer: CLIPTokenizer
    public let unet: UNet2DConditionModel
    public let vae: AutoencoderKL
    /// The scheduler of the folder; every generation works on a fresh one built from its configuration.
    public var scheduler: any Scheduler
    /// `_class_name` written to `model_index.json`.
    public var className: String
    /// The optional components the folder listed, which Diffuse does not run, as `key (Class)`.
    public internal(set) var componentsNotRun: [String] = []

    /// Puts the parts together, checking that they fit: the text encoder's width is the UNet's
    /// `cross_attention_dim`, and the UNet works on the VAE's latents.
    public init(textEncoder: CLIPTextModel, tokenizer: CLIPTokenizer, unet: UNet2DConditionModel, vae: AutoencoderKL,
                scheduler: any Scheduler, className: String = "StableDiffusionPipeline") throws {
        let width = textEncoder.configuration.hiddenSize
        let unetConfiguration = unet.configuration
        let crossAttention = unetConfiguration.crossAttentionDimension.values(count: unetConfiguration.blockOutChannels.count)
        if let other = crossAttention.first(where: { $0 != width }) {
            throw StableDiffusionError("the text encoder is \(width) wide (hidden_size) but the UNet's cross_attention_dim is \(other); "
                                       + "they come from different models")
        }
        let latentChannels = vae.configuration.latentChannels
        // An inpainting UNet takes the latents, the mask and the masked image's latents.
        guard unetConfiguration.inChannels == latentChannels || unetConfiguration.inChannels == 2 * latentChannels + 1 else {
            throw StableDiffusionError("the UNet takes \(unetConfiguration.inChannels) channels (in_channels) but the VAE's latents have "
                                       + "\(latentChannels) (an inpainting UNet takes \(2 * latentChannels + 1))")
        }
        guard unetConfiguration.outChannels == latentChannels else {
            throw StableDiffusionError("the UNet makes \(unetConfiguration.outChannels) channels (out_channels) but the VAE's latents have \(latentChannels)")
        }
        guard tokenizer.vocabulary.count <= textEncoder.configuration.vocabularySize else {
            throw StableDiffusionError("the tokenizer has \(tokenizer.vocabulary.count) tokens but the text encoder only "
                                       + "\(textEncoder.configuration.vocabularySize) (vocab_size)")
        }
        self.textEncoder = textEncoder
        self.tokenizer = tokenizer
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.className = className
        textEncoder.eval()
        unet.eval()
        vae.eval()
    }

    /// Whether the UNet is an inpainting UNet (`in_channels` = 2 × latent channels + 1: the latents, the
    /// mask and the masked image's latents), which needs an init image and a mask.
    public var hasInpaintingUNet: Bool { unet.configuration.inChannels == 2 * vae.configuration.latentChannels + 1 }

    /// How much smaller the latents are than the image: `2^(len(vae.block_out_channels) − 1)`, 8 for Stable Diffusion.
    public var vaeScaleFactor: Int { vae.configuration.downsamplingFactor }

    /// The image size diffusers uses when none is given: the UNet's `sample_size` × ``vaeScaleFactor``.
    public var defaultSize: (height: Int, width: Int) {
        switch unet.configuration.sampleSize {
        case .square(let side)?: return (side * vaeScaleFactor, side * vaeScaleFactor)
        case .rectangle(let height, let width)?: return (height * vaeScaleFactor, width * vaeScaleFactor)
        case nil: return (512, 512)
        }
    }

    /// Loads a pipeline folder saved by diffusers' `save_pretrained` (or by ``save(folder:variant:dataType:)``),
    /// or a single `.safetensors` file in the original Stable Diffusion layout (``load(singleFile:options:precision:scheduler:strict:)``).
    ///
    /// - Parameters:
    ///   - variant: the weights variant of every model (`"fp16"` reads `*.fp16.safetensors`).
    ///   - precision: how every model holds its weights (`.asStored` keeps 16-bit files in 16 bits).
    ///   - scheduler: a scheduler to build from the folder's `scheduler_config.json` instead of the
    ///     class it names (which then need not be one Diffuse implements).
    ///   - strict: when true, any missing, unexpected or mis-shaped weight is an error naming it.
    public static func load(folder: URL, variant: String? = nil, precision: WeightPrecision = .float32,
                            scheduler kind: SchedulerKind? = nil, strict: Bool = true) throws -> StableDiffusionPipeline {
        if StableDiffusionSingleFile.isSingleFile(folder) {
            return try load(singleFile: folder, precision: precision, scheduler: kind, strict: strict)
        }
        let indexURL = folder.appendingPathComponent("model_index.json")
        let index = try StableDiffusionModelIndex.load(contentsOf: indexURL)
        let path = indexURL.path
        _ = try index.check("text_encoder", library: "transformers", classNames: ["CLIPTextModel"], path: path)
        _ = try index.check("tokenizer", library: "transformers", classNames: ["CLIPTokenizer", "CLIPTokenizerFast"], path: path)
        _ = try index.check("unet", library: "diffusers", classNames: [UNet2DConditionConfiguration.className], path: path)
        _ = try index.check("vae", library: "diffusers", classNames: [AutoencoderKLConfiguration.className], path: path)
        let schedulerEntry = try index.check("scheduler", library: "diffusers",
                                             classNames: [index.component("scheduler")?.className ?? ""], path: path)
        let schedulerKind: SchedulerKind
        if let kind {
            schedulerKind = kind
        } else if let named = SchedulerKind(rawValue: schedulerEntry.className) {
            schedulerKind = named
        } else {
            throw ModelFolderError.invalidModelIndex(
                path: path, reason: "scheduler class \"\(schedulerEntry.className)\" is not one Diffuse implements ("
                    + SchedulerKind.allCases.map(\.rawValue).joined(separator: ", ") + "); choose one of those to build from its configuration")
        }
        for name in StableDiffusionModelIndex.requiredComponents {
            let url = folder.appendingPathComponent(name)
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw ModelFolderError.missingFile(path: url.path, hint: "model_index.json lists \"\(name)\" but the folder is missing")
            }
        }
        let textEncoder = try CLIPTextModel.load(folder: folder.appendingPathComponent("text_encoder"), variant: variant,
                                                 strict: strict, precision: precision)
        let tokenizer = try CLIPTokenizer(folder: folder.appendingPathComponent("tokenizer"))
        let unet = try UNet2DConditionModel.load(folder: folder.appendingPathComponent("unet"), variant: variant,
                                                 strict: strict, precision: precision)
        let vae = try AutoencoderKL.load(folder: folder.appendingPathComponent("vae"), variant: variant, strict: strict, precision: precision)
        let configuration = try SchedulerConfiguration.load(contentsOf: folder.appendingPathComponent("scheduler"))
        let scheduler = try Schedulers.make(schedulerKind, configuration: configuration)
        let pipeline = try StableDiffusionPipeline(textEncoder: textEncoder, tokenizer: tokenizer, unet: unet, vae: vae,
                                                   scheduler: scheduler, className: index.className)
        pipeline.componentsNotRun = index.componentsNotRun
        return pipeline
    }

    /// The `model_index.json` text diffusers writes for this pipeline (no safety checker or feature extractor).
    public var modelIndexJSON: String {
        typealias Component = StableDiffusionModelIndex.Component
        var components: [String: Component?] = [
            "text_encoder": Component(library: "transformers", className: "CLIPTextModel"),
            "tokenizer": Component(library: "transformers", className: "CLIPTokenizer"),
            "unet": Component(library: "diffusers", className: UNet2DConditionConfiguration.className),
            "vae": Component(library: "diffusers", className: AutoencoderKLConfiguration.className),
            "scheduler": Component(library: "diffusers", className: type(of: scheduler).className),
        ]
        for key in StableDiffusionModelIndex.optionalComponents { components[key] = Component?.none }
        return StableDiffusionModelIndex(className: className, components: components, requiresSafetyChecker: false).jsonText
    }

    /// Writes the folder diffusers' `StableDiffusionPipeline.from_pretrained` reads: `model_index.json`,
    /// `text_encoder/` (transformers' layout), `tokenizer/` (vocab.json, merges.txt and the token
    /// configuration), `unet/`, `vae/` and `scheduler/scheduler_config.json`.
    ///
    /// - Parameter dataType: the stored type of every model; by default `float16` for the `fp16`
    ///   variant, `bfloat16` for `bf16`, else `float32`.
    public func save(folder: URL, variant: String? = nil, dataType: DataType? = nil) throws {
        let manager = FileManager.default
        try manager.createDirectory(at: folder, withIntermediateDirectories: true)
        // transformers' config.json records the stored dtype; a variant saved beside float32 weights keeps
        // the folder's config (else from_pretrained would load the plain weights as float16).
        let textFolder = folder.appendingPathComponent("text_encoder")
        let textConfiguration = textFolder.appendingPathComponent("config.json")
        let previous = variant == nil ? nil : try? Data(contentsOf: textConfiguration)
        try textEncoder.save(folder: textFolder, variant: variant, dataType: dataType)
        if let previous { try previous.write(to: textConfiguration) }
        try tokenizer.save(to: folder.appendingPathComponent("tokenizer"))
        try unet.save(folder: folder.appendingPathComponent("unet"), variant: variant, dataType: dataType)
        try vae.save(folder: folder.appendingPathComponent("vae"), variant: variant, dataType: dataType)
        let schedulerFolder = folder.appendingPathComponent("scheduler")
        try manager.createDirectory(at: schedulerFolder, withIntermediateDirectories: true)
        try scheduler.saveConfiguration(to: schedulerFolder.appendingPathComponent("scheduler_config.json"))
        try modelIndexJSON.write(to: folder.appendingPathComponent("model_index.json"), atomically: true, encoding: .utf8)
    }

    /// A fresh scheduler for one generation: `kind` (default: the folder's) built from the folder's configuration.
    public func makeScheduler(_ kind: SchedulerKind? = nil) throws -> any Scheduler {
        let kind = kind ?? SchedulerKind(rawValue: type(of: scheduler).className) ?? .pndm
        return try Schedulers.make(kind, configuration: scheduler.configuration)
    }
}
