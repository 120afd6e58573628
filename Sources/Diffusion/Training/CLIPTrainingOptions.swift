import Foundation
import NN

/// Ready-made CLIP sizes for training from scratch on small images.
public enum CLIPModelPreset: String, Codable, CaseIterable, Sendable {
    /// Both towers 1 layer of width 32 (2 heads), projection 16, 7×7 patches: for tests.
    case tiny
    /// Both towers 4 layers of width 128 (4 heads, MLP 512), projection 128,
    /// 4×4 patches of 28×28 images: minutes on two cores.
    case small
    /// Both towers 6 layers of width 256 (8 heads, MLP 1024), projection 256.
    case medium

    /// The configuration for `tokenizer`'s vocabulary and special ids and square images of `imageSize`.
    public func configuration(tokenizer: CaptionTokenizing, imageSize: Int, patchSize: Int?) -> CLIPConfiguration {
        let (width, layers, heads, projection, defaultPatch): (Int, Int, Int, Int, Int)
        switch self {
        case .tiny: (width, layers, heads, projection, defaultPatch) = (32, 1, 2, 16, 7)
        case .small: (width, layers, heads, projection, defaultPatch) = (128, 4, 4, 128, 4)
        case .medium: (width, layers, heads, projection, defaultPatch) = (256, 6, 8, 256, 4)
        }
        var text = CLIPTextConfiguration()
        (text.hiddenSize, text.intermediateSize, text.hiddenLayerCount, text.attentionHeadCount) = (width, 4 * width, layers, heads)
        text.projectionDimension = projection
        text.vocabularySize = tokenizer.vocabularySize
        text.maximumPositionEmbeddings = tokenizer.maximumLength
        (text.beginTokenID, text.endTokenID, text.padTokenID) = (tokenizer.startTokenID, tokenizer.endTokenID, tokenizer.paddingTokenID)
        var vision = CLIPVisionConfiguration()
        (vision.hiddenSize, vision.intermediateSize, vision.hiddenLayerCount, vision.attentionHeadCount) = (width, 4 * width, layers, heads)
        vision.projectionDimension = projection
        vision.imageSize = imageSize
        vision.patchSize = patchSize ?? defaultPatch
        return CLIPConfiguration(text: text, vision: vision, projectionDimension: projection)
    }
}

/// What `diffuse train-clip` trains, and how.
public struct CLIPTrainingOptions: Codable, Equatable, Sendable {
    /// `captioned-tinted-fashion-mnist`, or an image folder whose `metadata.jsonl` gives captions (`text`).
    public var dataset = CaptionedTintedDataset.name
    /// Use only the first N training examples.
    public var datasetLimit: Int?
    /// Foreground colour–item pairs the built-in captioned dataset never shows (nil: none).
    public var heldOutPairs: [CaptionedTintedDataset.ColoredItem]?
    /// Checkpoints, logs, and at the end the transformers `CLIPModel` folder with its tokenizer.
    public var outputDir = "output/clip"
    /// The model's size.
    public var model = CLIPModelPreset.small
    /// Square image side the vision tower takes (images are resized and centre-cropped to it).
    public var imageSize = 28
    /// Vision patch side (nil: the preset's).
    public var patchSize: Int?
    /// Image–caption pairs per step (the contrastive batch).
    public var batchSize = 256
    /// Optimizer steps.
    public var steps = 1000
    /// Peak AdamW learning rate, reached after the warm-up, then a cosine decay to 0.
    public var learningRate = 1e-3
    /// Linear warm-up steps (nil: 5% of the steps).
    public var warmupSteps: Int?
    /// AdamW decoupled weight decay of the matrices (gains, biases, class token and temperature get none).
    public var weightDecay = 0.1
    /// AdamW β₁, β₂ and ε (CLIP's 0.9, 0.98, 1e-6).
    public var adamBeta1 = 0.9, adamBeta2 = 0.98, adamEpsilon = 1e-6
    /// Gradients are clipped to this global norm (nil or 0: no clipping).
    public var maxGradNorm: Double? = 1
    /// The temperature `logit_scale` is clamped to at most ln(this) after every step.
    public var maximumLogitScale = 100.0
    /// Seed of initialisation, data order and colours.
    public var seed: UInt64 = 0
    /// A checkpoint every N steps (0: only at the end and on Ctrl-C).
    public var checkpointingSteps = 250
    /// Keep at most this many checkpoints.
    public var checkpointsTotalLimit: Int? = 2
    /// `latest`, a checkpoint folder name or a path.
    public var resumeFromCheckpoint: String?
    /// Start again in an output folder that holds an earlier run.
    public var overwriteOutputDir = false
    /// A metrics line (loss, batch accuracy, temperature) every N steps.
    public var logEvery = 50
    /// Fashion-MNIST test images the evaluation uses (0: no evaluation).
    public var evaluationCount = 10000
    /// Decode this many batches ahead on a background thread.
    public var prefetchBatches = 2

    public init() {}

    /// The warm-up actually used.
    public var resolvedWarmupSteps: Int { warmupSteps ?? Swift.max(1, steps / 20) }

    /// Whether the data is the built-in captioned dataset.
    public var usesBuiltInDataset: Bool {
        ["captioned-tinted-fashion-mnist", "captioned_tinted_fashion_mnist"].contains(dataset.lowercased())
    }

    /// Checks the numbers.
    public func validate() throws {
        guard batchSize >= 2 else { throw TrainingError.data("a contrastive batch needs at least 2 pairs, got --batch-size \(batchSize)") }
        guard steps >= 1 else { throw TrainingError.data("--steps must be at least 1") }
        guard learningRate > 0, weightDecay >= 0 else { throw TrainingError.data("the learning rate must be positive and the weight decay not negative") }
        guard maximumLogitScale > 1 else { throw TrainingError.data("the maximum logit scale must exceed 1") }
        guard imageSize > 0, patchSize.map({ $0 > 0 && imageSize % $0 == 0 }) ?? true else {
            throw TrainingError.data("--patch-size \(patchSize ?? 0) does not divide --image-size \(imageSize)")
        }
    }

    /// The options as `train_config.json` holds them.
    public var jsonText: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return String(decoding: (try? encoder.encode(self)) ?? Data(), as: UTF8.self) + "\n"
    }
}
