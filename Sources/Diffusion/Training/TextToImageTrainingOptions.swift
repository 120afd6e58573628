import Foundation
import NN

/// The UNet a text-to-image run builds from scratch (with `--vae` and `--text-encoder`).
public enum TextToImageModelPreset: String, CaseIterable, Sendable {
    /// Blocks (32, 64), one layer each, cross-attention in the first down and last up block and the middle: for tests.
    case tiny
    /// Blocks (64, 128, 128), one layer each, cross-attention at every level and in the middle, 4 heads:
    /// 8×8×4 latents of 32×32 images trained in minutes on two cores.
    case small

    /// The configuration for latents of `latentChannels` channels and `latentSize` side, attending
    /// to a context of `crossAttentionDimension` channels (the text encoder's width).
    public func configuration(latentChannels: Int, latentSize: Int, crossAttentionDimension: Int) -> UNet2DConditionConfiguration {
        var configuration = UNet2DConditionConfiguration()
        configuration.sampleSize = .square(latentSize)
        configuration.inChannels = latentChannels
        configuration.outChannels = latentChannels
        configuration.crossAttentionDimension = .uniform(crossAttentionDimension)
        configuration.layersPerBlock = .uniform(1)
        switch self {
        case .tiny:
            configuration.blockOutChannels = [32, 64]
            configuration.downBlockTypes = [.crossAttentionDownBlock, .downBlock]
            configuration.upBlockTypes = [.upBlock, .crossAttentionUpBlock]
            configuration.normGroupCount = 8
            configuration.attentionHeadDimension = .uniform(2)
        case .small:
            configuration.blockOutChannels = [64, 128, 128]
            configuration.downBlockTypes = [.crossAttentionDownBlock, .crossAttentionDownBlock, .crossAttentionDownBlock]
            configuration.upBlockTypes = [.crossAttentionUpBlock, .crossAttentionUpBlock, .crossAttentionUpBlock]
            configuration.normGroupCount = 32
            configuration.attentionHeadDimension = .uniform(4)
        }
        return configuration
    }
}

/// What `diffuse train-text-to-image` trains, and how: the options of diffusers'
/// `examples/text_to_image/train_text_to_image.py` and `train_text_to_image_lora.py`
/// (same names in Swift case, same defaults), plus what training from scratch needs.
public struct TextToImageTrainingOptions: Equatable, Sendable {
    // MARK: Models

    /// `pretrained_model_name_or_path`: a Stable Diffusion pipeline folder or single-file
    /// `.safetensors` to fine-tune (nil: a UNet from ``model`` with ``vae`` and ``textEncoder``).
    public var from: String?
    /// From scratch: the UNet preset.
    public var model = TextToImageModelPreset.small
    /// From scratch: a diffusers `vae/` folder (`AutoencoderKL`).
    public var vae: String?
    /// From scratch: a transformers `CLIPModel` or `CLIPTextModel` folder; its text half is the text encoder.
    public var textEncoder: String?
    /// From scratch: the tokenizer folder (nil: the text encoder's folder, or a `tokenizer/` beside it).
    public var tokenizer: String?
    /// `rank` of `train_text_to_image_lora.py`: train LoRA adapters of this rank on the UNet's
    /// `to_q`, `to_k`, `to_v`, `to_out.0` (nil: train the whole UNet).
    public var loraRank: Int?
    /// PEFT's `lora_alpha` (nil: the rank, as the script sets it).
    public var loraAlpha: Double?
    /// Also adapt the text encoder's `q_proj`, `k_proj`, `v_proj`, `out_proj` (prompt embeddings are then computed every step).
    public var trainTextEncoderLoRA = false

    // MARK: Data

    /// `captioned-tinted-fashion-mnist`, or an image folder with a `metadata.jsonl` of captions.
    public var dataset = CaptionedTintedDataset.name
    /// `max_train_samples`: use only the first N examples.
    public var maxTrainSamples: Int?
    /// Foreground colour–item pairs the captioned dataset never shows (none by default).
    public var heldOutPairs: [CaptionedTintedDataset.ColoredItem] = []
    /// `resolution`: the square image side (nil: the UNet's `sample_size` × the VAE's factor, or 32 from scratch).
    public var resolution: Int?
    /// `random_flip`: each draw takes the horizontally flipped image with probability 0.5 (both latents are cached).
    public var randomFlip = false
    /// Fraction of captions replaced by the empty prompt (`proportion_empty_prompts`), for classifier-free guidance.
    public var captionDropout = 0.0
    /// Sample the cached posterior every step (`latent_dist.sample()`, as the scripts); false: its mean.
    public var sampleLatents = true

    // MARK: Objective

    /// `prediction_type` (nil: the scheduler's).
    public var predictionType: PredictionType?
    /// `snr_gamma`: Min-SNR weighting (5 is the paper's value; nil: plain MSE).
    public var snrGamma: Double?
    /// `noise_offset`.
    public var noiseOffset = 0.0

    // MARK: Optimisation

    public var trainBatchSize = 16
    public var numTrainEpochs = 100
    /// `max_train_steps` (overrides the epochs).
    public var maxTrainSteps: Int?
    public var gradientAccumulationSteps = 1
    /// `gradient_checkpointing` (a message until UNet2DConditionModel has it).
    public var gradientCheckpointing = false
    public var learningRate = 1e-4
    /// `scale_lr`: multiply the learning rate by accumulation steps × batch size × processes.
    public var scaleLearningRate = false
    public var lrScheduler = LearningRateSchedule.Kind.constant
    public var lrWarmupSteps = 500
    public var adamBeta1 = 0.9, adamBeta2 = 0.999, adamWeightDecay = 1e-2, adamEpsilon = 1e-8
    public var maxGradNorm = 1.0
    /// `use_ema` (full fine-tuning only) with diffusers' `EMAModel` defaults.
    public var useEMA = false
    public var emaDecay = 0.9999
    /// `mixed_precision`: activations saved for backward in 16 bits.
    public var mixedPrecision = MixedPrecision.no
    public var seed: UInt64 = 0

    // MARK: Output

    public var outputDir = "output/text-to-image"
    public var checkpointingSteps = 500
    public var checkpointsTotalLimit: Int?
    /// `resume_from_checkpoint`: `latest`, a checkpoint folder name or a path.
    public var resumeFromCheckpoint: String?
    public var overwriteOutputDir = false
    /// `validation_prompt` (repeatable): a grid of these every ``validationSteps`` and at the end.
    public var validationPrompts: [String] = []
    /// Images per validation prompt (`num_validation_images`).
    public var numValidationImages = 4
    /// A validation grid every N steps (0: only at the end).
    public var validationSteps = 0
    /// The validation sampler.
    public var validationScheduler = SchedulerKind.dpmSolverMultistep
    public var validationInferenceSteps = 20
    public var validationGuidanceScale = 7.5

    public init() {}

    /// True when only LoRA adapters train.
    public var isLoRA: Bool { loraRank != nil }

    /// Checks the numbers and the combinations.
    public func validate() throws {
        guard trainBatchSize >= 1, gradientAccumulationSteps >= 1 else { throw TrainingError.data("--train-batch-size and --gradient-accumulation-steps must be at least 1") }
        guard learningRate > 0 else { throw TrainingError.data("--learning-rate must be positive") }
        guard (0...1).contains(captionDropout) else { throw TrainingError.data("--caption-dropout must be within 0…1, got \(captionDropout)") }
        guard maxTrainSteps.map({ $0 >= 1 }) ?? (numTrainEpochs >= 1) else { throw TrainingError.data("--max-train-steps / --num-train-epochs must be at least 1") }
        if let loraRank, loraRank < 1 { throw TrainingError.data("--rank must be at least 1") }
        if trainTextEncoderLoRA && !isLoRA { throw TrainingError.data("--train-text-encoder-lora needs --rank") }
        if useEMA && isLoRA { throw TrainingError.data("--use-ema averages the whole UNet; it does not go with LoRA (--rank)") }
        if from == nil && (vae == nil || textEncoder == nil) {
            throw TrainingError.data("training from scratch needs --vae FOLDER and --text-encoder FOLDER (or fine-tune with --from PIPELINE)")
        }
        if let snrGamma, snrGamma <= 0 { throw TrainingError.data("--snr-gamma must be positive") }
    }

    /// The options as `train_config.json` holds them (snake-case keys).
    public var jsonText: String {
        var object: [String: Any] = [:]
        for child in Mirror(reflecting: self).children {
            guard let label = child.label else { continue }
            object[Self.snakeCase(label)] = Self.jsonValue(child.value)
        }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    private static func snakeCase(_ name: String) -> String {
        var result = ""
        for character in name {
            if character.isUppercase { result += "_" + character.lowercased() } else { result.append(character) }
        }
        return result
    }

    private static func jsonValue(_ value: Any) -> Any {
        let mirror = Mirror(reflecting: value)
        if mirror.displayStyle == .optional {
            guard let wrapped = mirror.children.first?.value else { return NSNull() }
            return jsonValue(wrapped)
        }
        switch value {
        case let text as String: return text
        case let number as Int: return number
        case let number as UInt64: return number
        case let number as Double: return number
        case let flag as Bool: return flag
        case let list as [String]: return list
        case let named as any RawRepresentable: return "\(named.rawValue)"
        default: return "\(value)"
        }
    }
}
