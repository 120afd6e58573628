import Foundation
import NN
import Tensors

/// What a single file cannot say, given by the caller.
public struct SingleFileOptions: Sendable {
    /// The prediction type, instead of the inferred one (v-prediction for 2.x, epsilon otherwise).
    public var predictionType: PredictionType?
    /// A tokenizer (a tokenizer or pipeline folder, or `bpe_simple_vocab_16e6.txt.gz`) instead of CLIP's BPE
    /// vocabulary from `$DIFFUSE_CLIP_VOCAB` or `data/clip/` (padded with `<|endoftext|>` for 1.x, `!` for 2.x).
    public var tokenizer: URL?
    /// A diffusers pipeline folder whose configurations describe the models (and whose `tokenizer/` is used
    /// unless ``tokenizer`` is given), as diffusers' `from_single_file(config=)`: for sizes the tensors cannot tell.
    public var configurationFolder: URL?

    public init(predictionType: PredictionType? = nil, tokenizer: URL? = nil, configurationFolder: URL? = nil) {
        self.predictionType = predictionType
        self.tokenizer = tokenizer
        self.configurationFolder = configurationFolder
    }
}

extension StableDiffusionPipeline {
    /// Loads a pipeline from a single `.safetensors` file in the original Stable Diffusion layout
    /// (see ``StableDiffusionSingleFile``): the models converted in memory while the file is mapped, the
    /// scheduler diffusers uses for single files, and CLIP's tokenizer.
    ///
    /// - Parameters:
    ///   - precision: how the weights are held (`.asStored` keeps a float16 file in 16 bits, mapped).
    ///   - scheduler: the scheduler to build (default PNDM) from the single-file configuration.
    ///   - strict: any missing, unexpected or mis-shaped tensor is an error naming it.
    public static func load(singleFile url: URL, options: SingleFileOptions = SingleFileOptions(), precision: WeightPrecision = .float32,
                            scheduler kind: SchedulerKind? = nil, strict: Bool = true) throws -> StableDiffusionPipeline {
        let file = try StableDiffusionSingleFile(path: url.path, predictionType: options.predictionType,
                                                 configurationFolder: options.configurationFolder)
        let tokenizer = try file.makeTokenizer(options.tokenizer ?? options.configurationFolder?.appendingPathComponent("tokenizer"))
        let textEncoder = try file.loadTextEncoder(strict: strict, precision: precision)
        let unet = try file.loadUNet(strict: strict, precision: precision)
        let vae = try file.loadVAE(strict: strict, precision: precision)
        let scheduler = try Schedulers.make(kind ?? .pndm, configuration: try file.schedulerConfiguration)
        return try StableDiffusionPipeline(textEncoder: textEncoder, tokenizer: tokenizer, unet: unet, vae: vae, scheduler: scheduler)
    }

    /// Loads a diffusers pipeline folder or a single `.safetensors` file, whichever `url` is.
    public static func load(_ url: URL, variant: String? = nil, options: SingleFileOptions = SingleFileOptions(),
                            precision: WeightPrecision = .float32, scheduler kind: SchedulerKind? = nil,
                            strict: Bool = true) throws -> StableDiffusionPipeline {
        if StableDiffusionSingleFile.isSingleFile(url) {
            return try load(singleFile: url, options: options, precision: precision, scheduler: kind, strict: strict)
        }
        return try load(folder: url, variant: variant, precision: precision, scheduler: kind, strict: strict)
    }
}

extension StableDiffusionSingleFile {
    /// The environment variable naming openai's `bpe_simple_vocab_16e6.txt.gz` (or a tokenizer folder).
    public static let vocabularyEnvironmentKey = "DIFFUSE_CLIP_VOCAB"

    /// The tokenizer for this file: `url` when given, else CLIP's BPE vocabulary from
    /// `$DIFFUSE_CLIP_VOCAB` or `data/clip/bpe_simple_vocab_16e6.txt.gz`, padding as the family does.
    public func makeTokenizer(_ url: URL? = nil) throws -> CLIPTokenizer {
        if let url { return try CLIPTokenizer(contentsOf: url) }
        let location = ProcessInfo.processInfo.environment[Self.vocabularyEnvironmentKey] ?? CLIPTraining.defaultVocabularyPath
        guard FileManager.default.fileExists(atPath: location) else {
            throw StableDiffusionError("a single file holds no tokenizer and CLIP's vocabulary is not at \(location): run `make clip-vocab`, "
                                       + "set \(Self.vocabularyEnvironmentKey) to bpe_simple_vocab_16e6.txt.gz, or give a tokenizer folder")
        }
        let special: CLIPSpecialTokens = family == .stableDiffusion2 ? .stableDiffusion2 : .stableDiffusion1
        let locationURL = URL(fileURLWithPath: location)
        if case .mergesFile = try CLIPTokenizer.Source.detect(locationURL) {
            return try CLIPTokenizer(mergesFile: locationURL, specialTokens: special)
        }
        return try CLIPTokenizer(contentsOf: locationURL)
    }
}
