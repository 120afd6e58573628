import Foundation
import NN
import Tensors

/// Trains a ``CLIPModel`` from scratch on captioned images with CLIP's
/// contrastive objective: for a batch of B image–caption pairs, the B×B
/// cosine similarities times exp(`logit_scale`) are the logits, and the loss
/// is the mean of the image→text and text→image cross-entropies with the
/// matching pairs on the diagonal. The temperature is learned (initially
/// 1/0.07) and clamped to at most 100 after every step; AdamW (decay on the
/// matrices only, see ``GroupedAdamW``) with a linear warm-up and a cosine decay.
///
/// Checkpoints (`checkpoint-<step>/`) hold the model, both optimizer groups,
/// the data position and the options; a run resumed from one computes the same
/// losses as one never stopped. Ctrl-C writes a checkpoint and stops. At the
/// end the output folder holds a transformers `CLIPModel` (config.json,
/// model.safetensors), the tokenizer's files and `preprocessor_config.json`.
///
/// Data-parallel under `mpirun` (``group``): `batchSize` pairs per rank, gradients averaged
/// before clipping, rank 0 alone writes. The ranks gather their features, so every rank's
/// contrastive loss has the whole global batch's pairs as negatives and N ranks train like one
/// process with N × `batchSize` pairs, up to the order of floating-point sums
/// (`CLIPTrainerDataParallel.swift`). The model has no dropout, so no random draw is made per pair.
public final class CLIPTrainer {
    public let options: CLIPTrainingOptions
    public let model: CLIPModel
    public let tokenizer: CaptionTokenizing
    public let dataset: Dataset
    /// Batches of `batchSize` pairs, shuffled with the seed, the last partial batch dropped.
    public let loader: DataLoader
    public let optimizer: GroupedAdamW
    public let schedule: LearningRateSchedule
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
    /// The processes of a data-parallel run (`DataParallel.current` unless given).
    public let group: any DataParallelGroup

    /// One step's numbers.
    public struct StepResult: Equatable, Sendable {
        public var step: Int
        public var loss: Float
        /// Fraction of the batch's images whose own caption scores highest.
        public var accuracy: Float
        /// exp(`logit_scale`) after the step's clamp.
        public var temperatureScale: Float
        public var gradientNorm: Float
        public var learningRate: Float
    }

    /// The gradient average of each step (with an overlapping group, started during the backward
    /// passes through the towers; see `distributedBackward`). Its parameters are the optimizer's,
    /// ordered text tower, image tower, the rest (the temperature): the buckets start in reverse
    /// order, so the temperature's and the image tower's can travel during the text tower's pass.
    public let gradientAverage: StepGradientAverage
    var generator: RandomGenerator
    var log: TrainingLog?
    var lastCheckpoint: (step: Int, path: String)?

    /// Builds the model (initialised as transformers does), the loader and the optimizer.
    /// - Parameter dataset: the captioned data (default: `options.dataset` by name or folder).
    public init(options: CLIPTrainingOptions, tokenizer: CaptionTokenizing, dataset given: Dataset? = nil,
                group: (any DataParallelGroup)? = nil) throws {
        try options.validate()
        self.group = group ?? DataParallel.current
        self.options = options
        self.tokenizer = tokenizer
        let dataset = try given ?? CLIPTraining.openDataset(options, training: true)
        guard dataset.count > 0 else { throw TrainingError.data("the dataset \(options.dataset) is empty") }
        self.dataset = dataset
        let configuration = options.model.configuration(tokenizer: tokenizer, imageSize: options.imageSize, patchSize: options.patchSize)
        try configuration.text.validate()
        try configuration.vision.validate()
        model = CLIPModel(configuration)
        model.initializeWeights(seed: options.seed)
        model.train()
        loader = DataLoader(dataset: dataset, batchSize: options.batchSize, shuffle: true, seed: options.seed, dropLast: true,
                            transform: CLIPImageNormalization.transform(size: options.imageSize), prefetchBatches: options.prefetchBatches,
                            shard: DataLoaderShard(rank: self.group.rank, count: self.group.size))
        guard loader.batchesPerEpoch > 0 else {
            throw TrainingError.data("the dataset has \(dataset.count) examples, fewer than one batch of \(options.batchSize)")
        }
        optimizer = GroupedAdamW(module: model, learningRate: Float(options.learningRate), beta1: Float(options.adamBeta1),
                                 beta2: Float(options.adamBeta2), epsilon: Float(options.adamEpsilon), weightDecay: Float(options.weightDecay))
        schedule = LearningRateSchedule(.cosine, warmupSteps: options.resolvedWarmupSteps, trainingSteps: options.steps)
        let towers = [model.textModel.parameters() + model.textProjection.parameters(),
                      model.visionModel.parameters() + model.visualProjection.parameters()]
            .map { Set($0.map(ObjectIdentifier.init)) }
        func tower(_ parameter: Tensor) -> Int { towers.firstIndex { $0.contains(ObjectIdentifier(parameter)) } ?? towers.count }
        let averaged = optimizer.parameters.enumerated()
            .sorted { (tower($0.element), $0.offset) < (tower($1.element), $1.offset) }.map(\.element)
        gradientAverage = StepGradientAverage(group: self.group, parameters: averaged)
        generator = RandomGenerator(seed: options.seed &+ 0xC11F_7EA1)
    }

    public var outputDir: String { options.outputDir }
    /// Epochs the run covers (the last one possibly partial).
    public var epochs: Int { (options.steps + loader.batchesPerEpoch - 1) / loader.batchesPerEpoch }

    /// Trains until `options.steps` or a signal; saves the model folder when the steps are done.
    public func run() throws -> CLIPTrainingSummary {
        let start = Date()
        try group.writerOnly { try prepareOutputFolder() }
        if !group.isWriter, let resume = options.resumeFromCheckpoint, let path = try TrainingCheckpoint.resolve(resume, outputDir: outputDir) {
            try restore(from: path)
        }
        try group.broadcast(model.parameters(), from: 0)
        group.shardDropout(in: [model])
        let log = group.isWriter ? try TrainingLog(outputDir: outputDir, progressOutput: progressOutput, message: message) : nil
        self.log = log
        defer { log?.finish(); self.log = nil; loader.stop() }
        if handleSignals { interruption.install() }
        defer { if handleSignals { interruption.uninstall() } }
        if let log { describeRun(log) }
        let startStep = step
        log?.startProgress(total: options.steps, step: step)
        var lastLoss: Float?
        var interrupted = false
        var trainingSeconds = 0.0
        let loopStart = ProgressBar.monotonicSeconds()
        while step < options.steps {
            let stepStart = ProgressBar.monotonicSeconds()
            guard let batch = try loader.nextBatch() ?? loader.nextBatch() else {
                throw TrainingError.data("the data loader gave no batch at step \(step + 1)")
            }
            let result = try trainingStep(batch)
            lastLoss = result.loss
            let seconds = Swift.max(ProgressBar.monotonicSeconds() - stepStart, 1e-9)
            try log?.record(.init(step: step, epoch: batch.epoch, loss: result.loss, learningRate: result.learningRate,
                                  gradientNorm: result.gradientNorm, imagesPerSecond: Double(batch.count * group.size) / seconds), epochs: epochs)
            try log?.tensorBoard?.addScalars([("train/accuracy", result.accuracy), ("train/logit_scale_exp", result.temperatureScale)], step: step)
            if step % options.logEvery == 0 || step == options.steps {
                log?.event("metrics", step: step, fields: [("loss", .float(result.loss)), ("batch_accuracy", .float(result.accuracy)),
                                                         ("logit_scale_exp", .float(result.temperatureScale))],
                          text: String(format: "step %d/%d  loss %.4f  batch accuracy %.1f%%  exp(logit_scale) %.1f  lr %.2e",
                                       step, options.steps, result.loss, result.accuracy * 100, result.temperatureScale, result.learningRate))
            }
            if options.checkpointingSteps > 0 && step % options.checkpointingSteps == 0 && step < options.steps { try checkpoint() }
            onStep?(result)
            if try group.anyRank(interruption.isRequested) {
                if lastCheckpoint?.step != step { try checkpoint() }
                log?.event("interrupted", step: step, text: "interrupted at step \(step); resume with --resume latest (checkpoint \(lastCheckpoint?.path ?? "?"))")
                interrupted = true
                break
            }
        }
        trainingSeconds = ProgressBar.monotonicSeconds() - loopStart
        if !interrupted {
            if lastCheckpoint?.step != step && step > startStep { try checkpoint() }
            try group.writerOnly { try saveModelFolder() }
            log?.event("model", step: step, fields: [("path", .string(outputDir))], text: "CLIPModel and tokenizer saved in \(outputDir)")
        }
        return CLIPTrainingSummary(step: step, totalSteps: options.steps, interrupted: interrupted, finalLoss: lastLoss,
                                   outputDir: outputDir, lastCheckpoint: lastCheckpoint?.path,
                                   logDirectory: log?.directory ?? (outputDir as NSString).appendingPathComponent("logs"),
                                   trainingSeconds: trainingSeconds, stepsThisRun: step - startStep,
                                   seconds: Date().timeIntervalSince(start))
    }

    /// The symmetric contrastive loss of one batch (a graph, for `backward()`) and the batch accuracy.
    public func loss(images: Tensor, captions: [String]) -> (loss: Tensor, accuracy: Float) {
        let tokens = tokenizer.encode(captions)
        let textFeatures = model.textFeatures(ids: tokens.ids, batch: tokens.count, attentionMask: tokens.attentionMask)
        let imageFeatures = model.imageFeatures(images)
        let logits = model.logitsPerImage(imageFeatures: imageFeatures, textFeatures: textFeatures)
        let loss = CLIPModel.contrastiveLoss(logitsPerImage: logits)
        let predicted = noGrad { logits.detach().argmax(axis: 1).toArray() }
        let correct = predicted.enumerated().filter { Int($0.element) == $0.offset }.count
        return (loss, Float(correct) / Float(Swift.max(1, captions.count)))
    }

    /// Forward, backward, clipping, one AdamW step and the temperature clamp.
    func trainingStep(_ batch: Batch) throws -> StepResult {
        var captions: [String] = []
        for (position, caption) in batch.captions.enumerated() {
            guard let caption else {
                throw TrainingError.data("\(dataset.source(of: batch.indices[position])) has no caption (an image folder needs a metadata.jsonl with \"text\")")
            }
            captions.append(caption)
        }
        var value: Float, batchAccuracy: Float
        if group.isDistributed {
            (value, batchAccuracy) = try distributedBackward(images: batch.images, captions: captions)
        } else {
            let (loss, accuracy) = loss(images: batch.images, captions: captions)
            (value, batchAccuracy) = (loss.item, accuracy)
            guard value.isFinite else { throw nonFinite(value) }
            try gradientAverage.backward(loss, isLast: true)
        }
        try gradientAverage.finish()
        if group.isDistributed {
            let averaged = try group.average([value, batchAccuracy])
            (value, batchAccuracy) = (averaged[0], averaged[1])
            guard value.isFinite else { throw nonFinite(value) }
        }
        let maximumNorm = options.maxGradNorm.flatMap { $0 > 0 ? Float($0) : nil } ?? .infinity
        let norm = clipGradientNorm(optimizer.parameters, maximumNorm: maximumNorm)
        guard norm.isFinite else { throw nonFinite(norm) }
        let learningRate = schedule.learningRate(step: step, baseLearningRate: Float(options.learningRate))
        optimizer.learningRate = learningRate
        optimizer.step()
        optimizer.zeroGradients()
        clampTemperature()
        step += 1
        return StepResult(step: step, loss: value, accuracy: batchAccuracy, temperatureScale: noGrad { model.logitScale.exp().item },
                          gradientNorm: norm, learningRate: learningRate)
    }

    /// ``saveCheckpoint()`` on rank 0 while the others wait; every rank then knows the checkpoint.
    func checkpoint() throws {
        try group.writerOnly { try saveCheckpoint() }
        if !group.isWriter {
            lastCheckpoint = (step, (outputDir as NSString).appendingPathComponent(TrainingCheckpoint.prefix + "\(step)"))
        }
    }

    /// `logit_scale` ← min(`logit_scale`, ln `maximumLogitScale`), in place (open_clip's clamp after the step).
    public func clampTemperature() {
        let ceiling = Float(Foundation.log(options.maximumLogitScale))
        noGrad {
            if model.logitScale.item > ceiling { model.logitScale.copyValues(from: Tensor.full(ceiling, model.logitScale.shape)) }
        }
    }

    private func nonFinite(_ value: Float) -> TrainingError {
        optimizer.zeroGradients()
        let error = TrainingError.nonFiniteLoss(step: step + 1, value: value, lastCheckpoint: lastCheckpoint?.path ?? TrainingCheckpoint.list(in: outputDir).last?.path)
        log?.event("stopped", step: step + 1, fields: [("reason", .string("non-finite loss")), ("value", .float(value))], text: "error: \(error)")
        return error
    }

    private func describeRun(_ log: TrainingLog) {
        let configuration = model.configuration
        log.say("model: CLIPModel (\(options.model.rawValue)), \(model.parameterCount) parameters; text \(configuration.text.hiddenLayerCount)×\(configuration.text.hiddenSize), "
                + "vision \(configuration.vision.hiddenLayerCount)×\(configuration.vision.hiddenSize) on \(configuration.vision.imageSize)×\(configuration.vision.imageSize) "
                + "in \(configuration.vision.patchSize)×\(configuration.vision.patchSize) patches, projection \(configuration.projectionDimension)")
        log.say("data: \(options.dataset), \(dataset.count) captioned images, \(loader.batchesPerEpoch) batches of \(options.batchSize) per epoch")
        log.say("training: \(options.steps) steps (\(epochs) epoch(s)), lr \(options.learningRate) (cosine, warm-up \(options.resolvedWarmupSteps)), "
                + "weight decay \(options.weightDecay) on \(optimizer.decayed.count) matrices, none on \(optimizer.undecayed.count) gains/biases/class token/temperature"
                + (step > 0 ? ", resuming at step \(step)" : ""))
        log.say("output: \(outputDir) (logs in \(log.directory))")
    }
}

/// What a finished (or interrupted) CLIP training run produced.
public struct CLIPTrainingSummary: Sendable {
    /// Optimizer steps done, and planned.
    public let step: Int, totalSteps: Int
    public let interrupted: Bool
    public let finalLoss: Float?
    /// The model folder (when the run finished) and the newest checkpoint.
    public let outputDir: String
    public let lastCheckpoint: String?
    public let logDirectory: String
    /// Seconds in the training loop (this run), the steps it took, and the whole of `run()`.
    public let trainingSeconds: Double
    public let stepsThisRun: Int
    public let seconds: Double
}
