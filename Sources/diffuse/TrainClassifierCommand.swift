import ArgumentParser
import Diffusion
import Foundation

/// `diffuse train-classifier`: wiring from flags to `ClassifierTraining`.
struct TrainClassifier: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-classifier",
        abstract: "Train a noise-aware (timestep-conditioned) image classifier for classifier guidance.",
        discussion: """
        Every training image is noised to a random timestep of the diffusion model's noise schedule \
        (--pipeline takes it from a pipeline folder's scheduler, with the image size and channels), and \
        the classifier — the down half of a UNet2DModel with a pooling head — learns p(class | x_t, t). \
        --clean trains on clean images only (a plain classifier, e.g. to judge samples). Writes \
        config.json and model.safetensors into --output-dir; use it with \
        `diffuse sample --classifier DIR --class K --classifier-scale S`.
        """)

    @Option(help: "A labelled dataset: mnist, fashion-mnist, tinted-fashion-mnist, or an image folder with one sub-folder per class.")
    var dataset = "fashion-mnist"
    @Option(help: "Use only the first N training images.") var datasetLimit: Int?
    @Option(help: "Where config.json and model.safetensors go.") var outputDir = "output/classifier"
    @Option(help: ArgumentHelp("Take the noise schedule, image size and channels from this pipeline folder.", valueName: "pipeline-dir"))
    var pipeline: String?
    @Option(help: "The noise schedule without --pipeline: linear, scaled_linear, squaredcos_cap_v2, … (default linear).") var betaSchedule: String?
    @Flag(help: "Train on clean images only (timestep 0): a plain classifier, not for guidance.") var clean = false
    @Option(help: "Image side (default: the pipeline's sample_size, else 28).") var imageSize: Int?
    @Option(help: ArgumentHelp("Channels of the down blocks, comma-separated.", valueName: "32,64,64")) var blockOutChannels = "32,64,64"
    @Option(help: "Resnets per block.") var layersPerBlock = 1
    @Option(help: "Group-norm groups.") var normNumGroups = 8
    @Option(help: "Images per step.") var batchSize = 64
    @Option(help: "Optimizer steps.") var steps = 1000
    @Option(help: "Peak AdamW learning rate (cosine schedule).") var learningRate = 1e-3
    @Option(help: "Seed of initialisation, data order, timesteps and noise.") var seed: UInt64 = 0
    @Option(help: "Print the loss every N steps.") var logEvery = 50
    @Option(help: "Test images to measure the accuracy on at the end (named datasets).") var evaluationCount = 1000

    func run() throws {
        DistributedLaunch.installIfLaunched()
        try CommandFailure.report {
            let channels = blockOutChannels.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard !channels.isEmpty, channels.count == blockOutChannels.split(separator: ",").count else {
                throw ValidationError("--block-out-channels \"\(blockOutChannels)\" is not a comma-separated list of integers")
            }
            var options = ClassifierTraining.Options()
            options.dataset = dataset
            options.datasetLimit = datasetLimit
            options.outputDir = outputDir
            options.pipeline = pipeline
            options.betaSchedule = betaSchedule
            options.clean = clean
            options.imageSize = imageSize
            options.blockOutChannels = channels
            options.layersPerBlock = layersPerBlock
            options.normGroupCount = normNumGroups
            options.batchSize = batchSize
            options.steps = steps
            options.learningRate = learningRate
            options.seed = seed
            options.logEvery = logEvery
            options.evaluationCount = evaluationCount
            let outcome = try ClassifierTraining.run(options, log: { print($0) })
            outcome.reportLines.forEach { print($0) }
        }
    }
}
