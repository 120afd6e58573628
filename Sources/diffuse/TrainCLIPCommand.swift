import ArgumentParser
import Diffusion
import Foundation

/// `diffuse train-clip`: wiring from flags to `CLIPTraining`.
struct TrainCLIP: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-clip",
        abstract: "Train a CLIP (text and image towers) from scratch on captioned images.",
        discussion: """
        Contrastive training as CLIP: the symmetric cross-entropy over each batch's image–caption \
        similarities with a learned temperature (clamped at 100), AdamW without decay on gains, biases, \
        the class token and the temperature, a warm-up then a cosine decay. The default data is \
        captioned-tinted-fashion-mnist (Fashion-MNIST in named colours, captions such as "a red sneaker \
        on a blue background"); a folder of images with a metadata.jsonl of {"file_name", "text"} lines \
        works too. Checkpoints every --checkpointing-steps and on Ctrl-C (continue with --resume latest). \
        At the end --output-dir holds a transformers CLIPModel folder with its CLIPTokenizer and \
        CLIPImageProcessor files, and — for the built-in data — eval.json: zero-shot accuracy on the \
        Fashion-MNIST test split and colour retrieval accuracies.
        """)

    @Option(help: "captioned-tinted-fashion-mnist, or an image folder with a metadata.jsonl of captions.")
    var dataset = CaptionedTintedDataset.name
    @Option(help: "Use only the first N training examples.") var datasetLimit: Int?
    @Option(help: "Checkpoints, logs and the final CLIPModel folder.") var outputDir = "output/clip"
    @Option(help: "Model size: tiny, small or medium.") var model = CLIPModelPreset.small
    @Option(help: "Image side of the vision tower.") var imageSize = 28
    @Option(help: "Vision patch side (default: the preset's, 4 for small).") var patchSize: Int?
    @Option(help: "Image–caption pairs per step.") var batchSize = 256
    @Option(help: "Optimizer steps.") var steps = 1000
    @Option(help: "Peak AdamW learning rate.") var learningRate = 1e-3
    @Option(help: "Warm-up steps (default 5% of the steps).") var warmupSteps: Int?
    @Option(help: "AdamW weight decay of the weight matrices.") var weightDecay = 0.1
    @Option(help: "Clip gradients to this global norm (0: no clipping).") var maxGradNorm = 1.0
    @Option(help: "Seed of initialisation, data order and colours.") var seed: UInt64 = 0
    @Option(help: "A checkpoint every N steps (0: only at the end and on Ctrl-C).") var checkpointingSteps = 250
    @Option(help: "Keep at most N checkpoints.") var checkpointsTotalLimit = 2
    @Option(help: ArgumentHelp("Continue from a checkpoint: latest, a checkpoint folder name, or a path.", valueName: "checkpoint"))
    var resume: String?
    @Flag(help: "Start again in an output folder that holds an earlier run.") var overwriteOutputDir = false
    @Option(help: "Print loss, batch accuracy and temperature every N steps.") var logEvery = 50
    @Option(help: "Fashion-MNIST test images to evaluate on at the end (0: none).") var evaluationCount = 10000
    @Option(help: ArgumentHelp("The CLIP BPE merges (bpe_simple_vocab_16e6.txt.gz) or a tokenizer folder (default data/clip/…, `make clip-vocab`).", valueName: "path"))
    var tokenizer: String?
    @Flag(help: "No progress line.") var noProgress = false

    func run() throws {
        DistributedLaunch.installIfLaunched()
        try CommandFailure.report {
            var options = CLIPTrainingOptions()
            options.dataset = dataset
            options.datasetLimit = datasetLimit
            options.outputDir = outputDir
            options.model = model
            options.imageSize = imageSize
            options.patchSize = patchSize
            options.batchSize = batchSize
            options.steps = steps
            options.learningRate = learningRate
            options.warmupSteps = warmupSteps
            options.weightDecay = weightDecay
            options.maxGradNorm = maxGradNorm
            options.seed = seed
            options.checkpointingSteps = checkpointingSteps
            options.checkpointsTotalLimit = checkpointsTotalLimit
            options.resumeFromCheckpoint = resume
            options.overwriteOutputDir = overwriteOutputDir
            options.logEvery = logEvery
            options.evaluationCount = evaluationCount
            let captionTokenizer = try CLIPTraining.defaultTokenizer(path: tokenizer)
            let outcome = try CLIPTraining.run(options, tokenizer: captionTokenizer) { trainer in
                if noProgress { trainer.progressOutput = nil }
            }
            outcome.reportLines.forEach { print($0) }
        }
    }
}

extension CLIPModelPreset: ExpressibleByArgument {}
