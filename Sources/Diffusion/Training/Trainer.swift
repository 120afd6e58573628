import Foundation
import NN
import Tensors

/// Trains a `UNet2DModel` the way diffusers' `train_unconditional.py` and the
/// diffusion course's `TrainConfig` notebook do: AdamW with a warmed-up LR
/// schedule, gradient accumulation and clipping, optional EMA, class labels
/// with condition dropout for classifier-free guidance, checkpoints that a run
/// resumes from exactly, sample grids and pipeline folders along the way.
///
/// ```swift
/// let configuration = try TrainingConfiguration.load(contentsOf: URL(fileURLWithPath: "train.yaml"))
/// let summary = try Trainer(configuration: configuration).run()
/// print(summary.pipelinePath ?? "")
/// ```
///
/// Reproducibility: every random draw of a run (data order, noise, timesteps,
/// condition dropout, dropout layers) comes from generators seeded by `seed`
/// and saved in checkpoints, so a run resumed from a checkpoint computes the
/// same losses as one that was never stopped.
///
/// Data-parallel (under `mpirun`, through ``group``): every rank takes `train_batch_size`
/// examples of each global batch of `train_batch_size × ranks` (the loader's shard), draws
/// the noise, timesteps and condition dropout of the whole global batch from the shared
/// generator and keeps its rows (``DataParallelShard``), and averages the gradients before
/// clipping; so N ranks compute what one process with the global batch computes, up to
/// the order of floating-point sums. Rank 0 alone writes checkpoints, logs, grids and
/// pipelines while the others wait. (Dropout layers draw their masks per rank.)
public final class Trainer {
    /// The run's configuration (as given; see the resolved values below).
    public let configuration: TrainingConfiguration
    /// The model being trained.
    public let unet: UNet2DModel
    /// The training noise schedule (a `DDPMScheduler`).
    public let noiseScheduler: any Scheduler
    /// The training data.
    public let dataset: Dataset
    /// Batches of `train_batch_size`, shuffled with `seed`, last partial batch dropped.
    public let loader: DataLoader
    /// AdamW over the trainable parameters.
    public let optimizer: Adam
    /// The learning-rate schedule over `totalSteps`.
    public let schedule: LearningRateSchedule
    /// The moving average of the weights (with `use_ema`).
    public let ema: ExponentialMovingAverage?
    /// The class names of a class-conditional run (empty otherwise).
    public let classNames: [String]
    /// Image side and channels.
    public let imageSize: Int, channels: Int
    /// Optimizer steps per epoch and in the whole run.
    public let stepsPerEpoch: Int, totalSteps: Int
    /// Epochs the run covers.
    public let epochs: Int
    /// Optimizer steps done.
    public internal(set) var step = 0
    /// Ctrl-C / SIGTERM handling; `install` is called by `run()` when `handleSignals` is true.
    public let interruption = TrainingInterruption()
    /// Whether `run()` catches SIGINT and SIGTERM.
    public var handleSignals = true
    /// Where the progress line goes (nil: none).
    public var progressOutput: ProgressOutput? = FileDescriptorOutput()
    /// Where messages go.
    public var message: (String) -> Void = { text in
        print(text)
        fflush(stdout)
    }
    /// Called after every optimizer step (and its log record and checkpoint) with the step number.
    public var onStep: ((Int) -> Void)?
    /// The processes of a data-parallel run (`DataParallel.current` unless given; one process without `mpirun`).
    public let group: any DataParallelGroup

    let trainableParameters: [Tensor]
    var generator: RandomGenerator
    var log: TrainingLog?
    var lastCheckpoint: (step: Int, path: String)?
    var lastImageStep = -1, lastPipelineStep = -1
    /// The loss of the last optimizer step as logged (the mean over the ranks).
    var lastStepLoss: Float?
    var sampleImages: [String] = []
    /// The gradient average of each optimizer step (started during the last micro-batch's backward pass
    /// when the group overlaps), finished by `optimizerStep`.
    let gradientAverage: StepGradientAverage

    /// Builds the model, data loader and optimizer of `configuration`.
    /// - Parameters:
    ///   - dataset: the training data (default: `configuration.dataset` opened by name or path).
    ///   - group: the processes of a data-parallel run (default: `DataParallel.current`).
    public init(configuration: TrainingConfiguration, dataset given: Dataset? = nil, group: (any DataParallelGroup)? = nil) throws {
        try configuration.validate()
        self.configuration = configuration
        let group = group ?? DataParallel.current
        self.group = group
        let dataset = try given ?? Datasets.open(configuration.dataset, training: true, limit: configuration.datasetLimit)
        self.dataset = dataset
        guard dataset.count > 0 else { throw TrainingError.data("the dataset \(configuration.dataset) is empty") }
        let first = try dataset.example(at: 0).image
        let classCount: Int? = configuration.classConditional ? dataset.classNames.count : nil
        if configuration.classConditional && dataset.classNames.count < 2 {
            throw TrainingError.data("class_conditional needs a dataset with classes (sub-folders of an image folder, or a named dataset); \(configuration.dataset) has \(dataset.classNames.count)")
        }
        classNames = configuration.classConditional ? dataset.classNames : []

        if let folder = configuration.fromPipeline {
            let pipeline = try DDPMPipeline.load(folder: URL(fileURLWithPath: folder))
            unet = pipeline.unet
            var schedulerConfiguration = pipeline.scheduler.configuration
            schedulerConfiguration.className = DDPMScheduler.className
            noiseScheduler = try DDPMScheduler(configuration: schedulerConfiguration)
            if let classCount, unet.configuration.classEmbeddingCount != classCount + 1 {
                throw TrainingError.data("the pipeline's UNet has num_class_embeds \(unet.configuration.classEmbeddingCount.map(String.init) ?? "null"); class-conditional training on \(classCount) classes needs \(classCount + 1)")
            }
            channels = unet.configuration.inChannels
            if case .square(let side)? = unet.configuration.sampleSize { imageSize = configuration.imageSize ?? side } else { imageSize = configuration.imageSize ?? 28 }
        } else {
            channels = configuration.channels ?? first.shape[0]
            imageSize = configuration.imageSize ?? 28
            let unetConfiguration = try ModelPresets.resolve(configuration.model, imageSize: imageSize, channels: channels, classCount: classCount)
            Initialization.seed(configuration.seed)
            unet = try UNet2DModel(configuration: unetConfiguration)
            noiseScheduler = try DDPMScheduler(configuration: configuration.noiseSchedulerConfiguration)
        }
        for pattern in configuration.freeze { unet.freeze(matching: pattern) }
        trainableParameters = unet.trainableParameters()
        gradientAverage = StepGradientAverage(group: group, parameters: trainableParameters)
        guard !trainableParameters.isEmpty else { throw TrainingError.data("every parameter is frozen (freeze: \(configuration.freeze))") }

        let transform: ImageTransform? = first.shape == [channels, imageSize, imageSize] && !configuration.randomFlip
            ? nil : ImageTransforms.standard(size: imageSize, channels: channels, randomFlip: configuration.randomFlip)
        loader = DataLoader(dataset: dataset, batchSize: configuration.trainBatchSize, shuffle: true, seed: configuration.seed,
                            dropLast: true, transform: transform, prefetchBatches: configuration.prefetchBatches,
                            shard: DataLoaderShard(rank: group.rank, count: group.size))
        guard loader.batchesPerEpoch > 0 else {
            throw TrainingError.data("the dataset has \(dataset.count) examples, fewer than one batch of \(configuration.trainBatchSize * group.size)")
        }
        let accumulation = configuration.gradientAccumulationSteps
        let perEpoch = (loader.batchesPerEpoch + accumulation - 1) / accumulation
        stepsPerEpoch = perEpoch
        totalSteps = configuration.maxTrainSteps ?? configuration.numEpochs * perEpoch
        epochs = configuration.maxTrainSteps.map { ($0 + perEpoch - 1) / perEpoch } ?? configuration.numEpochs

        optimizer = Adam.adamW(parameters: trainableParameters, learningRate: Float(configuration.learningRate),
                               beta1: Float(configuration.adamBeta1), beta2: Float(configuration.adamBeta2),
                               epsilon: Float(configuration.adamEpsilon), weightDecay: Float(configuration.adamWeightDecay))
        schedule = LearningRateSchedule(configuration.lrScheduler, warmupSteps: configuration.lrWarmupSteps, trainingSteps: totalSteps)
        ema = configuration.useEMA
            ? ExponentialMovingAverage(parameters: unet.parameters(), maximumDecay: configuration.emaMaxDecay,
                                       minimumDecay: configuration.emaMinDecay, updateAfterStep: configuration.emaUpdateAfterStep,
                                       useWarmup: configuration.emaUseWarmup, inverseGamma: configuration.emaInvGamma,
                                       power: configuration.emaPower)
            : nil
        generator = RandomGenerator(seed: configuration.seed &+ 0x5EED_0F_7EA1)
    }

    /// `output_dir`.
    public var outputDir: String { configuration.outputDir }

    /// The unconditional class index (the last class embedding) of a class-conditional run.
    public var nullClass: Int? { classNames.isEmpty ? nil : classNames.count }

    /// Trains until `totalSteps`, a signal, or a non-finite loss (which throws
    /// ``TrainingError/nonFiniteLoss(step:value:lastCheckpoint:)``).
    public func run() throws -> TrainingSummary {
        let start = Date()
        try prepareOutputFolder()
        // Every rank starts from rank 0's weights (the same seed makes them equal already; a
        // pipeline or checkpoint read on every rank too: this is the guarantee).
        try group.broadcast(unet.parameters() + (ema?.shadowParameters ?? []), from: 0)
        group.shardDropout(in: [unet])
        let log = group.isWriter ? try TrainingLog(outputDir: outputDir, progressOutput: progressOutput, message: message) : nil
        self.log = log
        defer { log?.finish(); self.log = nil; loader.stop() }
        if handleSignals {
            interruption.install()
        }
        defer { if handleSignals { interruption.uninstall() } }
        let precision = MixedPrecisionScope(configuration.mixedPrecision)
        defer { precision.end() }
        if let log {
            describeRun(log)
            log.startProgress(total: totalSteps, step: step)
        }

        var lastLoss: Float?
        var interrupted = false
        let accumulation = configuration.gradientAccumulationSteps
        training: while step < totalSteps && loader.position.epoch < epochs {
            let epoch = loader.position.epoch
            var microBatches = 0, images = 0
            var summedLoss: Float = 0
            var stepStart = ProgressBar.monotonicSeconds()
            var epochFinished = false
            unet.train()
            while step < totalSteps {
                guard let batch = try loader.nextBatch() else { epochFinished = true; break }
                summedLoss += try microStep(batch, scale: 1 / Float(accumulation), isLast: microBatches + 1 == accumulation)
                microBatches += 1
                images += batch.count
                if microBatches == accumulation {
                    lastLoss = summedLoss / Float(microBatches)
                    let stop = try optimizerStep(loss: lastLoss!, epoch: epoch, images: images, started: stepStart)
                    (microBatches, images, summedLoss, stepStart) = (0, 0, 0, ProgressBar.monotonicSeconds())
                    if stop { interrupted = true; break training }
                }
            }
            if microBatches > 0 {
                // The epoch's last, partial accumulation still makes a step (as accelerate does).
                lastLoss = summedLoss / Float(microBatches)
                if try optimizerStep(loss: lastLoss!, epoch: epoch, images: images, started: stepStart) { interrupted = true; break training }
            }
            // A run of whole epochs ends on its last step before the loader reports the
            // end of that epoch; it is an epoch end all the same (for its grid's name).
            if !epochFinished && step >= totalSteps && step % stepsPerEpoch == 0 { epochFinished = true }
            if epochFinished {
                let isLast = epoch + 1 == epochs || step >= totalSteps
                if (epoch + 1) % configuration.saveImageEpochs == 0 || isLast { try saveSampleGrid(name: String(format: "epoch-%04d", epoch + 1)) }
                if (epoch + 1) % configuration.saveModelEpochs == 0 || isLast { try savePipeline() }
            }
        }
        if !interrupted {
            if lastImageStep != step { try saveSampleGrid(name: String(format: "step-%06d", step)) }
            if lastPipelineStep != step { try savePipeline() }
        }
        if lastCheckpoint?.step != step && step > 0 { try saveCheckpoint() }
        return TrainingSummary(
            step: step, totalSteps: totalSteps, interrupted: interrupted, finalLoss: lastStepLoss ?? lastLoss, outputDir: outputDir,
            pipelinePath: lastPipelineStep >= 0 ? outputDir : nil, lastCheckpoint: lastCheckpoint?.path,
            sampleImages: sampleImages, logDirectory: log?.directory ?? (outputDir as NSString).appendingPathComponent("logs"),
            seconds: Date().timeIntervalSince(start))
    }

    /// Forward and backward of one micro-batch; returns its (unscaled) loss. On the last
    /// micro-batch of an accumulation (`isLast`) the group may start averaging the gradients
    /// during the backward pass (``DataParallelGroup/startAveragingGradients(of:)``);
    /// `optimizerStep` finishes it.
    ///
    /// The random draws are made for the whole global batch (this rank's rows are kept, see
    /// ``DataParallelShard``): one process draws exactly the same numbers for the same examples.
    func microStep(_ batch: Batch, scale: Float, isLast: Bool = false) throws -> Float {
        let clean = batch.images
        let count = clean.shape[0]
        let shard = group.shard(localCount: count)
        var labels: [Int]?
        if let nullClass {
            guard let given = batch.classLabels else { throw TrainingError.data("a batch has examples without a class label") }
            let dropout = Float(configuration.conditionDropout)
            let dropped = shard.draw { generator.uniform() < dropout }
            labels = zip(given, dropped).map { label, drop in drop ? nullClass : label }
        }
        let prediction: Tensor, target: Tensor
        var timesteps: [Float]?
        let rest = Array(clean.shape.dropFirst())
        if configuration.predictionType == .x0 {
            let unit = noGrad { clean * 0.5 + 0.5 }
            let amount = shard.rand([], generator: &generator)
            let corruption = shard.rand(rest, generator: &generator)
            let noisy = noGrad { ToyDiffusion.corrupt(unit, amount: amount, noise: corruption) }
            prediction = unet(noisy, timestep: 0, classLabels: labels)
            target = unit
        } else {
            let noise = shard.randn(rest, generator: &generator)
            let drawn = shard.draw { Float(generator.integer(below: noiseScheduler.trainTimesteps)) }
            timesteps = drawn
            let noisy = noGrad { noiseScheduler.addNoise(clean, noise: noise, timesteps: drawn) }
            prediction = unet(noisy, timesteps: drawn, classLabels: labels)
            switch configuration.predictionType {
            case .epsilon, .x0: target = noise
            case .sample: target = clean
            case .vPrediction: target = noGrad { noiseScheduler.velocity(clean, noise: noise, timesteps: drawn) }
            }
        }
        let loss = weightedLoss(prediction, target, timesteps: timesteps)
        let value = loss.item
        // With several ranks the averaged loss is checked in `optimizerStep`, on every rank alike.
        guard value.isFinite || group.isDistributed else { throw nonFinite(value) }
        try gradientAverage.backward(scale == 1 ? loss : loss * scale, isLast: isLast)
        return value
    }

    /// The MSE, or with `snr_gamma` the Min-SNR weighted mean of the per-example MSEs.
    func weightedLoss(_ prediction: Tensor, _ target: Tensor, timesteps: [Float]?) -> Tensor {
        guard let gamma = configuration.snrGamma, let timesteps else { return Tensor.mseLoss(prediction, target) }
        let cumulative = noiseScheduler.noiseSchedule.alphasCumprod
        let weights: [Float] = timesteps.map { timestep in
            let alpha = Double(cumulative[Int(timestep)])
            let snr = alpha / Swift.max(1 - alpha, 1e-12)
            switch configuration.predictionType {
            case .epsilon, .x0: return Float(Swift.min(snr, gamma) / snr)
            case .vPrediction: return Float(Swift.min(snr, gamma) / (snr + 1))
            case .sample: return Float(Swift.min(snr, gamma))
            }
        }
        let perExample = (prediction - target).square().mean(axes: Array(1..<prediction.rank))
        return (perExample * Tensor(weights)).mean()
    }

    /// Averages the gradients over the ranks, clips, steps the optimizer and EMA, logs,
    /// checkpoints; returns true when a signal asks to stop (on any rank: all stop together).
    func optimizerStep(loss localLoss: Float, epoch: Int, images localImages: Int, started: Double) throws -> Bool {
        // Also the epoch's last, partial accumulation (its last micro-batch was not known as such: averaged now).
        try gradientAverage.finish()
        var loss = localLoss, stopRequested = interruption.isRequested
        if group.isDistributed {
            let averaged = try group.average([localLoss, stopRequested ? 1 : 0])
            loss = averaged[0]
            stopRequested = averaged[1] > 0
            guard loss.isFinite else { throw nonFinite(loss) }
        }
        let images = localImages * group.size
        lastStepLoss = loss
        let maximumNorm = configuration.maxGradNorm.flatMap { $0 > 0 ? Float($0) : nil } ?? .infinity
        let norm = clipGradientNorm(trainableParameters, maximumNorm: maximumNorm)
        guard norm.isFinite else { throw nonFinite(norm) }
        let learningRate = schedule.learningRate(step: step, baseLearningRate: Float(configuration.learningRate))
        optimizer.learningRate = learningRate
        optimizer.step()
        optimizer.zeroGradients()
        ema?.step(unet.parameters())
        step += 1
        let seconds = Swift.max(ProgressBar.monotonicSeconds() - started, 1e-9)
        try log?.record(.init(step: step, epoch: epoch, loss: loss, learningRate: learningRate, gradientNorm: norm,
                              imagesPerSecond: Double(images) / seconds), epochs: epochs)
        if configuration.checkpointingSteps > 0 && step % configuration.checkpointingSteps == 0 {
            try saveCheckpoint()
        }
        onStep?(step)
        if stopRequested {
            if lastCheckpoint?.step != step { try saveCheckpoint() }
            log?.event("interrupted", step: step, text: "interrupted at step \(step); resume with --resume latest (checkpoint \(lastCheckpoint?.path ?? "?"))")
            return true
        }
        return false
    }

    private func nonFinite(_ value: Float) -> TrainingError {
        optimizer.zeroGradients()
        let error = TrainingError.nonFiniteLoss(step: step + 1, value: value, lastCheckpoint: lastCheckpoint?.path ?? TrainingCheckpoint.list(in: outputDir).last?.path)
        log?.event("stopped", step: step + 1, fields: [("reason", .string("non-finite loss")), ("value", .float(value))], text: "error: \(error)")
        return error
    }

    private func describeRun(_ log: TrainingLog) {
        let trainable = trainableParameters.reduce(0) { $0 + $1.count }
        let frozen = unet.parameterCount - trainable
        log.say("model: UNet2DModel, \(unet.parameterCount) parameters" + (frozen > 0 ? " (\(frozen) frozen)" : "")
                + ", block_out_channels \(unet.configuration.blockOutChannels), \(imageSize)×\(imageSize)×\(channels)"
                + (classNames.isEmpty ? "" : ", \(classNames.count) classes + unconditional"))
        log.say("data: \(configuration.dataset), \(dataset.count) images, \(loader.batchesPerEpoch) batches of \(configuration.trainBatchSize * group.size) per epoch"
                + (group.isDistributed ? " (\(group.size) ranks × \(configuration.trainBatchSize))" : "")
                + (configuration.gradientAccumulationSteps > 1 ? ", \(configuration.gradientAccumulationSteps) per optimizer step" : ""))
        log.say("training: \(totalSteps) steps over \(epochs) epoch(s), objective \(configuration.predictionType.rawValue), "
                + "lr \(configuration.learningRate) (\(configuration.lrScheduler.rawValue), warm-up \(configuration.lrWarmupSteps))"
                + (ema != nil ? ", EMA" : "") + (configuration.mixedPrecision != .no ? ", \(configuration.mixedPrecision.rawValue) saved activations" : "")
                + (step > 0 ? ", resuming at step \(step)" : ""))
        log.say("output: \(outputDir) (logs in \(log.directory))")
    }
}

/// What a finished (or interrupted) run produced.
public struct TrainingSummary: Sendable {
    /// Optimizer steps done, and planned.
    public let step: Int, totalSteps: Int
    /// True when a signal stopped the run early (after writing a checkpoint).
    public let interrupted: Bool
    /// The loss of the last step.
    public let finalLoss: Float?
    /// `output_dir`, and the pipeline folder (the same, once a pipeline was saved).
    public let outputDir: String, pipelinePath: String?
    /// The newest checkpoint folder.
    public let lastCheckpoint: String?
    /// The sample grids written by this run.
    public let sampleImages: [String]
    /// TensorBoard and JSONL logs.
    public let logDirectory: String
    /// Wall time of `run()`.
    public let seconds: Double
}

extension TrainingSummary {
    /// What to tell a person at the end of a run: where everything is.
    public var reportLines: [String] {
        var lines: [String] = []
        let loss = finalLoss.map { String(format: ", last loss %.4f", $0) } ?? ""
        lines.append((interrupted ? "stopped at step \(step) of \(totalSteps)" : "trained \(step) steps")
                     + loss + String(format: " in %.0f s", seconds))
        if let pipelinePath { lines.append("pipeline:    \(pipelinePath)  (diffuse sample \(pipelinePath))") }
        if let lastCheckpoint { lines.append("checkpoint:  \(lastCheckpoint)" + (interrupted ? "  (continue with --resume latest)" : "")) }
        if let last = sampleImages.last { lines.append("samples:     \(last)" + (sampleImages.count > 1 ? " (and \(sampleImages.count - 1) earlier in the same folder)" : "")) }
        lines.append("logs:        \(logDirectory)  (tensorboard --logdir \(logDirectory); train.jsonl)")
        return lines
    }
}
