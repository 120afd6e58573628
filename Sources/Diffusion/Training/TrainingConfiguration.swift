import Foundation
import NN

/// Everything a training run needs, with the keys of the Hugging Face
/// diffusion course's `TrainConfig` and of diffusers' `train_unconditional.py`
/// (snake case, as in `train.yaml`).
///
/// ```yaml
/// image_size: 28
/// train_batch_size: 128
/// num_epochs: 3
/// learning_rate: 1.0e-4
/// lr_warmup_steps: 500
/// output_dir: output/mnist
/// model: course-mnist          # a preset, or a mapping of UNet2DModel config.json keys
/// dataset: fashion-mnist
/// class_conditional: true
/// ```
///
/// Absent keys take the defaults below; an unknown key is an error naming it.
/// See ``TrainingConfiguration/load(yaml:overrides:)`` for overrides.
public struct TrainingConfiguration: Equatable, Sendable {
    // MARK: The course's TrainConfig

    /// `image_size`: the side of the square training images (nil: the model's `sample_size`, else 28).
    public var imageSize: Int? = nil
    /// `train_batch_size`: images per micro-batch.
    public var trainBatchSize = 128
    /// `eval_batch_size`: images in each sample grid.
    public var evalBatchSize = 16
    /// `num_epochs`: passes over the dataset.
    public var numEpochs = 1
    /// `max_train_steps`: stop after this many optimizer steps (nil: `num_epochs` decides).
    public var maxTrainSteps: Int? = nil
    /// `gradient_accumulation_steps`: micro-batches per optimizer step.
    public var gradientAccumulationSteps = 1
    /// `learning_rate`: the peak learning rate.
    public var learningRate = 1e-4
    /// `lr_warmup_steps`: optimizer steps of linear warm-up.
    public var lrWarmupSteps = 500
    /// `save_image_epochs`: a sample grid every this many epochs (and at the end).
    public var saveImageEpochs = 1
    /// `save_model_epochs`: the pipeline folder every this many epochs (and at the end).
    public var saveModelEpochs = 1
    /// `mixed_precision`: `no`, `fp16` or `bf16` (see ``MixedPrecision``).
    public var mixedPrecision = MixedPrecision.no
    /// `output_dir`: where the pipeline, checkpoints, samples and logs go.
    public var outputDir = "output/ddpm"
    /// `overwrite_output_dir`: start afresh in an output folder that holds an earlier run
    /// (its checkpoints, samples and logs are removed); otherwise such a folder is an error
    /// unless resuming.
    public var overwriteOutputDir = false
    /// `seed`: model initialisation, data order, noise, timesteps and condition dropout.
    public var seed: UInt64 = 0

    // MARK: Model, noise and objective

    /// `model`: a preset name (see ``ModelPresets``) or a UNet2DModel configuration.
    public var model = ModelChoice.preset(ModelPresets.defaultName)
    /// `from_pipeline`: fine-tune the UNet (and keep the noise schedule) of this diffusers pipeline folder.
    public var fromPipeline: String? = nil
    /// `freeze`: parameter-name patterns (glob, or `/regex/`) that are not trained.
    public var freeze: [String] = []
    /// `num_train_timesteps`.
    public var numTrainTimesteps = 1000
    /// `beta_schedule`: `linear`, `scaled_linear`, `squaredcos_cap_v2`, `sigmoid`, `exp`, `laplace`.
    public var betaSchedule = "linear"
    /// `beta_start`.
    public var betaStart = 0.0001
    /// `beta_end`.
    public var betaEnd = 0.02
    /// `prediction_type`: the objective (see ``TrainingObjective``).
    public var predictionType = TrainingObjective.epsilon
    /// `snr_gamma`: Min-SNR loss weighting (Hang et al. 2023), `min(SNR, γ)/SNR` per example for
    /// epsilon, `min(SNR, γ)/(SNR + 1)` for v_prediction, `min(SNR, γ)` for sample (nil: plain MSE).
    public var snrGamma: Double? = nil

    // MARK: Data

    /// `dataset`: `mnist`, `fashion-mnist`, or an image folder.
    public var dataset = "fashion-mnist"
    /// `dataset_limit`: use only the first examples of a named dataset.
    public var datasetLimit: Int? = nil
    /// `channels`: image channels (nil: the model's `in_channels`, or the dataset's for presets).
    public var channels: Int? = nil
    /// `random_flip`: flip training images horizontally at random.
    public var randomFlip = false
    /// `prefetch_batches`: batches decoded ahead in the background.
    public var prefetchBatches = 2

    // MARK: Optimisation

    /// `lr_scheduler`: diffusers' schedule name (`constant`, `constant_with_warmup`, `linear`, `cosine`, …).
    public var lrScheduler = LearningRateSchedule.Kind.cosine
    /// `adam_beta1`.
    public var adamBeta1 = 0.9
    /// `adam_beta2`.
    public var adamBeta2 = 0.999
    /// `adam_weight_decay` (AdamW's decoupled decay).
    public var adamWeightDecay = 0.01
    /// `adam_epsilon`.
    public var adamEpsilon = 1e-8
    /// `max_grad_norm`: clip the global gradient norm to this (nil or 0: no clipping).
    public var maxGradNorm: Double? = 1.0

    // MARK: EMA

    /// `use_ema`: keep an exponential moving average of the weights and sample and save with it.
    public var useEMA = false
    /// `ema_max_decay`.
    public var emaMaxDecay = 0.9999
    /// `ema_min_decay`.
    public var emaMinDecay = 0.0
    /// `ema_inv_gamma`.
    public var emaInvGamma = 1.0
    /// `ema_power`.
    public var emaPower = 0.75
    /// `ema_use_warmup`: the `1 − (1 + t/γ)^−p` warm-up of diffusers' `train_unconditional.py`.
    public var emaUseWarmup = true
    /// `ema_update_after_step`.
    public var emaUpdateAfterStep = 0

    // MARK: Classes

    /// `class_conditional`: pass dataset labels to the UNet (`num_class_embeds` = classes + 1).
    public var classConditional = false
    /// `condition_dropout`: probability of replacing a label by the null class (classifier-free guidance training).
    public var conditionDropout = 0.1

    // MARK: Sampling during training

    /// `eval_scheduler`: the scheduler of the sample grids (a diffusers class name or a short name).
    public var evalScheduler = "DDIMScheduler"
    /// `eval_inference_steps`: steps of the sample grids.
    public var evalInferenceSteps = 50
    /// `guidance_scale`: classifier-free guidance of the sample grids of a class-conditional model.
    public var guidanceScale = 3.0

    // MARK: Checkpoints

    /// `checkpointing_steps`: a checkpoint folder every this many optimizer steps (0: none but the last).
    public var checkpointingSteps = 500
    /// `checkpoints_total_limit`: keep only the newest this many checkpoints (nil: all).
    public var checkpointsTotalLimit: Int? = nil
    /// `resume_from_checkpoint`: `latest`, a checkpoint folder name, or a path.
    public var resumeFromCheckpoint: String? = nil

    /// The defaults.
    public init() {}
}

/// `mixed_precision`.
public enum MixedPrecision: String, Sendable, CaseIterable, Codable {
    /// Float32 everywhere.
    case no
    /// Activations saved for backward are stored as IEEE half precision.
    case fp16
    /// Activations saved for backward are stored as bfloat16.
    case bf16
}

/// What the model learns to predict (`prediction_type`).
public enum TrainingObjective: String, Sendable, CaseIterable, Codable {
    /// The added noise ε (DDPM).
    case epsilon
    /// The clean image x0.
    case sample
    /// The velocity √ᾱ·ε − √(1−ᾱ)·x0.
    case vPrediction = "v_prediction"
    /// The course's toy objective: images in [0, 1] mixed with uniform noise by
    /// `corrupt(x, amount)`, the model (at timestep 0) predicts the clean image.
    case x0

    /// The diffusers `prediction_type` of the pipeline's scheduler.
    public var predictionType: PredictionType {
        switch self {
        case .epsilon, .x0: return .epsilon
        case .sample: return .sample
        case .vPrediction: return .vPrediction
        }
    }
}

/// `model`: a named preset or an explicit configuration.
public enum ModelChoice: Equatable, Sendable {
    /// A preset of ``ModelPresets`` (its `sample_size`, channels and classes are filled in).
    case preset(String)
    /// diffusers' `config.json` keys; `base` names a preset the keys are applied to.
    case configuration(base: String?, keys: [String: JSONValue])
}

/// Errors in a training configuration.
public struct TrainingConfigurationError: Error, CustomStringConvertible, Equatable {
    /// What is wrong, naming the key.
    public let message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }
}

extension TrainingConfiguration {
    /// Checks values that cannot work, naming the key.
    public func validate() throws {
        func require(_ condition: Bool, _ message: String) throws {
            if !condition { throw TrainingConfigurationError(message) }
        }
        try require(trainBatchSize >= 1, "train_batch_size must be at least 1, got \(trainBatchSize)")
        try require(evalBatchSize >= 1, "eval_batch_size must be at least 1, got \(evalBatchSize)")
        try require(numEpochs >= 1, "num_epochs must be at least 1, got \(numEpochs)")
        try require((maxTrainSteps ?? 1) >= 1, "max_train_steps must be at least 1")
        try require(gradientAccumulationSteps >= 1, "gradient_accumulation_steps must be at least 1, got \(gradientAccumulationSteps)")
        try require(learningRate > 0 && learningRate.isFinite, "learning_rate must be positive, got \(learningRate)")
        try require(lrWarmupSteps >= 0, "lr_warmup_steps must not be negative")
        try require(saveImageEpochs >= 1, "save_image_epochs must be at least 1")
        try require(saveModelEpochs >= 1, "save_model_epochs must be at least 1")
        try require((imageSize ?? 1) >= 1, "image_size must be positive")
        try require(numTrainTimesteps >= 2, "num_train_timesteps must be at least 2")
        try require(BetaSchedule(rawValue: betaSchedule) != nil,
                    "beta_schedule \"\(betaSchedule)\" is not one of \(BetaSchedule.allCases.map(\.rawValue).joined(separator: ", "))")
        try require((0...1).contains(conditionDropout), "condition_dropout must be in [0, 1], got \(conditionDropout)")
        try require((snrGamma ?? 1) > 0, "snr_gamma must be positive")
        try require(checkpointingSteps >= 0, "checkpointing_steps must not be negative")
        try require((checkpointsTotalLimit ?? 1) >= 1, "checkpoints_total_limit must be at least 1")
        try require(evalInferenceSteps >= 1, "eval_inference_steps must be at least 1")
        try require(SchedulerNames.kind(evalScheduler) != nil,
                    "eval_scheduler \"\(evalScheduler)\" is not a scheduler; known: \(SchedulerNames.known)")
        try require(outputDir.isEmpty == false, "output_dir must not be empty")
        try require(prefetchBatches >= 0, "prefetch_batches must not be negative")
        try require((channels ?? 1) >= 1, "channels must be positive")
    }

    /// The noise schedule's scheduler configuration (DDPM's keys).
    public var noiseSchedulerConfiguration: SchedulerConfiguration {
        var configuration = SchedulerConfiguration(className: DDPMScheduler.className)
        configuration.trainTimesteps = numTrainTimesteps
        configuration.betaSchedule = BetaSchedule(rawValue: betaSchedule)
        configuration.betaStart = betaStart
        configuration.betaEnd = betaEnd
        configuration.predictionType = predictionType.predictionType
        return configuration
    }
}

/// Scheduler names as the command line takes them: diffusers class names or short names.
public enum SchedulerNames {
    /// Short names for the schedulers.
    public static let aliases: [String: SchedulerKind] = [
        "ddpm": .ddpm, "ddim": .ddim, "pndm": .pndm, "lms": .lms, "euler": .euler,
        "euler-ancestral": .eulerAncestral, "euler_a": .eulerAncestral, "heun": .heun,
        "dpm": .dpmSolverMultistep, "dpm-solver": .dpmSolverMultistep, "dpmsolver++": .dpmSolverMultistep,
        "unipc": .uniPCMultistep,
    ]

    /// The kind named by a class name (`DDIMScheduler`) or short name (`ddim`), case-insensitively.
    public static func kind(_ name: String) -> SchedulerKind? {
        if let kind = SchedulerKind(rawValue: name) { return kind }
        let lowered = name.lowercased()
        if let kind = aliases[lowered] { return kind }
        return SchedulerKind.allCases.first { $0.rawValue.lowercased() == lowered || $0.rawValue.lowercased() == lowered + "scheduler" }
    }

    /// The accepted names, for messages.
    public static var known: String {
        (SchedulerKind.allCases.map(\.rawValue) + aliases.keys.sorted()).joined(separator: ", ")
    }
}
