import Foundation
import NN
import Tensors

/// How a text-to-image run gets its models and data (``TextToImageTrainer``'s setup).
enum TextToImageSetup {
    /// The noise schedule Stable Diffusion 1.x trains with (`scaled_linear` 0.00085…0.012, 1000 steps),
    /// for a UNet trained from scratch.
    static var stableDiffusionSchedule: SchedulerConfiguration {
        var configuration = SchedulerConfiguration(className: SchedulerKind.ddpm.rawValue)
        configuration.trainTimesteps = 1000
        configuration.betaStart = 0.00085
        configuration.betaEnd = 0.012
        configuration.betaSchedule = .scaledLinear
        configuration.clipSample = false
        configuration.predictionType = .epsilon
        return configuration
    }

    /// The pipeline to fine-tune (`--from`), or one put together from `--vae`, `--text-encoder`
    /// and a new UNet of the preset; the UNet's latent side is `resolution` / the VAE's factor.
    static func pipeline(_ options: TextToImageTrainingOptions, message: (String) -> Void) throws -> StableDiffusionPipeline {
        if let from = options.from {
            let pipeline = try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: from))
            if let predictionType = options.predictionType {
                var configuration = pipeline.scheduler.configuration
                configuration.predictionType = predictionType
                pipeline.scheduler = try Schedulers.make(SchedulerKind(rawValue: type(of: pipeline.scheduler).className),
                                                         configuration: configuration)
            }
            return pipeline
        }
        guard let vaeFolder = options.vae, let textFolder = options.textEncoder else {
            throw TrainingError.data("training from scratch needs --vae FOLDER and --text-encoder FOLDER")
        }
        let vae = try AutoencoderKL.load(folder: URL(fileURLWithPath: vaeFolder))
        let textEncoder = try CLIPTextModel.load(folder: URL(fileURLWithPath: textFolder))
        let tokenizer = try CLIPTokenizer(folder: URL(fileURLWithPath: try tokenizerFolder(options, textFolder: textFolder)))
        let factor = vae.configuration.downsamplingFactor
        let resolution = options.resolution ?? 32
        guard resolution % factor == 0 else {
            throw TrainingError.data("--resolution \(resolution) is not a multiple of the VAE's factor \(factor)")
        }
        let configuration = options.model.configuration(latentChannels: vae.configuration.latentChannels, latentSize: resolution / factor,
                                                        crossAttentionDimension: textEncoder.configuration.hiddenSize)
        Initialization.seed(options.seed)
        let unet = try UNet2DConditionModel(configuration: configuration)
        var schedule = stableDiffusionSchedule
        if let predictionType = options.predictionType { schedule.predictionType = predictionType }
        schedule.className = options.validationScheduler.rawValue
        let scheduler = try Schedulers.make(options.validationScheduler, configuration: schedule)
        message("new UNet2DConditionModel (\(options.model.rawValue)): \(unet.parameterCount) parameters, block_out_channels "
                + "\(configuration.blockOutChannels), \(resolution / factor)×\(resolution / factor)×\(vae.configuration.latentChannels) latents, "
                + "cross_attention_dim \(textEncoder.configuration.hiddenSize)")
        return try StableDiffusionPipeline(textEncoder: textEncoder, tokenizer: tokenizer, unet: unet, vae: vae, scheduler: scheduler)
    }

    /// `--tokenizer`, else the text encoder's folder when it holds `vocab.json`, else `tokenizer/` beside it.
    static func tokenizerFolder(_ options: TextToImageTrainingOptions, textFolder: String) throws -> String {
        if let tokenizer = options.tokenizer { return tokenizer }
        let manager = FileManager.default
        if manager.fileExists(atPath: (textFolder as NSString).appendingPathComponent("vocab.json")) { return textFolder }
        let sibling = ((textFolder as NSString).deletingLastPathComponent as NSString).appendingPathComponent("tokenizer")
        if manager.fileExists(atPath: (sibling as NSString).appendingPathComponent("vocab.json")) { return sibling }
        throw TrainingError.data("no tokenizer files (vocab.json, merges.txt) in \(textFolder) or beside it; give --tokenizer FOLDER")
    }

    /// The training data by name (`captioned-tinted-fashion-mnist`, `captioned-mnist`, the named datasets) or folder;
    /// names joined by `+` mix those datasets, taken in turn (``InterleavedDataset``), and `--max-train-samples`
    /// then limits the mixture (so each part gives about its share).
    static func dataset(_ options: TextToImageTrainingOptions) throws -> Dataset {
        let names = options.dataset.split(separator: "+", omittingEmptySubsequences: false).map(String.init)
        guard names.count > 1, !FileManager.default.fileExists(atPath: options.dataset) else {
            return try dataset(named: options.dataset, options)
        }
        guard !names.contains(where: \.isEmpty) else {
            throw TrainingError.data("--dataset \(options.dataset): a mixture is names joined by +, e.g. captioned-mnist+captioned-tinted-fashion-mnist")
        }
        let mixture = InterleavedDataset(parts: try names.map { try dataset(named: $0, options) }, names: names)
        if let limit = options.maxTrainSamples, limit < mixture.count { return PrefixDataset(base: mixture, count: limit) }
        return mixture
    }

    /// One dataset by name or folder (its first `--max-train-samples` examples).
    static func dataset(named name: String, _ options: TextToImageTrainingOptions) throws -> Dataset {
        if [CaptionedTintedDataset.name, "captioned_tinted_fashion_mnist"].contains(name.lowercased()) {
            return try CaptionedTintedDataset.fashionMNIST(training: true, limit: options.maxTrainSamples, seed: options.seed,
                                                           heldOutPairs: Set(options.heldOutPairs))
        }
        if CaptionedMNISTDataset.isNamed(name) {
            return try CaptionedMNISTDataset.mnist(training: true, limit: options.maxTrainSamples, size: options.resolution ?? 32)
        }
        let dataset = try Datasets.open(name, training: true, limit: options.maxTrainSamples)
        if let limit = options.maxTrainSamples, limit < dataset.count { return PrefixDataset(base: dataset, count: limit) }
        return dataset
    }

    /// The image side: `--resolution`, else the UNet's `sample_size` × the VAE's factor.
    static func resolution(_ options: TextToImageTrainingOptions, pipeline: StableDiffusionPipeline) -> Int {
        options.resolution ?? pipeline.defaultSize.height
    }
}

/// The first `count` examples of a dataset.
final class PrefixDataset: Dataset {
    let base: Dataset
    let count: Int
    init(base: Dataset, count: Int) {
        self.base = base
        self.count = count
    }
    var classNames: [String] { base.classNames }
    func example(at index: Int) throws -> DatasetExample { try base.example(at: index) }
    func source(of index: Int) -> String { base.source(of: index) }
}

/// The examples of a cached run as the data loader sees them: no pixels (the latents are
/// cached), the caption as given. The loader still orders, batches and shards them, and its
/// position is what checkpoints keep.
final class TextToImageIndexDataset: Dataset {
    let captions: [String]
    private let empty = Tensor.zeros([1, 1, 1])
    init(captions: [String]) { self.captions = captions }
    var count: Int { captions.count }
    var classNames: [String] { [] }
    func example(at index: Int) throws -> DatasetExample { DatasetExample(image: empty, caption: captions[index]) }
}
