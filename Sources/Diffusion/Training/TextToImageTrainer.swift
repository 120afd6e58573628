import Foundation
import NN
import Tensors

/// Trains a Stable Diffusion `UNet2DConditionModel` on image–caption pairs with the VAE and the
/// text encoder frozen, as diffusers' `examples/text_to_image/train_text_to_image.py` (the whole
/// UNet) and `train_text_to_image_lora.py` (LoRA adapters on its attention projections) do.
///
/// ```swift
/// var options = TextToImageTrainingOptions()
/// options.from = "stable-diffusion-v1-5"
/// options.loraRank = 4
/// options.validationPrompts = ["a red sneaker on a blue background"]
/// let summary = try TextToImageTrainer(options: options).run()
/// ```
///
/// A step, per micro-batch of examples: each image's VAE posterior (cached once, see
/// ``TextToImageLatentCache``; the flipped image's with `random_flip`, chosen with probability ½)
/// sampled with the trainer's generator and scaled by `scaling_factor`; noise (plus
/// `noise_offset` × per-channel noise); uniform timesteps; `add_noise`; the caption's prompt
/// embeddings (cached, see ``TextToImagePromptCache``; the empty prompt with probability
/// `caption_dropout`); the UNet's prediction against the noise (or the velocity); the MSE, or the
/// Min-SNR weighted MSE with `snr_gamma`. After the last micro-batch of an accumulation: the
/// gradients averaged over processes, clipped to `max_grad_norm`, one AdamW step, the EMA.
///
/// Every random draw comes from generators seeded by `seed` and kept in checkpoints, so a run
/// resumed after `kill -9` computes the losses of a run never stopped.
///
/// Data parallel (``DataParallelGroup``, e.g. under `mpirun`): the trainable parameters are
/// broadcast from rank 0; each rank loads its rows of every global batch of
/// `train_batch_size × ranks` (`DataLoader`'s shard) and draws the random numbers of the whole
/// global batch, keeping its rows (``DataParallelShard``), so N ranks draw what one process with
/// the global batch draws and every rank's generator stays in the same state; the gradients of
/// the local mean losses are averaged (the local batches are equal, so their mean is the global
/// mean's gradient); the logged loss and a stop request are averaged once per step; rank 0 alone
/// writes files.
public final class TextToImageTrainer {
    public let options: TextToImageTrainingOptions
    /// The pipeline being trained (its UNet, or adapters on it and on the text encoder).
    public let pipeline: StableDiffusionPipeline
    /// The training noise schedule (a `DDPMScheduler` with the pipeline's schedule).
    public let noiseScheduler: any Scheduler
    /// What the UNet predicts.
    public let predictionType: PredictionType
    /// The image side the VAE encodes.
    public let resolution: Int
    /// The training data (images and captions).
    public let dataset: Dataset
    /// Each example's caption.
    public let captions: [String]
    public let latentCache: TextToImageLatentCache
    /// The prompt embeddings of every caption (nil when the text encoder trains adapters).
    public let promptCache: TextToImagePromptCache?
    /// Batches of example indices, shuffled with the seed (diffusers' `DataLoader(shuffle=True)`).
    public let loader: DataLoader
    public let optimizer: Adam
    public let schedule: LearningRateSchedule
    public let ema: ExponentialMovingAverage?
    /// LoRA adapters of the UNet and of the text encoder, by layer path (empty for full fine-tuning).
    public let unetAdapters: [(path: String, adapter: LoRAAdapter)]
    public let textEncoderAdapters: [(path: String, adapter: LoRAAdapter)]
    /// What the optimizer updates.
    public let trainableParameters: [Tensor]
    /// The gradient average of each optimizer step (started during the last micro-batch's backward
    /// pass when the group overlaps), finished before clipping.
    let gradientAverage: StepGradientAverage
    /// Optimizer steps per epoch and in the whole run; epochs the run covers.
    public let stepsPerEpoch: Int, totalSteps: Int, epochs: Int
    /// The learning rate after `scale_lr`.
    public let learningRate: Double
    /// Optimizer steps done.
    public internal(set) var step = 0
    public let interruption = TrainingInterruption()
    public var handleSignals = true
    public var progressOutput: ProgressOutput? = FileDescriptorOutput()
    /// Where messages go (standard output by default).
    public var message: (String) -> Void
    /// Called after every optimizer step (its log record and checkpoint written) with the step number.
    public var onStep: ((Int) -> Void)?
    /// The group of data-parallel processes (one by default).
    public let group: any DataParallelGroup

    var generator: RandomGenerator
    var log: TrainingLog?
    var lastCheckpoint: (step: Int, path: String)?
    var lastValidationStep = -1
    var sampleImages: [String] = []

    public var unet: UNet2DConditionModel { pipeline.unet }
    public var outputDir: String { options.outputDir }

    /// Loads or builds the models, caches latents and prompt embeddings, and sets up the optimizer.
    /// - Parameter dataset: the captioned data (default: `options.dataset` by name or folder).
    public init(options: TextToImageTrainingOptions, dataset given: Dataset? = nil, group: any DataParallelGroup = DataParallel.current,
                message: ((String) -> Void)? = nil) throws {
        try options.validate()
        let say: (String) -> Void = message ?? { text in
            print(text)
            fflush(stdout)
        }
        self.options = options
        self.group = group
        self.message = say
        let pipeline = try TextToImageSetup.pipeline(options, message: say)
        self.pipeline = pipeline
        var noiseConfiguration = pipeline.scheduler.configuration
        noiseConfiguration.className = SchedulerKind.ddpm.rawValue
        // Another scheduler's configuration may hold `variance_type: null` (DPM-Solver's); training only adds
        // noise, and diffusers' DDPMScheduler takes its default then, as here.
        if noiseConfiguration["variance_type"] == .null { noiseConfiguration.removeValue(forKey: "variance_type") }
        let noiseScheduler = try DDPMScheduler(configuration: noiseConfiguration)
        self.noiseScheduler = noiseScheduler
        let predictionType = options.predictionType ?? noiseConfiguration.predictionType ?? .epsilon
        guard predictionType == .epsilon || predictionType == .vPrediction else {
            throw TrainingError.data("prediction type \(predictionType.rawValue): the scripts train epsilon or v_prediction")
        }
        self.predictionType = predictionType
        let resolution = TextToImageSetup.resolution(options, pipeline: pipeline)
        guard resolution % pipeline.vaeScaleFactor == 0 else {
            throw TrainingError.data("--resolution \(resolution) is not a multiple of the VAE's factor \(pipeline.vaeScaleFactor)")
        }
        self.resolution = resolution
        // diffusers' `unet.enable_gradient_checkpointing()`: blocks recomputed in the backward pass instead of kept.
        pipeline.unet.gradientCheckpointing = options.gradientCheckpointing

        // Frozen parts, trainable parts.
        pipeline.vae.freeze()
        pipeline.textEncoder.freeze()
        var adapterGenerator = RandomGenerator(seed: options.seed &+ 0x10AA)
        let unetAdapters: [(path: String, adapter: LoRAAdapter)]
        let textEncoderAdapters: [(path: String, adapter: LoRAAdapter)]
        let trainable: [Tensor]
        if let rank = options.loraRank {
            pipeline.unet.freeze()
            let alpha = Float(options.loraAlpha ?? Double(rank))
            unetAdapters = TextToImageLoRA.attach(to: pipeline.unet, targets: TextToImageLoRA.unetTargets, rank: rank, alpha: alpha,
                                                  generator: &adapterGenerator)
            textEncoderAdapters = options.trainTextEncoderLoRA
                ? TextToImageLoRA.attach(to: pipeline.textEncoder, targets: TextToImageLoRA.textEncoderTargets, rank: rank, alpha: alpha,
                                         generator: &adapterGenerator)
                : []
            guard !unetAdapters.isEmpty else { throw TrainingError.data("the UNet has no to_q/to_k/to_v/to_out.0 projections to adapt") }
            trainable = (unetAdapters + textEncoderAdapters).flatMap { [$0.adapter.down, $0.adapter.up] }
        } else {
            pipeline.unet.unfreeze()
            unetAdapters = []
            textEncoderAdapters = []
            trainable = pipeline.unet.trainableParameters()
        }
        self.unetAdapters = unetAdapters
        self.textEncoderAdapters = textEncoderAdapters
        trainableParameters = trainable
        gradientAverage = StepGradientAverage(group: group, parameters: trainable)

        // Data, encoded once.
        let dataset = try given ?? TextToImageSetup.dataset(options)
        guard dataset.count > 0 else { throw TrainingError.data("the dataset \(options.dataset) is empty") }
        self.dataset = dataset
        let channels = pipeline.vae.configuration.inChannels
        // Leaves an image already at [channels, resolution, resolution] as it is; a mixture's parts may differ
        // (captioned MNIST comes at 32×32, captioned tinted Fashion-MNIST at 28×28).
        let transform = ImageTransforms.standard(size: resolution, channels: channels)
        let started = ProgressBar.monotonicSeconds()
        let encoded = try TextToImageLatentCache.encode(dataset, vae: pipeline.vae, transform: transform, flips: options.randomFlip)
        latentCache = encoded.cache
        let captions = try encoded.captions.enumerated().map { index, caption in
            guard let caption else {
                throw TrainingError.data("\(dataset.source(of: index)) has no caption (an image folder needs a metadata.jsonl with \"text\")")
            }
            return caption
        }
        self.captions = captions
        let promptCache = options.trainTextEncoderLoRA ? nil : try TextToImagePromptCache(captions: captions, pipeline: pipeline)
        self.promptCache = promptCache
        say(String(format: "cached the VAE posteriors of %d images%@ and the embeddings of %d distinct captions in %.1f s",
                   dataset.count, options.randomFlip ? " (and their mirror images)" : "", promptCache?.rows.count ?? 0,
                   ProgressBar.monotonicSeconds() - started))
        // The encoding's buffers are of sizes training never asks for; cached, they held the pool's room above
        // its high-water mark, so each training step's misses evicted the step's own largest blocks (the
        // mixed digit LoRA after caching 120,000 images: 8 misses and 45 MB of fresh pages every step).
        BufferPool.shared.drain()

        let loader = DataLoader(dataset: TextToImageIndexDataset(captions: captions), batchSize: options.trainBatchSize, shuffle: true,
                                seed: options.seed, dropLast: false, prefetchBatches: 0,
                                shard: DataLoaderShard(rank: group.rank, count: group.size))
        self.loader = loader
        let accumulation = options.gradientAccumulationSteps
        let stepsPerEpoch = (loader.batchesPerEpoch + accumulation - 1) / accumulation
        let totalSteps = options.maxTrainSteps ?? options.numTrainEpochs * stepsPerEpoch
        self.stepsPerEpoch = stepsPerEpoch
        self.totalSteps = totalSteps
        epochs = (totalSteps + stepsPerEpoch - 1) / stepsPerEpoch
        let learningRate = options.scaleLearningRate
            ? options.learningRate * Double(accumulation * options.trainBatchSize * group.size) : options.learningRate
        self.learningRate = learningRate
        optimizer = Adam.adamW(parameters: trainable, learningRate: Float(learningRate), beta1: Float(options.adamBeta1),
                               beta2: Float(options.adamBeta2), epsilon: Float(options.adamEpsilon), weightDecay: Float(options.adamWeightDecay))
        schedule = LearningRateSchedule(options.lrScheduler, warmupSteps: options.lrWarmupSteps * group.size,
                                        trainingSteps: totalSteps * group.size)
        ema = options.useEMA ? ExponentialMovingAverage(parameters: pipeline.unet.parameters(), maximumDecay: options.emaDecay) : nil
        generator = RandomGenerator(seed: options.seed &+ 0x7E47_7015)
        try group.broadcast(trainable, from: 0)
        group.shardDropout(in: [pipeline.unet, pipeline.textEncoder])
        pipeline.unet.train()
    }

    /// Trains until `totalSteps` or a signal (after which a checkpoint is written); saves the
    /// pipeline (or the LoRA file) and a last validation grid.
    public func run() throws -> TrainingSummary {
        let start = Date()
        try prepareOutputFolder()
        // Rank 0 alone writes the logs (the others' messages are their own).
        let log = group.isWriter ? try TrainingLog(outputDir: outputDir, progressOutput: progressOutput, message: message) : nil
        self.log = log
        defer { log?.finish(); self.log = nil; loader.stop() }
        if handleSignals { interruption.install() }
        defer { if handleSignals { interruption.uninstall() } }
        let precision = MixedPrecisionScope(options.mixedPrecision)
        defer { precision.end() }
        if let log { describeRun(log) }
        log?.startProgress(total: totalSteps, step: step)

        var lastLoss: Float?
        var interrupted = false
        let accumulation = options.gradientAccumulationSteps
        training: while step < totalSteps {
            let epoch = loader.position.epoch
            var microBatches = 0, images = 0
            var summedLoss: Float = 0
            var stepStart = ProgressBar.monotonicSeconds()
            unet.train()
            while step < totalSteps {
                guard let batch = try loader.nextBatch() else { break }
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
        }
        var outputs: [String] = []
        if !interrupted {
            if lastValidationStep != step && !options.validationPrompts.isEmpty { try saveValidationGrid() }
            outputs.append(try saveResult())
        }
        if lastCheckpoint?.step != step && step > 0 { try saveCheckpoint() }
        return TrainingSummary(
            step: step, totalSteps: totalSteps, interrupted: interrupted, finalLoss: lastLoss, outputDir: outputDir,
            pipelinePath: outputs.first, lastCheckpoint: lastCheckpoint?.path, sampleImages: sampleImages,
            logDirectory: log?.directory ?? (outputDir as NSString).appendingPathComponent("logs"), seconds: Date().timeIntervalSince(start))
    }

    // MARK: One step

    /// Forward and backward of one micro-batch of the loader; returns its (unscaled) loss. On the
    /// last micro-batch of an accumulation (`isLast`) the group may start averaging the gradients
    /// during the backward pass (``StepGradientAverage``); `optimizerStep` finishes it.
    ///
    /// Every random draw (flips, caption dropout, posterior samples, noise, noise offset,
    /// timesteps) is made for the whole global batch and this rank's rows are kept
    /// (``DataParallelShard``): one process with the global batch draws the same numbers for
    /// the same examples, in the same order.
    func microStep(_ batch: Batch, scale: Float, isLast: Bool = false) throws -> Float {
        let indices = batch.indices
        let shard = group.shard(localCount: indices.count)
        let flipped = options.randomFlip ? shard.draw { generator.uniform() < 0.5 } : Array(repeating: false, count: indices.count)
        let prompts = drawPrompts(indices)
        let latents = sampleLatents(indices, flipped: flipped)
        var noise = shard.randn(Array(latents.shape.dropFirst()), generator: &generator)
        if options.noiseOffset != 0 {
            let offset = shard.randn([latents.shape[1], 1, 1], generator: &generator)
            noise = noGrad { noise + offset * Float(options.noiseOffset) }
        }
        let timesteps = shard.draw { Float(generator.integer(below: noiseScheduler.trainTimesteps)) }
        let context = try encoderHiddenStates(prompts)
        let loss = self.loss(latents: latents, noise: noise, timesteps: timesteps, encoderHiddenStates: context)
        let value = loss.item
        // With several ranks the averaged loss is checked in `optimizerStep`, on every rank alike.
        guard value.isFinite || group.isDistributed else { throw nonFinite(value) }
        try gradientAverage.backward(scale == 1 ? loss : loss * scale, isLast: isLast)
        return value
    }

    /// The captions of examples `indices` (this rank's rows of a global batch), each replaced by the
    /// empty prompt with probability `caption_dropout` (a draw of the trainer's generator per
    /// example of the global batch when it is above 0; this rank's rows kept).
    public func drawPrompts(_ indices: [Int]) -> [String] {
        let dropout = Float(options.captionDropout)
        guard dropout > 0 else { return indices.map { captions[$0] } }
        let dropped = group.shard(localCount: indices.count).draw { generator.uniform() < dropout }
        return zip(indices, dropped).map { index, drop in drop ? "" : captions[index] }
    }

    /// The scaled latents of examples `indices` (this rank's rows of a global batch): their cached
    /// posterior sampled with the trainer's generator (the global batch's noise, this rank's rows),
    /// or its mean without `sampleLatents`, times the VAE's `scaling_factor`.
    public func sampleLatents(_ indices: [Int], flipped: [Bool]) -> Tensor {
        let posterior = latentCache.posterior(indices, flipped: flipped)
        let scaling = Float(pipeline.vae.configuration.scalingFactor)
        guard options.sampleLatents else { return noGrad { posterior.mean * scaling } }
        let noise = group.shard(localCount: indices.count).randn(Array(posterior.mean.shape.dropFirst()), generator: &generator)
        return latents(posterior, noise: noise)
    }

    /// `(mean + std · noise) · scaling_factor`.
    public func latents(_ posterior: (mean: Tensor, standardDeviation: Tensor), noise: Tensor) -> Tensor {
        noGrad { (posterior.mean + posterior.standardDeviation * noise) * Float(pipeline.vae.configuration.scalingFactor) }
    }

    /// The prompt embeddings of `prompts`: cached, or through the adapted text encoder (with its graph).
    public func encoderHiddenStates(_ prompts: [String]) throws -> Tensor {
        if let promptCache { return try promptCache.embeddings(for: prompts) }
        let ids = try pipeline.tokenizer.tokenize(prompts, padding: .maximumLength, truncation: true, maximumLength: pipeline.promptLength).ids
        return pipeline.textEncoder(ids: ids.flatMap { $0 }, batch: ids.count).lastHiddenState
    }

    /// The training loss of one micro-batch (a graph for `backward()`): `add_noise`, the UNet, and
    /// the MSE to the noise (or velocity), Min-SNR weighted with `snr_gamma` as diffusers' `compute_snr`.
    public func loss(latents: Tensor, noise: Tensor, timesteps: [Float], encoderHiddenStates: Tensor) -> Tensor {
        let noisy = noGrad { noiseScheduler.addNoise(latents, noise: noise, timesteps: timesteps) }
        let prediction = unet(noisy, timesteps: timesteps, encoderHiddenStates: encoderHiddenStates)
        let target = predictionType == .vPrediction ? noGrad { noiseScheduler.velocity(latents, noise: noise, timesteps: timesteps) } : noise
        guard let gamma = options.snrGamma else { return Tensor.mseLoss(prediction, target) }
        let cumulative = noiseScheduler.noiseSchedule.alphasCumprod
        let weights: [Float] = timesteps.map { timestep in
            let alpha = Double(cumulative[Int(timestep)])
            let snr = alpha / Swift.max(1 - alpha, 1e-12)
            return Float(predictionType == .vPrediction ? Swift.min(snr, gamma) / (snr + 1) : Swift.min(snr, gamma) / snr)
        }
        let perExample = (prediction - target).square().mean(axes: Array(1..<prediction.rank))
        return (perExample * Tensor(weights)).mean()
    }

    /// After the last micro-batch's backward: averages gradients over processes, clips them, steps
    /// AdamW at the schedule's learning rate and the EMA. Returns the gradient norm and learning rate.
    @discardableResult
    public func applyGradients() throws -> (gradientNorm: Float, learningRate: Float) {
        try gradientAverage.finish()
        return try applyAveragedGradients()
    }

    /// ``applyGradients()`` after the gradients were averaged.
    func applyAveragedGradients() throws -> (gradientNorm: Float, learningRate: Float) {
        let maximumNorm = options.maxGradNorm > 0 ? Float(options.maxGradNorm) : .infinity
        let norm = clipGradientNorm(trainableParameters, maximumNorm: maximumNorm)
        guard norm.isFinite else { throw nonFinite(norm) }
        let rate = schedule.learningRate(step: step * group.size, baseLearningRate: Float(learningRate))
        optimizer.learningRate = rate
        optimizer.step()
        optimizer.zeroGradients()
        ema?.step(unet.parameters())
        step += 1
        return (norm, rate)
    }

    /// Steps, logs, checkpoints, validates; returns true when a signal asks to stop.
    func optimizerStep(loss: Float, epoch: Int, images: Int, started: Double) throws -> Bool {
        // First the gradients (also an epoch's last, partial accumulation's): no other collective
        // call between the buckets started during the backward pass and their wait.
        try gradientAverage.finish()
        // The mean of the ranks' losses (checked before the step, so that every rank stops alike) and
        // whether any rank was asked to stop (Ctrl-C, SIGTERM), so that all stop after the same step.
        let numbers = try group.average([loss, interruption.isRequested ? 1 : 0])
        let averaged = numbers[0]
        let stopRequested = numbers[1] > 0
        guard averaged.isFinite else { throw nonFinite(averaged) }
        let (norm, rate) = try applyAveragedGradients()
        let seconds = Swift.max(ProgressBar.monotonicSeconds() - started, 1e-9)
        if group.isWriter {
            try log?.record(.init(step: step, epoch: epoch, loss: averaged, learningRate: rate, gradientNorm: norm,
                                  imagesPerSecond: Double(images * group.size) / seconds), epochs: epochs)
        }
        if options.checkpointingSteps > 0 && step % options.checkpointingSteps == 0 { try saveCheckpoint() }
        if options.validationSteps > 0 && step % options.validationSteps == 0 && !options.validationPrompts.isEmpty && step < totalSteps {
            try saveValidationGrid()
        }
        onStep?(step)
        // One process also stops for a request made during `onStep`; ranks only for one every rank knows of.
        if group.isDistributed ? stopRequested : interruption.isRequested {
            if lastCheckpoint?.step != step { try saveCheckpoint() }
            log?.event("interrupted", step: step, text: "interrupted at step \(step); resume with --resume-from-checkpoint latest (checkpoint \(lastCheckpoint?.path ?? "?"))")
            return true
        }
        return false
    }

    func nonFinite(_ value: Float) -> TrainingError {
        optimizer.zeroGradients()
        let error = TrainingError.nonFiniteLoss(step: step + 1, value: value, lastCheckpoint: lastCheckpoint?.path ?? TrainingCheckpoint.list(in: outputDir).last?.path)
        log?.event("stopped", step: step + 1, fields: [("reason", .string("non-finite loss")), ("value", .float(value))], text: "error: \(error)")
        return error
    }

    private func describeRun(_ log: TrainingLog) {
        let trainable = trainableParameters.reduce(0) { $0 + $1.count }
        let what = options.isLoRA
            ? "LoRA rank \(options.loraRank!) alpha \(options.loraAlpha ?? Double(options.loraRank!)) on \(unetAdapters.count) UNet"
                + (textEncoderAdapters.isEmpty ? "" : " and \(textEncoderAdapters.count) text-encoder") + " projections, \(trainable) parameters"
            : "the whole UNet, \(trainable) parameters"
        log.say("training: \(what); \(options.from.map { "from \($0)" } ?? "from scratch"), VAE and text encoder frozen")
        log.say("data: \(options.dataset), \(dataset.count) images at \(resolution)×\(resolution), \(loader.batchesPerEpoch) batches of \(options.trainBatchSize) per epoch"
                + (options.gradientAccumulationSteps > 1 ? ", \(options.gradientAccumulationSteps) per optimizer step" : "")
                + (group.isDistributed ? " on each of \(group.size) processes" : ""))
        log.say("objective: \(predictionType.rawValue)" + (options.snrGamma.map { ", Min-SNR γ \($0)" } ?? "")
                + (options.noiseOffset != 0 ? ", noise offset \(options.noiseOffset)" : "")
                + (options.captionDropout > 0 ? ", caption dropout \(options.captionDropout)" : "")
                + "; \(totalSteps) steps over \(epochs) epoch(s), lr \(learningRate) (\(options.lrScheduler.rawValue))"
                + (ema != nil ? ", EMA" : "") + (options.mixedPrecision != .no ? ", \(options.mixedPrecision.rawValue) saved activations" : "")
                + (step > 0 ? ", resuming at step \(step)" : ""))
        log.say("output: \(outputDir) (logs in \(log.directory))")
    }
}
