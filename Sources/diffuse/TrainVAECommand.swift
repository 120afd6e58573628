import ArgumentParser
import Diffusion
import Foundation
import NN

/// `diffuse train-vae`: wiring from flags to `VAETraining`.
struct TrainVAE: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train-vae",
        abstract: "Train an AutoencoderKL (Stable Diffusion's VAE) from scratch on images.",
        discussion: """
        The loss is a reconstruction term (--reconstruction-loss l1 or mse, summed over each image's \
        values and averaged over the batch) plus --kl-weight times the KL divergence of the posterior \
        to N(0, I) (summed per image, averaged over the batch), as diffusers' train_autoencoderkl.py \
        without its LPIPS and discriminator terms. The posterior is sampled from the run's seeded \
        generator. Data: captioned-tinted-fashion-mnist (default), tinted-fashion-mnist, fashion-mnist, \
        mnist, tinted-mnist, or an image folder; images are resized and centre-cropped to --resolution. \
        Checkpoints every --checkpointing-steps and on Ctrl-C (continue with --resume latest), a grid of \
        reconstructions (originals above, reconstructions below) every --grid-every steps. At the end \
        --output-dir/vae holds a diffusers AutoencoderKL folder whose scaling_factor is 1 / std of the \
        sampled latents of --scaling-factor-images training images; named datasets are then measured on \
        held-out test images (MSE, PSNR; eval.json).
        """)

    @Option(help: "captioned-tinted-fashion-mnist, tinted-fashion-mnist, fashion-mnist, mnist, tinted-mnist, or an image folder.")
    var dataset = CaptionedTintedDataset.name
    @Option(help: "Use only the first N training images.") var datasetLimit: Int?
    @Option(help: "Checkpoints, logs, grids and the final vae/ folder.") var outputDir = "output/vae"
    @Option(help: "Model size: tiny, small (32×32 → 8×8×4) or medium.") var model = VAEModelPreset.small
    @Option(help: ArgumentHelp("Block widths, comma-separated (default: the preset's, small 32,64,64).", valueName: "list"))
    var blockOutChannels: String?
    @Option(help: "Latent channels.") var latentChannels = 4
    @Option(help: "Resnets per encoder block (default: the preset's).") var layersPerBlock: Int?
    @Option(help: "Group-norm groups (default: the preset's, or the largest of 32…1 dividing every width).") var normNumGroups: Int?
    @Option(help: "Side of the square training images.") var resolution = 32
    @Option(help: "Image channels (default: the data's).") var channels: Int?
    @Flag(help: "Flip training images left–right at random.") var randomFlip = false
    @Option(help: "Images per micro-batch.") var batchSize = 32
    @Option(help: "Micro-batches per optimizer step.") var gradientAccumulationSteps = 1
    @Option(help: "Optimizer steps (1100: about 4 minutes for the small preset at 32×32 on two cores).") var steps = 1100
    @Option(help: "Peak AdamW learning rate.") var learningRate = 2e-3
    @Option(help: "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial.") var lrScheduler = "cosine"
    @Option(help: "Warm-up steps.") var warmupSteps = 20
    @Option(help: "AdamW weight decay.") var weightDecay = 0.0
    @Option(help: "Clip gradients to this global norm (0: no clipping).") var maxGradNorm = 1.0
    @Option(help: "Reconstruction term: l1 or mse.") var reconstructionLoss = VAEReconstructionLoss.mse
    @Option(help: "Weight of the KL term.") var klWeight = 1e-6
    @Flag(help: "Keep an exponential moving average of the weights (saved as vae/).") var useEma = false
    @Option(help: "EMA maximum decay.") var emaMaxDecay = 0.999
    @Option(help: "no, fp16 or bf16: storage of the activations saved for backward.") var mixedPrecision = "no"
    @Option(help: "Seed of initialisation, data order, flips and posterior samples.") var seed: UInt64 = 0
    @Option(help: "A checkpoint every N steps (0: only at the end and on Ctrl-C).") var checkpointingSteps = 250
    @Option(help: "Keep at most N checkpoints.") var checkpointsTotalLimit = 2
    @Option(help: ArgumentHelp("Continue from a checkpoint: latest, a checkpoint folder name, or a path.", valueName: "checkpoint"))
    var resume: String?
    @Flag(help: "Start again in an output folder that holds an earlier run.") var overwriteOutputDir = false
    @Option(help: "Print loss, reconstruction and KL every N steps.") var logEvery = 50
    @Option(help: "A grid of reconstructions every N steps (0: only at the end).") var gridEvery = 100
    @Option(help: "Images in a reconstruction grid.") var gridImages = 8
    @Option(help: "Training images whose latents measure scaling_factor (0: keep 0.18215).") var scalingFactorImages = 1024
    @Option(help: "Held-out test images to measure at the end (0: none).") var evaluationImages = 1000
    @Flag(help: "No progress line.") var noProgress = false

    func run() throws {
        DistributedLaunch.installIfLaunched()
        try CommandFailure.report {
            var options = VAETrainingOptions()
            options.dataset = dataset
            options.datasetLimit = datasetLimit
            options.outputDir = outputDir
            options.model = model
            if let blockOutChannels {
                let parts = blockOutChannels.split(whereSeparator: { $0 == "," || $0 == " " }).map { Int($0.trimmingCharacters(in: .whitespaces)) }
                guard !parts.isEmpty, parts.allSatisfy({ $0 != nil }) else {
                    throw ValidationError("--block-out-channels takes comma-separated widths such as 32,64,64; got \"\(blockOutChannels)\"")
                }
                options.blockOutChannels = parts.compactMap { $0 }
            }
            options.latentChannels = latentChannels
            options.layersPerBlock = layersPerBlock
            options.normGroupCount = normNumGroups
            options.resolution = resolution
            options.channels = channels
            options.randomFlip = randomFlip
            options.batchSize = batchSize
            options.gradientAccumulationSteps = gradientAccumulationSteps
            options.steps = steps
            options.learningRate = learningRate
            guard let schedule = LearningRateSchedule.Kind(rawValue: lrScheduler) else {
                throw ValidationError("--lr-scheduler must be one of \(LearningRateSchedule.Kind.allCases.map(\.rawValue).joined(separator: ", ")); got \"\(lrScheduler)\"")
            }
            options.lrScheduler = schedule
            options.warmupSteps = warmupSteps
            options.weightDecay = weightDecay
            options.maxGradNorm = maxGradNorm
            options.reconstructionLoss = reconstructionLoss
            options.klWeight = klWeight
            options.useEMA = useEma
            options.emaMaxDecay = emaMaxDecay
            guard let precision = MixedPrecision(rawValue: mixedPrecision) else {
                throw ValidationError("--mixed-precision must be no, fp16 or bf16; got \"\(mixedPrecision)\"")
            }
            options.mixedPrecision = precision
            options.seed = seed
            options.checkpointingSteps = checkpointingSteps
            options.checkpointsTotalLimit = checkpointsTotalLimit
            options.resumeFromCheckpoint = resume
            options.overwriteOutputDir = overwriteOutputDir
            options.logEvery = logEvery
            options.gridEvery = gridEvery
            options.gridImages = gridImages
            options.scalingFactorImages = scalingFactorImages
            options.evaluationImages = evaluationImages
            let outcome = try VAETraining.run(options) { trainer in
                if noProgress { trainer.progressOutput = nil }
            }
            outcome.reportLines.forEach { print($0) }
        }
    }
}

extension VAEModelPreset: ExpressibleByArgument {}
extension VAEReconstructionLoss: ExpressibleByArgument {}
