import Foundation
import NN
import Tensors

/// Trains an ``AutoencoderKL`` from scratch as diffusers' research script
/// `train_autoencoderkl.py` and the LDM's `LPIPSWithDiscriminator` do, without
/// their perceptual (LPIPS) and adversarial terms, which need downloaded weights.
///
/// For a batch x of B images `[B, C, H, W]` in [−1, 1], the encoder gives the
/// posterior q(z|x) = N(μ, σ²) (``DiagonalGaussianDistribution``), z = μ + σ·ε
/// is sampled with ε drawn from the trainer's seeded generator, and x̂ = decode(z):
///
///     reconstruction = Σ_{b,c,h,w} ℓ(x̂ − x) / B        ℓ(d) = |d| (l1) or d² (mse)
///     kl             = Σ_{b,c,h,w} ½(μ² + σ² − 1 − log σ²) / B
///     loss           = reconstruction + klWeight · kl
///
/// that is `torch.sum(rec_loss) / rec_loss.shape[0] + kl_scale * torch.sum(posterior.kl()) / B`
/// (both sums per image, averaged over the batch; log σ² clamped to [−30, 20] as diffusers does).
///
/// AdamW with a warm-up and a schedule, gradient accumulation (each micro-batch's
/// loss scaled by 1/steps), clipping, optional EMA, `mixed_precision` storage of saved
/// activations. Checkpoints (`checkpoint-<step>/`) hold the model, AdamW, the EMA, the
/// data position, the generator and the options: a run resumed from one computes the
/// same losses as one never stopped. Ctrl-C / SIGTERM writes a checkpoint and stops.
/// A grid of reconstructions (originals row above reconstructions row) every
/// `gridEvery` steps and at the end; then `vae/` in diffusers' layout with
/// `scaling_factor` measured (``measureScalingFactor(images:)``).
///
/// Data parallel: parameters are broadcast from rank 0 after they are built; each rank loads
/// its rows of every global batch (`DataLoader`'s shard) and draws the posterior noise of the
/// whole global batch from the generator every rank shares, keeping its rows
/// (``DataParallelShard``), so N ranks with batch B draw what one process with batch N·B draws;
/// gradients of the local mean losses are averaged after the last micro-batch's backward
/// (the mean of equal-sized local means is the global mean); files written by the writer rank
/// only, each write followed by a barrier (``DataParallel``).
public final class VAETrainer {
    public let options: VAETrainingOptions
    public let model: AutoencoderKL
    /// The training data.
    public let dataset: Dataset
    /// Batches of `batchSize`, shuffled with the seed, the last partial batch dropped.
    public let loader: DataLoader
    /// AdamW over every parameter.
    public let optimizer: Adam
    public let schedule: LearningRateSchedule
    /// The moving average of the weights (with `useEMA`).
    public let ema: ExponentialMovingAverage?
    /// Image channels.
    public let channels: Int
    /// The processes of the run (one by default).
    public let group: any DataParallelGroup
    /// Optimizer steps done.
    public internal(set) var step = 0
    /// Ctrl-C / SIGTERM handling (installed by `run()` when `handleSignals`).
    public let interruption = TrainingInterruption()
    public var handleSignals = true
    /// Where the progress line goes (nil: none).
    public var progressOutput: ProgressOutput? = FileDescriptorOutput()
    /// Where messages go.
    public var message: (String) -> Void = { text in
        print(text)
        fflush(stdout)
    }
    /// Called after every optimizer step (and its checkpoint).
    public var onStep: ((StepResult) -> Void)?

    /// One optimizer step's numbers (means over its micro-batches and processes).
    public struct StepResult: Equatable, Sendable {
        public var step: Int
        public var loss: Float
        /// The reconstruction term (per image) and the KL term (per image, unweighted).
        public var reconstruction: Float
        public var kl: Float
        public var gradientNorm: Float
        public var learningRate: Float
    }

    /// A batch's loss (a graph, for `backward()`) and its two terms.
    public struct Loss {
        public let loss: Tensor
        public let reconstruction: Tensor
        public let kl: Tensor
        /// The decoded sample.
        public let reconstructed: Tensor
    }

    let parameters: [Tensor]
    /// The gradient average of each step (started during the last micro-batch's backward pass when the group overlaps).
    let gradientAverage: StepGradientAverage
    var generator: RandomGenerator
    var log: TrainingLog?
    var lastCheckpoint: (step: Int, path: String)?
    var lastGridStep = -1
    /// Whether a rank was asked to stop (Ctrl-C / SIGTERM) by the last step.
    var stopRequested = false
    var gridPaths: [String] = []

    /// Builds the model (PyTorch's default initialisation from `seed`), the loader and the optimizer.
    /// - Parameters:
    ///   - dataset: the training images (default: `options.dataset` by name or folder).
    ///   - group: the processes of a data-parallel run (default `DataParallel.current`).
    public init(options: VAETrainingOptions, dataset given: Dataset? = nil, group: (any DataParallelGroup)? = nil) throws {
        try options.validate()
        self.options = options
        let group = group ?? DataParallel.current
        self.group = group
        let dataset = try given ?? VAETraining.openTrainingDataset(options)
        guard dataset.count > 0 else { throw TrainingError.data("the dataset \(options.dataset) is empty") }
        self.dataset = dataset
        let first = try dataset.example(at: 0).image
        guard first.rank == 3 else { throw TrainingError.data("the dataset's images must be [channels, height, width], got \(first.shape)") }
        channels = options.channels ?? first.shape[0]
        let configuration = options.modelConfiguration(channels: channels)
        do {
            try configuration.validate()
        } catch let error as AutoencoderConfigurationError {
            throw TrainingError.data("the model cannot be built: \(error)")
        }
        Initialization.seed(options.seed)
        model = try AutoencoderKL(configuration: configuration)
        model.train()
        let parameters = model.parameters()
        self.parameters = parameters
        gradientAverage = StepGradientAverage(group: group, parameters: parameters)
        try group.broadcast(parameters, from: 0)
        group.shardDropout(in: [model])

        let transform: ImageTransform? = first.shape == [channels, options.resolution, options.resolution] && !options.randomFlip
            ? nil : ImageTransforms.standard(size: options.resolution, channels: channels, randomFlip: options.randomFlip)
        loader = DataLoader(dataset: dataset, batchSize: options.batchSize, shuffle: true, seed: options.seed, dropLast: true,
                            transform: transform, prefetchBatches: options.prefetchBatches,
                            shard: DataLoaderShard(rank: group.rank, count: group.size))
        guard loader.batchesPerEpoch > 0 else {
            throw TrainingError.data("the dataset has \(dataset.count) images, fewer than one batch of \(options.batchSize)")
        }
        optimizer = Adam.adamW(parameters: parameters, learningRate: Float(options.learningRate), beta1: Float(options.adamBeta1),
                               beta2: Float(options.adamBeta2), epsilon: Float(options.adamEpsilon), weightDecay: Float(options.weightDecay))
        schedule = LearningRateSchedule(options.lrScheduler, warmupSteps: options.resolvedWarmupSteps, trainingSteps: options.steps)
        ema = options.useEMA ? ExponentialMovingAverage(parameters: parameters, maximumDecay: options.emaMaxDecay) : nil
        generator = RandomGenerator(seed: options.seed &+ 0x7AE0_5EED)
    }

    public var outputDir: String { options.outputDir }
    /// Epochs the run covers (the last one possibly partial).
    public var epochs: Int {
        let batches = options.steps * options.gradientAccumulationSteps
        return (batches + loader.batchesPerEpoch - 1) / loader.batchesPerEpoch
    }

    // MARK: The loss

    /// The loss of `images` with posterior noise `noise` (the shape of the latents):
    /// see the type's documentation for the exact reductions.
    public static func loss(model: AutoencoderKL, images: Tensor, noise: Tensor, reconstruction kind: VAEReconstructionLoss,
                            klWeight: Double) -> Loss {
        let posterior = model.encode(images)
        let reconstructed = model.decode(posterior.sample(noise: noise))
        let perValue = kind == .l1 ? Tensor.l1Loss(reconstructed, images) : Tensor.mseLoss(reconstructed, images)
        // Σ over all values / B = mean · (values per image).
        let reconstruction = perValue * Float(images.count / images.shape[0])
        let kl = posterior.kl().mean()
        let loss = klWeight == 0 ? reconstruction : reconstruction + kl * Float(klWeight)
        return Loss(loss: loss, reconstruction: reconstruction, kl: kl, reconstructed: reconstructed)
    }

    /// The latent shape of `images`.
    func latentShape(of images: Tensor) -> [Int] {
        let factor = model.configuration.downsamplingFactor
        return [images.shape[0], model.configuration.latentChannels, images.shape[2] / factor, images.shape[3] / factor]
    }

    // MARK: Training

    /// Trains until `options.steps` or a signal; at the end writes the last grid,
    /// a checkpoint and `vae/` (with the measured `scaling_factor`).
    public func run() throws -> VAETrainingSummary {
        let start = Date()
        if group.isWriter { try prepareOutputFolder() }
        try group.barrier()
        if !group.isWriter, let specification = options.resumeFromCheckpoint,
           let path = try TrainingCheckpoint.resolve(specification, outputDir: outputDir) {
            try restore(from: path)
        }
        let log: TrainingLog? = try group.isWriter ? TrainingLog(outputDir: outputDir, progressOutput: progressOutput, message: message) : nil
        self.log = log
        defer { log?.finish(); self.log = nil; loader.stop() }
        if handleSignals { interruption.install() }
        defer { if handleSignals { interruption.uninstall() } }
        let precision = MixedPrecisionScope(options.mixedPrecision)
        defer { precision.end() }
        if let log { describeRun(log) }
        let startStep = step
        log?.startProgress(total: options.steps, step: step)
        var last: StepResult?
        var interrupted = false
        let loopStart = ProgressBar.monotonicSeconds()
        model.train()
        while step < options.steps {
            let result = try trainingStep()
            last = result
            onStep?(result)
            // One process also stops for a request made during `onStep`; ranks only for one every rank knows of.
            if group.isDistributed ? stopRequested : interruption.isRequested {
                if lastCheckpoint?.step != step { try saveCheckpoint() }
                log?.event("interrupted", step: step, text: "interrupted at step \(step); resume with --resume latest (checkpoint \(lastCheckpoint?.path ?? "?"))")
                interrupted = true
                break
            }
        }
        let trainingSeconds = ProgressBar.monotonicSeconds() - loopStart
        var vaePath: String?
        var scalingFactor: Double?
        if !interrupted {
            if lastGridStep != step { try saveGrid(name: String(format: "step-%06d", step)) }
            if lastCheckpoint?.step != step && step > startStep { try saveCheckpoint() }
            let factor = try withAveragedWeights { try measureScalingFactor(images: options.scalingFactorImages) }
            scalingFactor = factor
            vaePath = try saveVAE(scalingFactor: factor)
        }
        return VAETrainingSummary(step: step, totalSteps: options.steps, interrupted: interrupted, finalLoss: last?.loss,
                                  finalReconstruction: last?.reconstruction, finalKL: last?.kl, outputDir: outputDir,
                                  vaePath: vaePath, scalingFactor: scalingFactor, lastCheckpoint: lastCheckpoint?.path,
                                  grids: gridPaths, logDirectory: (outputDir as NSString).appendingPathComponent("logs"),
                                  trainingSeconds: trainingSeconds, stepsThisRun: step - startStep, seconds: Date().timeIntervalSince(start))
    }

    /// Forward and backward of one micro-batch (loss scaled by `scale`); returns the unscaled numbers.
    /// On the step's last micro-batch (`isLast`) the gradient average may start during the backward pass.
    func microStep(_ batch: Batch, scale: Float, isLast: Bool = false) throws -> (loss: Float, reconstruction: Float, kl: Float) {
        let images = batch.images
        guard images.rank == 4, images.shape[1] == channels else {
            throw TrainingError.data("a batch has shape \(images.shape); the model takes \(channels)-channel images")
        }
        // The posterior noise of the whole global batch, this rank's rows kept (one process: the batch's own).
        let shard = group.shard(localCount: images.shape[0])
        let noise = shard.randn(Array(latentShape(of: images).dropFirst()), generator: &generator)
        let terms = Self.loss(model: model, images: images, noise: noise, reconstruction: options.reconstructionLoss, klWeight: options.klWeight)
        let value = terms.loss.item
        // With several ranks the averaged loss is checked in `trainingStep`, on every rank alike.
        guard value.isFinite || group.isDistributed else { throw nonFinite(value) }
        try gradientAverage.backward(scale == 1 ? terms.loss : terms.loss * scale, isLast: isLast)
        return (value, terms.reconstruction.item, terms.kl.item)
    }

    /// `gradientAccumulationSteps` micro-batches, gradient averaging, clipping, one AdamW
    /// step and the EMA; logs, checkpoints and grids as the options say.
    func trainingStep() throws -> StepResult {
        let stepStart = ProgressBar.monotonicSeconds()
        let accumulation = options.gradientAccumulationSteps
        var sums: [Float] = [0, 0, 0]
        var images = 0, epoch = loader.position.epoch
        for index in 0..<accumulation {
            guard let batch = try loader.nextBatch() ?? loader.nextBatch() else {
                throw TrainingError.data("the data loader gave no batch at step \(step + 1)")
            }
            epoch = batch.epoch
            let numbers = try microStep(batch, scale: 1 / Float(accumulation), isLast: index == accumulation - 1)
            sums[0] += numbers.loss; sums[1] += numbers.reconstruction; sums[2] += numbers.kl
            images += batch.count
        }
        try gradientAverage.finish()
        // The ranks' mean losses, and whether any rank was asked to stop (all stop after the same step).
        let means = try group.average(sums.map { $0 / Float(accumulation) } + [interruption.isRequested ? 1 : 0])
        stopRequested = means[3] > 0
        guard means[0].isFinite else { throw nonFinite(means[0]) }
        let maximumNorm = options.maxGradNorm.flatMap { $0 > 0 ? Float($0) : nil } ?? .infinity
        let norm = clipGradientNorm(parameters, maximumNorm: maximumNorm)
        guard norm.isFinite else { throw nonFinite(norm) }
        let learningRate = schedule.learningRate(step: step, baseLearningRate: Float(options.learningRate))
        optimizer.learningRate = learningRate
        optimizer.step()
        optimizer.zeroGradients()
        ema?.step(parameters)
        step += 1
        let result = StepResult(step: step, loss: means[0], reconstruction: means[1], kl: means[2], gradientNorm: norm, learningRate: learningRate)
        if let log {
            let seconds = Swift.max(ProgressBar.monotonicSeconds() - stepStart, 1e-9)
            try log.record(.init(step: step, epoch: epoch, loss: result.loss, learningRate: learningRate, gradientNorm: norm,
                                 imagesPerSecond: Double(images * group.size) / seconds), epochs: epochs)
            try log.tensorBoard?.addScalars([("train/reconstruction", result.reconstruction), ("train/kl", result.kl)], step: step)
            if step % options.logEvery == 0 || step == options.steps || step == 1 {
                log.event("metrics", step: step, fields: [("loss", .float(result.loss)), ("reconstruction", .float(result.reconstruction)),
                                                         ("kl", .float(result.kl))],
                          text: String(format: "step %d/%d  loss %.4f  reconstruction %.4f  kl %.2f  lr %.2e",
                                       step, options.steps, result.loss, result.reconstruction, result.kl, learningRate))
            }
        }
        if options.checkpointingSteps > 0 && step % options.checkpointingSteps == 0 && step < options.steps { try saveCheckpoint() }
        if options.gridEvery > 0 && step % options.gridEvery == 0 && step < options.steps { try saveGrid(name: String(format: "step-%06d", step)) }
        return result
    }

    private func nonFinite(_ value: Float) -> TrainingError {
        optimizer.zeroGradients()
        let error = TrainingError.nonFiniteLoss(step: step + 1, value: value, lastCheckpoint: lastCheckpoint?.path ?? TrainingCheckpoint.list(in: outputDir).last?.path)
        log?.event("stopped", step: step + 1, fields: [("reason", .string("non-finite loss")), ("value", .float(value))], text: "error: \(error)")
        return error
    }

    private func describeRun(_ log: TrainingLog) {
        let configuration = model.configuration
        let latentSide = options.resolution / configuration.downsamplingFactor
        log.say("model: AutoencoderKL (\(options.model.rawValue)), \(model.parameterCount) parameters, block_out_channels \(configuration.blockOutChannels), "
                + "layers_per_block \(configuration.layersPerBlock), norm_num_groups \(configuration.normGroupCount); "
                + "\(options.resolution)×\(options.resolution)×\(channels) → \(latentSide)×\(latentSide)×\(configuration.latentChannels) latents")
        log.say("data: \(options.dataset), \(dataset.count) images, \(loader.batchesPerEpoch) batches of \(options.batchSize) per epoch"
                + (options.gradientAccumulationSteps > 1 ? ", \(options.gradientAccumulationSteps) per optimizer step" : "")
                + (options.randomFlip ? ", random flips" : "") + (group.isDistributed ? ", \(group.size) processes" : ""))
        log.say("training: \(options.steps) steps (\(epochs) epoch(s)), loss \(options.reconstructionLoss.rawValue) + \(options.klWeight) × KL, "
                + "lr \(options.learningRate) (\(options.lrScheduler.rawValue), warm-up \(options.resolvedWarmupSteps))"
                + (ema != nil ? ", EMA" : "") + (options.mixedPrecision != .no ? ", \(options.mixedPrecision.rawValue) saved activations" : "")
                + (step > 0 ? ", resuming at step \(step)" : ""))
        log.say("output: \(outputDir) (logs in \(log.directory))")
    }
}

/// What a finished (or interrupted) VAE training run produced.
public struct VAETrainingSummary: Sendable {
    /// Optimizer steps done, and planned.
    public let step: Int, totalSteps: Int
    public let interrupted: Bool
    /// The last step's loss and its two terms.
    public let finalLoss: Float?, finalReconstruction: Float?, finalKL: Float?
    public let outputDir: String
    /// `vae/` (when the run finished) and its measured `scaling_factor`.
    public let vaePath: String?
    public let scalingFactor: Double?
    /// The newest checkpoint.
    public let lastCheckpoint: String?
    /// The reconstruction grids this run wrote.
    public let grids: [String]
    public let logDirectory: String
    /// Seconds in the training loop (this run), the steps it took, and the whole of `run()`.
    public let trainingSeconds: Double
    public let stepsThisRun: Int
    public let seconds: Double
}
