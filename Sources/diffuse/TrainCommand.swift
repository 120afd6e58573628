import ArgumentParser
import Diffusion
import Foundation

/// `diffuse train`: wiring from flags to `TrainingConfiguration` and `Trainer`.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train (or fine-tune) a UNet2DModel diffusion model.",
        discussion: """
        Reads --config train.yaml (the course's TrainConfig keys and diffusers' train_unconditional \
        options; see README), then applies the flags below and --set KEY=VALUE (dotted keys reach into \
        the model mapping: --set model.block_out_channels=[32,64]). Writes checkpoints, sample grids, \
        logs (TensorBoard + JSONL) and the pipeline into output_dir. Ctrl-C writes a checkpoint and \
        stops; --resume latest continues exactly where a run stopped.
        """)

    @Option(help: "A train.yaml file.") var config: String?
    @Option(name: .customLong("set"), help: ArgumentHelp("Override any key: KEY=VALUE (a YAML value).", valueName: "key=value"))
    var assignments: [String] = []
    @Option(help: ArgumentHelp("Continue from a checkpoint: latest, checkpoint-N, or a path.", valueName: "checkpoint"))
    var resume: String?
    @Option(name: .customLong("from"), help: ArgumentHelp("Fine-tune the UNet of this diffusers pipeline folder.", valueName: "pipeline-dir"))
    var fromPipeline: String?
    @Option(help: ArgumentHelp("Do not train parameters whose name matches (glob, or /regex/); repeatable.", valueName: "pattern"))
    var freeze: [String] = []
    @Flag(help: "No live progress line.") var noProgress = false

    @Option(name: .customLong("image-size"), help: "Side of the square training images (default: the model's sample_size, else 28).") var imageSize: Int?
    @Option(name: .customLong("train-batch-size"), help: "Images per micro-batch (128).") var trainBatchSize: Int?
    @Option(name: .customLong("eval-batch-size"), help: "Images in each sample grid (16).") var evalBatchSize: Int?
    @Option(name: .customLong("num-epochs"), help: "Passes over the dataset (1).") var numEpochs: Int?
    @Option(name: .customLong("max-train-steps"), help: "Stop after this many optimizer steps.") var maxTrainSteps: Int?
    @Option(name: .customLong("gradient-accumulation-steps"), help: "Micro-batches per optimizer step (1).") var gradientAccumulationSteps: Int?
    @Option(name: .customLong("learning-rate"), help: "Peak learning rate (1e-4).") var learningRate: Double?
    @Option(name: .customLong("lr-warmup-steps"), help: "Optimizer steps of linear warm-up (500).") var lrWarmupSteps: Int?
    @Option(name: .customLong("save-image-epochs"), help: "A sample grid every N epochs (1).") var saveImageEpochs: Int?
    @Option(name: .customLong("save-model-epochs"), help: "The pipeline folder every N epochs (1).") var saveModelEpochs: Int?
    @Option(name: .customLong("mixed-precision"), help: "no, fp16 or bf16: storage of the activations saved for backward.") var mixedPrecision: String?
    @Option(name: .customLong("output-dir"), help: "Where the pipeline, checkpoints, samples and logs go.") var outputDir: String?
    @Option(name: .customLong("seed"), help: "Seed of initialisation, data order, noise and dropout (0).") var seed: Int?
    @Option(name: .customLong("model"), help: "A model preset: course-mnist, course-butterflies, small, tiny (see --set model.KEY=VALUE).") var model: String?
    @Option(name: .customLong("num-train-timesteps"), help: "Training timesteps (1000).") var numTrainTimesteps: Int?
    @Option(name: .customLong("beta-schedule"), help: "linear, scaled_linear, squaredcos_cap_v2, sigmoid, exp, laplace.") var betaSchedule: String?
    @Option(name: .customLong("beta-start"), help: "First beta (0.0001).") var betaStart: Double?
    @Option(name: .customLong("beta-end"), help: "Last beta (0.02).") var betaEnd: Double?
    @Option(name: .customLong("prediction-type"), help: "Objective: epsilon, sample, v_prediction, or the toy x0 (corrupt).") var predictionType: String?
    @Option(name: .customLong("snr-gamma"), help: "Min-SNR loss weighting gamma (e.g. 5; default: plain MSE).") var snrGamma: Double?
    @Option(name: .customLong("dataset"), help: "mnist, fashion-mnist, or an image folder.") var dataset: String?
    @Option(name: .customLong("dataset-limit"), help: "Use only the first N images of a named dataset.") var datasetLimit: Int?
    @Option(name: .customLong("channels"), help: "Image channels (default: the data's).") var channels: Int?
    @Option(name: .customLong("prefetch-batches"), help: "Batches decoded ahead in the background (2).") var prefetchBatches: Int?
    @Option(name: .customLong("lr-scheduler"), help: "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial.") var lrScheduler: String?
    @Option(name: .customLong("adam-beta1"), help: "AdamW beta1 (0.9).") var adamBeta1: Double?
    @Option(name: .customLong("adam-beta2"), help: "AdamW beta2 (0.999).") var adamBeta2: Double?
    @Option(name: .customLong("adam-weight-decay"), help: "AdamW decoupled weight decay (0.01).") var adamWeightDecay: Double?
    @Option(name: .customLong("adam-epsilon"), help: "AdamW epsilon (1e-8).") var adamEpsilon: Double?
    @Option(name: .customLong("max-grad-norm"), help: "Clip the gradient norm to this; 0 disables (1.0).") var maxGradNorm: Double?
    @Option(name: .customLong("ema-max-decay"), help: "EMA maximum decay (0.9999).") var emaMaxDecay: Double?
    @Option(name: .customLong("ema-min-decay"), help: "EMA minimum decay (0).") var emaMinDecay: Double?
    @Option(name: .customLong("ema-inv-gamma"), help: "EMA warm-up inverse gamma (1.0).") var emaInvGamma: Double?
    @Option(name: .customLong("ema-power"), help: "EMA warm-up power (0.75).") var emaPower: Double?
    @Option(name: .customLong("ema-update-after-step"), help: "EMA starts after this step (0).") var emaUpdateAfterStep: Int?
    @Option(name: .customLong("condition-dropout"), help: "Probability of dropping a label to the unconditional class (0.1).") var conditionDropout: Double?
    @Option(name: .customLong("eval-scheduler"), help: "Scheduler of the sample grids (DDIMScheduler).") var evalScheduler: String?
    @Option(name: .customLong("eval-inference-steps"), help: "Steps of the sample grids (50).") var evalInferenceSteps: Int?
    @Option(name: .customLong("guidance-scale"), help: "Classifier-free guidance of the sample grids (3.0).") var guidanceScale: Double?
    @Option(name: .customLong("checkpointing-steps"), help: "A checkpoint every N optimizer steps; 0: only at the end (500).") var checkpointingSteps: Int?
    @Option(name: .customLong("checkpoints-total-limit"), help: "Keep only the newest N checkpoints.") var checkpointsTotalLimit: Int?
    @Flag(name: .customLong("overwrite-output-dir"), inversion: .prefixedNo, help: "Start afresh in an output folder that holds an earlier run.") var overwriteOutputDir: Bool?
    @Flag(name: .customLong("random-flip"), inversion: .prefixedNo, help: "Flip training images horizontally at random.") var randomFlip: Bool?
    @Flag(name: .customLong("use-ema"), inversion: .prefixedNo, help: "Keep an exponential moving average of the weights.") var useEma: Bool?
    @Flag(name: .customLong("ema-use-warmup"), inversion: .prefixedNo, help: "EMA decay warm-up (default on).") var emaUseWarmup: Bool?
    @Flag(name: .customLong("class-conditional"), inversion: .prefixedNo, help: "Train on class labels (num_class_embeds = classes + 1).") var classConditional: Bool?

    func overrides() throws -> [(key: String, value: String)] {
        let values: [(String, String?)] = [
            ("image_size", imageSize.map { "\($0)" }),
            ("train_batch_size", trainBatchSize.map { "\($0)" }),
            ("eval_batch_size", evalBatchSize.map { "\($0)" }),
            ("num_epochs", numEpochs.map { "\($0)" }),
            ("max_train_steps", maxTrainSteps.map { "\($0)" }),
            ("gradient_accumulation_steps", gradientAccumulationSteps.map { "\($0)" }),
            ("learning_rate", learningRate.map { "\($0)" }),
            ("lr_warmup_steps", lrWarmupSteps.map { "\($0)" }),
            ("save_image_epochs", saveImageEpochs.map { "\($0)" }),
            ("save_model_epochs", saveModelEpochs.map { "\($0)" }),
            ("mixed_precision", mixedPrecision.map(quotedYAML)),
            ("output_dir", outputDir.map(quotedYAML)),
            ("seed", seed.map { "\($0)" }),
            ("model", model.map(quotedYAML)),
            ("num_train_timesteps", numTrainTimesteps.map { "\($0)" }),
            ("beta_schedule", betaSchedule.map(quotedYAML)),
            ("beta_start", betaStart.map { "\($0)" }),
            ("beta_end", betaEnd.map { "\($0)" }),
            ("prediction_type", predictionType.map(quotedYAML)),
            ("snr_gamma", snrGamma.map { "\($0)" }),
            ("dataset", dataset.map(quotedYAML)),
            ("dataset_limit", datasetLimit.map { "\($0)" }),
            ("channels", channels.map { "\($0)" }),
            ("prefetch_batches", prefetchBatches.map { "\($0)" }),
            ("lr_scheduler", lrScheduler.map(quotedYAML)),
            ("adam_beta1", adamBeta1.map { "\($0)" }),
            ("adam_beta2", adamBeta2.map { "\($0)" }),
            ("adam_weight_decay", adamWeightDecay.map { "\($0)" }),
            ("adam_epsilon", adamEpsilon.map { "\($0)" }),
            ("max_grad_norm", maxGradNorm.map { "\($0)" }),
            ("ema_max_decay", emaMaxDecay.map { "\($0)" }),
            ("ema_min_decay", emaMinDecay.map { "\($0)" }),
            ("ema_inv_gamma", emaInvGamma.map { "\($0)" }),
            ("ema_power", emaPower.map { "\($0)" }),
            ("ema_update_after_step", emaUpdateAfterStep.map { "\($0)" }),
            ("condition_dropout", conditionDropout.map { "\($0)" }),
            ("eval_scheduler", evalScheduler.map(quotedYAML)),
            ("eval_inference_steps", evalInferenceSteps.map { "\($0)" }),
            ("guidance_scale", guidanceScale.map { "\($0)" }),
            ("checkpointing_steps", checkpointingSteps.map { "\($0)" }),
            ("checkpoints_total_limit", checkpointsTotalLimit.map { "\($0)" }),
            ("overwrite_output_dir", overwriteOutputDir.map { "\($0)" }),
            ("random_flip", randomFlip.map { "\($0)" }),
            ("use_ema", useEma.map { "\($0)" }),
            ("ema_use_warmup", emaUseWarmup.map { "\($0)" }),
            ("class_conditional", classConditional.map { "\($0)" }),
        ]
        var result = values.compactMap { pair in pair.1.map { (key: pair.0, value: $0) } }
        if let resume { result.append((key: "resume_from_checkpoint", value: quotedYAML(resume))) }
        if let fromPipeline { result.append((key: "from_pipeline", value: quotedYAML(fromPipeline))) }
        if !freeze.isEmpty { result.append((key: "freeze", value: "[" + freeze.map(quotedYAML).joined(separator: ", ") + "]")) }
        for assignment in assignments {
            guard let equals = assignment.firstIndex(of: "=") else {
                throw ValidationError("--set needs KEY=VALUE, got \(assignment)")
            }
            result.append((key: String(assignment[..<equals]), value: String(assignment[assignment.index(after: equals)...])))
        }
        return result
    }

    func run() throws {
        DistributedLaunch.installIfLaunched()
        let configuration: TrainingConfiguration
        do {
            if let config {
                configuration = try TrainingConfiguration.load(contentsOf: URL(fileURLWithPath: config), overrides: try overrides())
            } else {
                configuration = try TrainingConfiguration.load(yaml: "", overrides: try overrides())
            }
        } catch let error as TrainingConfigurationError {
            throw ValidationError(error.description)
        }
        try CommandFailure.report {
            let trainer = try Trainer(configuration: configuration)
            if noProgress { trainer.progressOutput = nil }
            let summary = try trainer.run()
            summary.reportLines.forEach { print($0) }
        }
    }
}

/// A string as a YAML double-quoted scalar (so `no`, `1e-4` or `a: b` stay strings).
func quotedYAML(_ text: String) -> String {
    "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
}

/// Runs a command body and turns the library's errors into one `error:` line and exit status 1.
enum CommandFailure {
    static func report(_ body: () throws -> Void) throws {
        do {
            try body()
        } catch let error as ExitCode {
            throw error
        } catch let error as ValidationError {
            throw error
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }
}
