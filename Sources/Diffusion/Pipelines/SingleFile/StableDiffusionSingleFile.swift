import Foundation
import NN
import Tensors

/// A Stable Diffusion checkpoint in one `.safetensors` file with the original (CompVis / Stability) key
/// layout: the UNet under `model.diffusion_model.`, the VAE under `first_stage_model.`, and the text
/// encoder under `cond_stage_model.transformer.` (1.x, openai CLIP) or `cond_stage_model.model.` (2.x,
/// OpenCLIP). The file is memory-mapped and only its header read when opened; the model family, the
/// sizes of the three models and the prediction type are inferred from the tensor names and shapes:
///
/// - Family: the text encoder's layout (OpenCLIP is 2.x).
/// - UNet: channels, layers per block, which blocks attend, `in_channels` (9 for inpainting), the
///   cross-attention width, linear or 1×1-convolution projections, all from the tensors. What the
///   tensors cannot tell follows Stable Diffusion: 8 heads (1.x) or one head per 64 channels (2.x);
///   GroupNorm with 32 groups (or, for widths not divisible by 32, the largest count that divides them all).
/// - Text encoder: width, depth, MLP width, vocabulary and positions from the tensors; one head per 64
///   channels; quick GELU (1.x) or GELU (2.x). A 2.x file with OpenCLIP's `text_projection` holds all 24
///   layers, of which Stable Diffusion uses the penultimate output: its last layer is not loaded (as diffusers).
/// - Prediction type: v-prediction for 2.x (the 768-pixel models) unless it is an inpainting UNet, else
///   epsilon, as diffusers' heuristic; ``SingleFileOptions/predictionType`` overrides it.
/// - Scheduler: diffusers' defaults for Stable Diffusion (PNDM, scaled linear betas 0.00085–0.012).
public final class StableDiffusionSingleFile {
    /// Stable Diffusion's generations, as far as a single file tells.
    public enum Family: String, Sendable, CaseIterable {
        /// openai CLIP ViT-L/14 text encoder (`cond_stage_model.transformer.*`).
        case stableDiffusion1 = "1.x"
        /// OpenCLIP ViT-H/14 text encoder (`cond_stage_model.model.*`).
        case stableDiffusion2 = "2.x"
    }

    /// The text encoder's key layout.
    public enum TextEncoderLayout: Equatable, Sendable {
        /// transformers' `CLIPTextModel` keys under `cond_stage_model.transformer.`.
        case clip
        /// OpenCLIP's `token_embedding`, `positional_embedding`, `transformer.resblocks.N`, `ln_final`;
        /// `storedLayers` resblocks in the file (one more than loaded when it has `text_projection`).
        case openCLIP(storedLayers: Int)
    }

    public let path: String
    public let checkpoint: SafetensorsCheckpoint
    public let family: Family
    public let textEncoderLayout: TextEncoderLayout
    public let unetConfiguration: UNet2DConditionConfiguration
    public let vaeConfiguration: AutoencoderKLConfiguration
    public let textConfiguration: CLIPTextConfiguration
    /// The prediction type inferred (or given in the options).
    public let predictionType: PredictionType
    /// True when the prediction type was inferred rather than given.
    public let predictionTypeInferred: Bool

    /// Opens and inspects the file; nothing is loaded yet.
    ///
    /// - Throws: ``SingleFileError`` for a pickle checkpoint, missing parts or an unknown layout.
    ///
    /// - Parameters:
    ///   - predictionType: the prediction type instead of the inferred one.
    ///   - configurationFolder: a diffusers pipeline folder whose `unet/`, `vae/` and `text_encoder/`
    ///     `config.json` describe the models instead of the inference (as diffusers' `from_single_file(config=)`),
    ///     for sizes the tensors cannot tell (GroupNorm groups, heads); its scheduler's prediction type is used
    ///     unless `predictionType` is given. The family and layout still come from the tensors.
    public init(path: String, predictionType: PredictionType? = nil, configurationFolder: URL? = nil) throws {
        if Self.isPickleName(path) { throw SingleFileError.pickleCheckpoint(path: path) }
        let checkpoint: SafetensorsCheckpoint
        do {
            checkpoint = try SafetensorsCheckpoint(path: path)
        } catch SafetensorsError.pickleCheckpoint {
            throw SingleFileError.pickleCheckpoint(path: path)
        }
        self.path = path
        self.checkpoint = checkpoint
        let reader = SingleFileShapes(checkpoint: checkpoint, path: path)
        try reader.checkParts()
        var (family, layout, text) = try reader.textEncoder()
        var unet = try reader.unet(family: family)
        var vae = try reader.vae()
        var inferred = family == .stableDiffusion2 && unet.inChannels == unet.outChannels ? PredictionType.vPrediction : .epsilon
        if let folder = configurationFolder {
            unet = try UNet2DConditionConfiguration.load(contentsOf: ModelFolder.configurationPath(in: folder.appendingPathComponent("unet")))
            vae = try AutoencoderKLConfiguration.load(contentsOf: ModelFolder.configurationPath(in: folder.appendingPathComponent("vae")))
            text = try CLIPFolder.textConfiguration(in: folder.appendingPathComponent("text_encoder"))
            let scheduler = folder.appendingPathComponent("scheduler")
            if FileManager.default.fileExists(atPath: scheduler.path),
               case .string(let name)? = try SchedulerConfiguration.load(contentsOf: scheduler).values["prediction_type"],
               let given = PredictionType(rawValue: name) {
                inferred = given
            }
        }
        let prediction = predictionType ?? inferred
        if configurationFolder == nil {
            // diffusers' image sizes: 768 for the 2.x v-prediction models, 512 otherwise.
            let imageSize = family == .stableDiffusion2 && prediction == .vPrediction ? 768 : 512
            vae.sampleSize = .square(imageSize)
            unet.sampleSize = .square(imageSize / vae.downsamplingFactor)
        }
        let width = text.hiddenSize
        if let other = unet.crossAttentionDimension.values(count: unet.blockOutChannels.count).first(where: { $0 != width }) {
            throw SingleFileError.inconsistent(path: path, reason: "the text encoder is \(width) wide but the UNet's cross-attention takes \(other)")
        }
        self.family = family
        textEncoderLayout = layout
        textConfiguration = text
        unetConfiguration = unet
        vaeConfiguration = vae
        self.predictionType = prediction
        predictionTypeInferred = predictionType == nil && configurationFolder == nil
    }

    /// The scheduler configuration diffusers uses for single files of Stable Diffusion: PNDM with
    /// scaled linear betas from 0.00085 to 0.012 over 1,000 steps, `steps_offset` 1, `set_alpha_to_one`
    /// false, `skip_prk_steps` true, and the prediction type.
    public var schedulerConfiguration: SchedulerConfiguration {
        get throws {
            try SchedulerConfiguration(className: SchedulerKind.pndm.rawValue, values: [
                "beta_start": .double(0.00085), "beta_end": .double(0.012), "beta_schedule": .string("scaled_linear"),
                "num_train_timesteps": .int(1000), "steps_offset": .int(1), "set_alpha_to_one": .bool(false),
                "skip_prk_steps": .bool(true), "clip_sample": .bool(false), "trained_betas": .null,
                "prediction_type": .string(predictionType.rawValue),
            ])
        }
    }

    /// A one-paragraph account of what was inferred.
    public var summary: String {
        let unet = unetConfiguration
        let text = textConfiguration
        let encoder = textEncoderLayout == .clip ? "CLIP" : "OpenCLIP"
        return "Stable Diffusion \(family.rawValue) single file: UNet \(unet.blockOutChannels) channels, "
            + "\(unet.inChannels) input channels\(unet.inChannels == 9 ? " (inpainting)" : ""), "
            + "\(unet.useLinearProjection ? "linear" : "1×1-convolution") projections; "
            + "\(encoder) text encoder \(text.hiddenSize) wide, \(text.hiddenLayerCount) layers; VAE \(vaeConfiguration.blockOutChannels); "
            + "prediction \(predictionType.rawValue)\(predictionTypeInferred ? " (inferred)" : " (given)")"
    }

    static func isPickleName(_ path: String) -> Bool {
        let lowered = path.lowercased()
        return [".ckpt", ".pt", ".pth", ".bin", ".pkl"].contains { lowered.hasSuffix($0) }
    }

    /// True when `url` names a single-file checkpoint rather than a folder (a regular file, or a
    /// path ending in `.safetensors` / `.ckpt`).
    public static func isSingleFile(_ url: URL) -> Bool {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) { return !isDirectory.boolValue }
        let lowered = url.path.lowercased()
        return lowered.hasSuffix(".safetensors") || isPickleName(lowered)
    }
}
