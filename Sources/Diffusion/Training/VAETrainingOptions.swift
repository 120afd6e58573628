import Foundation
import NN

/// Ready-made `AutoencoderKL` sizes for training from scratch on small images.
/// Every preset has 4 latent channels unless `--latent-channels` says otherwise,
/// one down block per entry of `block_out_channels` (each but the last halves
/// the resolution) and the mid-block attention of diffusers' model.
public enum VAEModelPreset: String, Codable, CaseIterable, Sendable {
    /// Two levels of (8, 16) channels, one resnet per encoder block, 4 groups: for tests.
    case tiny
    /// Three levels of (32, 64, 64) channels, one resnet per encoder block, 16
    /// groups: 32×32 images to 8×8 latents, the small Stable Diffusion's VAE.
    case small
    /// Three levels of (64, 128, 128) channels, two resnets per encoder block, 32 groups.
    case medium

    /// The block widths, resnets per encoder block and norm groups of the preset.
    public var shape: (blockOutChannels: [Int], layersPerBlock: Int, normGroupCount: Int) {
        switch self {
        case .tiny: return ([8, 16], 1, 4)
        case .small: return ([32, 64, 64], 1, 16)
        case .medium: return ([64, 128, 128], 2, 32)
        }
    }
}

/// The reconstruction term of the VAE loss.
public enum VAEReconstructionLoss: String, Codable, CaseIterable, Sendable {
    /// |x̂ − x| per value (diffusers' `--rec_loss l1`, the LDM's `LPIPSWithDiscriminator`).
    case l1
    /// (x̂ − x)² per value (diffusers' `--rec_loss l2`).
    case mse
}

/// What `diffuse train-vae` trains, and how.
public struct VAETrainingOptions: Codable, Equatable, Sendable {
    /// A named dataset (`mnist`, `fashion-mnist`, `tinted-mnist`, `tinted-fashion-mnist`,
    /// `captioned-tinted-fashion-mnist`) or an image folder.
    public var dataset = CaptionedTintedDataset.name
    /// Use only the first N training examples.
    public var datasetLimit: Int?
    /// Foreground colour–item pairs the captioned dataset never shows (nil: none).
    public var heldOutPairs: [CaptionedTintedDataset.ColoredItem]?
    /// Checkpoints, logs, reconstruction grids, and at the end `vae/`.
    public var outputDir = "output/vae"
    /// The model's size (overridden key by key by the three below).
    public var model = VAEModelPreset.small
    /// `block_out_channels` (nil: the preset's).
    public var blockOutChannels: [Int]?
    /// `latent_channels`.
    public var latentChannels = 4
    /// `layers_per_block` (nil: the preset's).
    public var layersPerBlock: Int?
    /// `norm_num_groups` (nil: the preset's, or the largest of 32, 16, 8, 4, 2, 1 dividing every block).
    public var normGroupCount: Int?
    /// Square image side: images are resized (shorter side) and centre-cropped to it.
    public var resolution = 32
    /// Image channels (nil: the data's first image's).
    public var channels: Int?
    /// Flip training images left–right with probability 0.5.
    public var randomFlip = false
    /// Images per micro-batch (`diffuse train-vae`'s default is 32: see `steps`).
    public var batchSize = 64
    /// Micro-batches per optimizer step.
    public var gradientAccumulationSteps = 1
    /// Optimizer steps. `diffuse train-vae`'s defaults — 1100 steps of 32 images at
    /// learning rate 2e-3, 20 warm-up steps — train the `small` preset at 32×32 in about
    /// 4 minutes on two cores (Benchmarks/vae-training.md: 25.2 dB held-out PSNR).
    public var steps = 1000
    /// Peak AdamW learning rate (`diffuse train-vae`'s default is 2e-3).
    public var learningRate = 1e-3
    /// The schedule after the warm-up (diffusers' names).
    public var lrScheduler = LearningRateSchedule.Kind.cosine
    /// Linear warm-up steps (nil: 5% of the steps).
    public var warmupSteps: Int?
    /// AdamW β₁, β₂, ε and decoupled weight decay.
    public var adamBeta1 = 0.9, adamBeta2 = 0.999, adamEpsilon = 1e-8, weightDecay = 0.0
    /// Gradients are clipped to this global norm (nil or 0: no clipping).
    public var maxGradNorm: Double? = 1
    /// The reconstruction term.
    public var reconstructionLoss = VAEReconstructionLoss.mse
    /// The weight of the KL term (diffusers' `--kl_scale`, the LDM's `kl_weight`).
    public var klWeight = 1e-6
    /// Keep an exponential moving average of the weights (saved as `vae/` when on).
    public var useEMA = false
    /// EMA maximum decay (diffusers' `EMAModel` warm-up `(1 + t)/(10 + t)` up to this).
    public var emaMaxDecay = 0.999
    /// `no`, `fp16`, `bf16`: the storage of the activations saved for backward.
    public var mixedPrecision = MixedPrecision.no
    /// Seed of initialisation, data order, flips and the posterior's samples.
    public var seed: UInt64 = 0
    /// A checkpoint every N steps (0: only at the end and on Ctrl-C / SIGTERM).
    public var checkpointingSteps = 500
    /// Keep at most this many checkpoints.
    public var checkpointsTotalLimit: Int? = 2
    /// `latest`, a checkpoint folder name or a path.
    public var resumeFromCheckpoint: String?
    /// Start again in an output folder that holds an earlier run.
    public var overwriteOutputDir = false
    /// A metrics line (loss, reconstruction, KL) every N steps.
    public var logEvery = 50
    /// A grid of reconstructions every N steps (0: only at the end).
    public var gridEvery = 250
    /// Images in a reconstruction grid (one row of originals above one row of reconstructions).
    public var gridImages = 8
    /// Training images whose latents measure `scaling_factor` (0: keep diffusers' 0.18215).
    public var scalingFactorImages = 1024
    /// Held-out images the final evaluation reconstructs (0: none; named datasets only).
    public var evaluationImages = 1000
    /// Decode this many batches ahead on a background thread.
    public var prefetchBatches = 2

    public init() {}

    /// The warm-up actually used.
    public var resolvedWarmupSteps: Int { warmupSteps ?? Swift.max(1, steps / 20) }

    /// The `AutoencoderKL` configuration of these options for images of `channels` channels.
    public func modelConfiguration(channels: Int) -> AutoencoderKLConfiguration {
        let shape = model.shape
        let blocks = blockOutChannels ?? shape.blockOutChannels
        var configuration = AutoencoderKLConfiguration()
        configuration.inChannels = channels
        configuration.outChannels = channels
        configuration.blockOutChannels = blocks
        configuration.downBlockTypes = Array(repeating: .downEncoderBlock, count: blocks.count)
        configuration.upBlockTypes = Array(repeating: .upDecoderBlock, count: blocks.count)
        configuration.layersPerBlock = layersPerBlock ?? shape.layersPerBlock
        configuration.latentChannels = latentChannels
        if let normGroupCount {
            configuration.normGroupCount = normGroupCount
        } else if blockOutChannels == nil {
            configuration.normGroupCount = shape.normGroupCount
        } else {
            configuration.normGroupCount = [32, 16, 8, 4, 2, 1].first { groups in blocks.allSatisfy { $0 % groups == 0 } } ?? 1
        }
        configuration.sampleSize = .square(resolution)
        return configuration
    }

    /// Checks the numbers (the model's keys are checked when it is built).
    public func validate() throws {
        guard batchSize >= 1 else { throw TrainingError.data("--batch-size must be at least 1, got \(batchSize)") }
        guard steps >= 1 else { throw TrainingError.data("--steps must be at least 1, got \(steps)") }
        guard gradientAccumulationSteps >= 1 else {
            throw TrainingError.data("--gradient-accumulation-steps must be at least 1, got \(gradientAccumulationSteps)")
        }
        guard learningRate > 0 else { throw TrainingError.data("--learning-rate must be positive, got \(learningRate)") }
        guard weightDecay >= 0 else { throw TrainingError.data("--weight-decay must not be negative, got \(weightDecay)") }
        guard klWeight >= 0, klWeight.isFinite else { throw TrainingError.data("--kl-weight must be a number ≥ 0, got \(klWeight)") }
        guard resolution >= 1 else { throw TrainingError.data("--resolution must be positive, got \(resolution)") }
        guard latentChannels >= 1 else { throw TrainingError.data("--latent-channels must be at least 1, got \(latentChannels)") }
        if let layersPerBlock, layersPerBlock < 1 { throw TrainingError.data("--layers-per-block must be at least 1, got \(layersPerBlock)") }
        if let channels, channels < 1 { throw TrainingError.data("--channels must be at least 1, got \(channels)") }
        if let blocks = blockOutChannels {
            guard !blocks.isEmpty, blocks.allSatisfy({ $0 > 0 }) else {
                throw TrainingError.data("--block-out-channels must be a non-empty list of positive widths, got \(blocks)")
            }
        }
        let blocks = blockOutChannels ?? model.shape.blockOutChannels
        let factor = 1 << (blocks.count - 1)
        guard resolution % factor == 0 else {
            throw TrainingError.data("--resolution \(resolution) is not divisible by \(factor), the downsampling of \(blocks.count) blocks")
        }
        guard (0...1).contains(emaMaxDecay) else { throw TrainingError.data("--ema-max-decay must be in [0, 1], got \(emaMaxDecay)") }
        guard gridImages >= 1, scalingFactorImages >= 0, evaluationImages >= 0, logEvery >= 1, gridEvery >= 0, checkpointingSteps >= 0 else {
            throw TrainingError.data("grid images and --log-every must be positive; --grid-every, --checkpointing-steps and image counts not negative")
        }
        if let limit = checkpointsTotalLimit, limit < 1 { throw TrainingError.data("--checkpoints-total-limit must be at least 1, got \(limit)") }
    }

    /// Whether the data is the built-in captioned dataset.
    public var usesCaptionedDataset: Bool {
        ["captioned-tinted-fashion-mnist", "captioned_tinted_fashion_mnist"].contains(dataset.lowercased())
    }

    /// The options as `train_config.json` holds them.
    public var jsonText: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return String(decoding: (try? encoder.encode(self)) ?? Data(), as: UTF8.self) + "\n"
    }
}
