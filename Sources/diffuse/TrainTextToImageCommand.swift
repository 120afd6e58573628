import ArgumentParser
import Diffusion
import Foundation
import NN

/// `diffuse train-text-to-image`: wiring from flags (named as diffusers' `train_text_to_image.py`
/// and `train_text_to_image_lora.py` name them) to ``TextToImageTrainer``.
struct TrainTextToImage: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-text-to-image",
        abstract: "Train or fine-tune a Stable Diffusion UNet on captioned images (whole, or LoRA).",
        discussion: """
        As diffusers' examples/text_to_image scripts: the VAE and the text encoder stay frozen; every image's \
        VAE posterior (and its mirror image's with --random-flip) and every caption's prompt embeddings are \
        computed once and cached; each step samples the posterior, noises it at random timesteps and trains \
        the UNet to predict the noise (or v), optionally Min-SNR weighted. --from fine-tunes a pipeline folder \
        or single-file checkpoint (the whole UNet, or LoRA adapters with --rank, saved as \
        pytorch_lora_weights.safetensors for `diffuse generate --lora`); without --from a UNet of --model is \
        trained from scratch with --vae and --text-encoder, and the output folder becomes a \
        StableDiffusionPipeline that `diffuse generate` runs. Checkpoints every --checkpointing-steps and on \
        Ctrl-C; continue with --resume-from-checkpoint latest.
        """)

    @Option(name: .customLong("from"), help: ArgumentHelp("A Stable Diffusion pipeline folder or single-file .safetensors to fine-tune.", valueName: "pipeline"))
    var from: String?
    @Option(help: "From scratch: the UNet preset (tiny, small).") var model = "small"
    @Option(help: ArgumentHelp("From scratch: a diffusers vae/ folder (AutoencoderKL).", valueName: "folder")) var vae: String?
    @Option(help: ArgumentHelp("From scratch: a transformers CLIPModel or CLIPTextModel folder.", valueName: "folder")) var textEncoder: String?
    @Option(help: ArgumentHelp("The tokenizer folder (default: the text encoder's).", valueName: "folder")) var tokenizer: String?
    @Option(name: .customLong("rank"), help: "Train LoRA adapters of this rank on to_q, to_k, to_v, to_out.0 (default: the whole UNet).")
    var rank: Int?
    @Option(help: "LoRA alpha (default: the rank).") var loraAlpha: Double?
    @Flag(help: "Also train LoRA adapters on the text encoder's q/k/v/out projections.") var trainTextEncoderLora = false

    @Option(help: """
        captioned-tinted-fashion-mnist, captioned-mnist, or an image folder with a metadata.jsonl of captions; \
        names joined by + are mixed, taken in turn (captioned-mnist+captioned-tinted-fashion-mnist).
        """)
    var dataset = CaptionedTintedDataset.name
    @Flag(help: "Leave the text demo's held-out colour–item pairs out of captioned-tinted-fashion-mnist (as `diffuse demo --text` trains).")
    var heldOutDemoPairs = false
    @Option(help: "Use only the first N examples.") var maxTrainSamples: Int?
    @Option(help: "Image side (default: the UNet's sample_size × the VAE's factor; 32 from scratch).") var resolution: Int?
    @Flag(help: "Mirror images at random (both posteriors are cached).") var randomFlip = false
    @Option(help: "Fraction of captions replaced by the empty prompt (for classifier-free guidance).") var captionDropout = 0.0
    @Flag(help: "Use the posterior's mean instead of a sample each step.") var latentMean = false

    @Option(help: "epsilon or v_prediction (default: the scheduler's).") var predictionType: PredictionType?
    @Option(help: "Min-SNR weighting gamma (5 is recommended).") var snrGamma: Double?
    @Option(help: "Noise offset.") var noiseOffset = 0.0

    @Option(help: "Images per micro-batch.") var trainBatchSize = 16
    @Option(help: "Epochs (unless --max-train-steps).") var numTrainEpochs = 100
    @Option(help: "Optimizer steps.") var maxTrainSteps: Int?
    @Option(help: "Micro-batches per optimizer step.") var gradientAccumulationSteps = 1
    @Flag(help: "Gradient checkpointing (accepted; a no-op until the UNet has it).") var gradientCheckpointing = false
    @Option(help: "AdamW learning rate.") var learningRate = 1e-4
    @Flag(help: "Scale the learning rate by accumulation × batch size × processes.") var scaleLr = false
    @Option(help: "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial.") var lrScheduler = "constant"
    @Option(help: "Warm-up steps.") var lrWarmupSteps = 500
    @Option(help: "AdamW β1.") var adamBeta1 = 0.9
    @Option(help: "AdamW β2.") var adamBeta2 = 0.999
    @Option(help: "AdamW weight decay.") var adamWeightDecay = 1e-2
    @Option(help: "AdamW ε.") var adamEpsilon = 1e-8
    @Option(help: "Clip gradients to this global norm (0: none).") var maxGradNorm = 1.0
    @Flag(help: "Keep an exponential moving average of the UNet (saved instead of the trained weights).") var useEma = false
    @Option(help: "no, fp16 or bf16: activations saved for backward in 16 bits.") var mixedPrecision = "no"
    @Option(help: "Seed of initialisation, data order, noise.") var seed: UInt64 = 0

    @Option(help: "Checkpoints, logs, samples, and the pipeline or LoRA file.") var outputDir = "output/text-to-image"
    @Option(help: "A checkpoint every N steps (0: only at the end and on Ctrl-C).") var checkpointingSteps = 500
    @Option(help: "Keep at most N checkpoints.") var checkpointsTotalLimit: Int?
    @Option(help: ArgumentHelp("Continue: latest, a checkpoint folder name, or a path.", valueName: "checkpoint")) var resumeFromCheckpoint: String?
    @Flag(help: "Start again in an output folder that holds an earlier run.") var overwriteOutputDir = false
    @Option(help: "A prompt for the validation grids (repeatable).") var validationPrompt: [String] = []
    @Option(help: "Images per validation prompt.") var numValidationImages = 4
    @Option(help: "A validation grid every N steps (0: at the end only).") var validationSteps = 0
    @Option(help: "The validation sampler (ddim, dpm, euler, …).") var validationScheduler = "dpm"
    @Option(help: "Validation inference steps.") var validationInferenceSteps = 20
    @Option(help: "Validation guidance scale.") var validationGuidanceScale = 7.5
    @Flag(help: "No progress line.") var noProgress = false

    func options() throws -> TextToImageTrainingOptions {
        var options = TextToImageTrainingOptions()
        options.from = from
        guard let preset = TextToImageModelPreset(rawValue: model) else {
            throw ValidationError("--model \(model): presets are \(TextToImageModelPreset.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        options.model = preset
        (options.vae, options.textEncoder, options.tokenizer) = (vae, textEncoder, tokenizer)
        (options.loraRank, options.loraAlpha, options.trainTextEncoderLoRA) = (rank, loraAlpha, trainTextEncoderLora)
        (options.dataset, options.maxTrainSamples, options.resolution, options.randomFlip) = (dataset, maxTrainSamples, resolution, randomFlip)
        if heldOutDemoPairs {
            options.heldOutPairs = CaptionedTintedDataset.demoHeldOutPairs.sorted()
        }
        (options.captionDropout, options.sampleLatents) = (captionDropout, !latentMean)
        (options.predictionType, options.snrGamma, options.noiseOffset) = (predictionType, snrGamma, noiseOffset)
        (options.trainBatchSize, options.numTrainEpochs, options.maxTrainSteps) = (trainBatchSize, numTrainEpochs, maxTrainSteps)
        (options.gradientAccumulationSteps, options.gradientCheckpointing) = (gradientAccumulationSteps, gradientCheckpointing)
        (options.learningRate, options.scaleLearningRate, options.lrWarmupSteps) = (learningRate, scaleLr, lrWarmupSteps)
        guard let kind = LearningRateSchedule.Kind(rawValue: lrScheduler) else {
            throw ValidationError("--lr-scheduler \(lrScheduler): one of \(LearningRateSchedule.Kind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        options.lrScheduler = kind
        (options.adamBeta1, options.adamBeta2, options.adamWeightDecay, options.adamEpsilon) = (adamBeta1, adamBeta2, adamWeightDecay, adamEpsilon)
        (options.maxGradNorm, options.useEMA, options.seed) = (maxGradNorm, useEma, seed)
        guard let precision = MixedPrecision(rawValue: mixedPrecision) else { throw ValidationError("--mixed-precision: no, fp16 or bf16") }
        options.mixedPrecision = precision
        (options.outputDir, options.checkpointingSteps, options.checkpointsTotalLimit) = (outputDir, checkpointingSteps, checkpointsTotalLimit)
        (options.resumeFromCheckpoint, options.overwriteOutputDir) = (resumeFromCheckpoint, overwriteOutputDir)
        (options.validationPrompts, options.numValidationImages, options.validationSteps) = (validationPrompt, numValidationImages, validationSteps)
        guard let sampler = SchedulerNames.kind(validationScheduler) else {
            throw ValidationError("--validation-scheduler \(validationScheduler) is not a scheduler Diffuse implements")
        }
        (options.validationScheduler, options.validationInferenceSteps, options.validationGuidanceScale) = (sampler, validationInferenceSteps, validationGuidanceScale)
        return options
    }

    func run() throws {
        DistributedLaunch.installIfLaunched()
        try CommandFailure.report {
            let trainer = try TextToImageTrainer(options: try options())
            if noProgress { trainer.progressOutput = nil }
            let summary = try trainer.run()
            print((summary.interrupted ? "stopped at step \(summary.step) of \(summary.totalSteps)" : "trained \(summary.step) steps")
                  + (summary.finalLoss.map { String(format: ", last loss %.4f", $0) } ?? "") + String(format: " in %.0f s", summary.seconds))
            if let result = summary.pipelinePath {
                print(trainer.options.isLoRA ? "lora:        \(result)  (diffuse generate \(trainer.options.from ?? "") --lora \(result))"
                                             : "pipeline:    \(result)  (diffuse generate \(result) --prompt …)")
            }
            if let checkpoint = summary.lastCheckpoint { print("checkpoint:  \(checkpoint)" + (summary.interrupted ? "  (continue with --resume-from-checkpoint latest)" : "")) }
            if let grid = summary.sampleImages.last { print("samples:     \(grid)") }
            print("logs:        \(summary.logDirectory)  (tensorboard --logdir \(summary.logDirectory); train.jsonl)")
        }
    }
}
