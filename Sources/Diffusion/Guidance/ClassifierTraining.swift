import Foundation
import NN
import Tensors

/// `diffuse train-classifier`: trains a ``NoiseAwareClassifier`` on a labelled
/// dataset. Noise-aware (the default): every image is noised to a random
/// training timestep with the diffusion model's noise schedule,
/// x_t = √ᾱₜ·x0 + √(1−ᾱₜ)·ε, and the classifier learns p(y | x_t, t), as
/// classifier guidance needs. Clean (`clean`): timestep 0 and no noise, a
/// plain image classifier (the benchmark's independent judge).
public enum ClassifierTraining {
    /// What to train.
    public struct Options: Sendable {
        /// A named dataset or a labelled image folder.
        public var dataset = "fashion-mnist"
        /// Use only the first N training images.
        public var datasetLimit: Int?
        /// Where `config.json` and `model.safetensors` go.
        public var outputDir = "output/classifier"
        /// A diffusers pipeline folder whose scheduler's noise schedule (and
        /// UNet's image size and channels) the classifier adopts (nil: DDPM's linear schedule).
        public var pipeline: String?
        /// The noise schedule's `beta_schedule` when no pipeline gives it (nil: linear).
        public var betaSchedule: String?
        /// Train on clean images only (timestep 0), for judging samples.
        public var clean = false
        /// Square image side (nil: the pipeline's sample size, else 28).
        public var imageSize: Int?
        /// `block_out_channels` of the down blocks.
        public var blockOutChannels = [32, 64, 64]
        /// Resnets per block.
        public var layersPerBlock = 1
        /// Group-norm groups.
        public var normGroupCount = 8
        /// Images per optimizer step.
        public var batchSize = 64
        /// Optimizer steps.
        public var steps = 1000
        /// Peak AdamW learning rate (cosine schedule with a short warm-up).
        public var learningRate = 1e-3
        /// AdamW decoupled weight decay.
        public var weightDecay = 0.01
        /// Seed of initialisation, data order, timesteps and noise.
        public var seed: UInt64 = 0
        /// Print the running loss and accuracy every this many steps.
        public var logEvery = 50
        /// Test images to measure the accuracy on at the end (named datasets; 0: none).
        public var evaluationCount = 1000

        public init() {}
    }

    /// What a run produced.
    public struct Outcome: Sendable {
        /// Where the classifier folder was written.
        public let outputDir: String
        /// Optimizer steps taken.
        public let steps: Int
        /// Wall-clock seconds of the whole run.
        public let seconds: Double
        /// The loss of the last step.
        public let finalLoss: Float
        /// Test-split accuracy by timestep (`[(0, 0.91), (250, 0.88), …]`); empty without a test split.
        public let accuracy: [(timestep: Int, accuracy: Double)]

        /// What to tell a person.
        public var reportLines: [String] {
            var lines = [String(format: "trained %d steps in %.0f s, last loss %.4f", steps, seconds, finalLoss)]
            if !accuracy.isEmpty {
                lines.append("test accuracy: " + accuracy.map { String(format: "t=%d %.1f%%", $0.timestep, $0.accuracy * 100) }.joined(separator: ", "))
            }
            lines.append("classifier:  \(outputDir) (config.json, \(NoiseAwareClassifier.weightsName))")
            return lines
        }
    }

    /// Trains and saves the classifier. `log` receives the periodic loss lines.
    ///
    /// Data-parallel under `mpirun` (`group`, default `DataParallel.current`): `batchSize` per
    /// rank, the timesteps and noise of the global batch drawn on every rank and sliced,
    /// gradients averaged before clipping, rank 0 alone saves and evaluates.
    public static func run(_ options: Options, log: ((String) -> Void)? = nil, group given: (any DataParallelGroup)? = nil) throws -> Outcome {
        let start = Date()
        let group = given ?? DataParallel.current
        let dataset = try Datasets.open(options.dataset, training: true, limit: options.datasetLimit)
        guard dataset.classNames.count >= 2 else {
            throw GuidanceError("a classifier needs a labelled dataset (a named dataset, or an image folder with one sub-folder per class); "
                                + "\(options.dataset) has \(dataset.classNames.count) classes")
        }
        var configuration = NoiseAwareClassifierConfiguration()
        configuration.classNames = dataset.classNames
        configuration.blockOutChannels = options.blockOutChannels
        configuration.layersPerBlock = options.layersPerBlock
        configuration.normGroupCount = options.normGroupCount
        configuration.noiseAware = !options.clean
        configuration.inChannels = try dataset.example(at: 0).image.shape[0]
        configuration.sampleSize = options.imageSize ?? 28
        var noiseConfiguration = SchedulerConfiguration()
        if let betaSchedule = options.betaSchedule { try noiseConfiguration.set("beta_schedule", .string(betaSchedule)) }
        if let folder = options.pipeline {
            if options.betaSchedule != nil { throw GuidanceError("give --pipeline or --beta-schedule, not both (the pipeline's scheduler sets the noise)") }
            let pipeline = try DDPMPipeline.load(folder: URL(fileURLWithPath: folder))
            noiseConfiguration = pipeline.scheduler.configuration
            configuration.inChannels = pipeline.unet.configuration.inChannels
            if options.imageSize == nil, case .square(let side)? = pipeline.unet.configuration.sampleSize { configuration.sampleSize = side }
        }
        configuration.adoptNoiseSchedule(of: noiseConfiguration)
        var schedulerConfiguration = try configuration.schedulerConfiguration
        schedulerConfiguration.className = DDPMScheduler.className
        let noiseScheduler = try DDPMScheduler(configuration: schedulerConfiguration)

        Initialization.seed(options.seed)
        let model = try NoiseAwareClassifier(configuration: configuration)
        model.train()
        let transform = ImageTransforms.standard(size: configuration.sampleSize, channels: configuration.inChannels)
        let loader = DataLoader(dataset: dataset, batchSize: options.batchSize, shuffle: true, seed: options.seed, dropLast: true,
                                transform: transform, shard: DataLoaderShard(rank: group.rank, count: group.size))
        try group.broadcast(model.parameters(), from: 0)
        group.shardDropout(in: [model])
        guard loader.batchesPerEpoch > 0 else {
            throw GuidanceError("the dataset has \(dataset.count) examples, fewer than one batch of \(options.batchSize)")
        }
        let optimizer = Adam.adamW(parameters: model.trainableParameters(), learningRate: Float(options.learningRate),
                                   weightDecay: Float(options.weightDecay))
        let schedule = LearningRateSchedule(.cosine, warmupSteps: Swift.min(50, options.steps / 10), trainingSteps: options.steps)
        var generator = RandomGenerator(seed: options.seed &+ 0xC1A5_51F1)
        // One micro-batch per step: its backward pass is the last, the average may start during it.
        let gradientAverage = StepGradientAverage(group: group, parameters: model.trainableParameters())
        var runningLoss = 0.0, runningCorrect = 0, runningCount = 0
        var lastLoss: Float = .nan
        for step in 0..<options.steps {
            guard let batch = try loader.nextBatch() ?? loader.nextBatch() else { break }
            guard let labels = batch.classLabels else { throw GuidanceError("a batch of \(options.dataset) has examples without labels") }
            let count = batch.count
            let shard = group.shard(localCount: count)
            let timesteps: [Float]
            let input: Tensor
            if options.clean {
                timesteps = [0]
                input = batch.images
            } else {
                timesteps = shard.slice(Tensor.randint(0, noiseScheduler.trainTimesteps, [shard.globalCount], generator: &generator).toArray())
                let noise = shard.randn(Array(batch.images.shape.dropFirst()), generator: &generator)
                input = noGrad { noiseScheduler.addNoise(batch.images, noise: noise, timesteps: timesteps) }
            }
            optimizer.learningRate = schedule.learningRate(step: step, baseLearningRate: Float(options.learningRate))
            let logits = model(input, timesteps: timesteps)
            let loss = Tensor.crossEntropy(logits: logits, targets: labels)
            try gradientAverage.backward(loss, isLast: true)
            try gradientAverage.finish()
            _ = clipGradientNorm(gradientAverage.parameters, maximumNorm: 1)
            optimizer.step()
            optimizer.zeroGradients()
            let predicted = noGrad { logits.detach().argmax(axis: 1).toArray() }
            let averaged = try group.average([loss.item, Float(zip(predicted, labels).filter { Int($0) == $1 }.count)])
            lastLoss = averaged[0]
            runningLoss += Double(lastLoss)
            runningCorrect += Int((averaged[1] * Float(group.size)).rounded())
            runningCount += count * group.size
            if (step + 1) % options.logEvery == 0 || step == options.steps - 1 {
                let batches = Double(runningCount) / Double(count * group.size)
                log?(String(format: "step %d/%d  loss %.4f  train accuracy %.1f%%  lr %.2e", step + 1, options.steps,
                            runningLoss / batches, Double(runningCorrect) / Double(runningCount) * 100, optimizer.learningRate))
                runningLoss = 0
                runningCorrect = 0
                runningCount = 0
            }
        }
        loader.stop()
        model.eval()
        let outputURL = URL(fileURLWithPath: options.outputDir)
        var accuracy: [(timestep: Int, accuracy: Double)] = []
        try group.writerOnly {
            try model.save(folder: outputURL)
            accuracy = try evaluate(model, options: options, noiseScheduler: noiseScheduler, transform: transform)
        }
        return Outcome(outputDir: options.outputDir, steps: options.steps, seconds: Date().timeIntervalSince(start),
                       finalLoss: lastLoss, accuracy: accuracy)
    }

    /// Accuracy on the first `evaluationCount` test images of a named dataset,
    /// at timesteps 0, 250, 500 and 750 (0 only for a clean classifier).
    static func evaluate(_ model: NoiseAwareClassifier, options: Options, noiseScheduler: DDPMScheduler,
                         transform: ImageTransform) throws -> [(timestep: Int, accuracy: Double)] {
        guard options.evaluationCount > 0, Datasets.names.contains(options.dataset.lowercased()) else { return [] }
        let test = try Datasets.open(options.dataset, training: false, limit: options.evaluationCount)
        var generator = RandomGenerator(seed: 0)
        var images: [Tensor] = []
        var labels: [Int] = []
        for index in 0..<test.count {
            let example = try test.example(at: index)
            let image = transform.apply(example.image, generator: &generator)
            images.append(image.reshaped([1] + image.shape))
            labels.append(example.label ?? -1)
        }
        let clean = noGrad { Tensor.concatenate(images, axis: 0) }
        var results: [(Int, Double)] = []
        for timestep in options.clean ? [0] : [0, 250, 500, 750] where timestep < noiseScheduler.trainTimesteps {
            let noise = Tensor.randn(clean.shape, generator: &generator)
            let input = timestep == 0 ? clean : noGrad { noiseScheduler.addNoise(clean, noise: noise, timesteps: [Float](repeating: Float(timestep), count: labels.count)) }
            let predicted = model.predict(input, timestep: Float(timestep))
            results.append((timestep, Double(zip(predicted, labels).filter { $0 == $1 }.count) / Double(labels.count)))
        }
        return results
    }
}
