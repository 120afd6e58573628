import Foundation
import Tensors

/// `make demo-text` (`diffuse demo --text`): a small Stable Diffusion built from
/// nothing on captioned tinted Fashion-MNIST at 32×32 RGB, in three trainings —
/// a CLIP (`train-clip`), an `AutoencoderKL` with 4 latent channels at 8×8
/// (`train-vae`) and a cross-attention UNet on the VAE's latents and the CLIP
/// text tower's embeddings (`train-text-to-image`) — then a grid of every item
/// in several colours at guidance scales 1, 3 and 7.5, and, with a judge, the
/// evaluation of ``CaptionedTintedEvaluation``.
///
/// Some foreground colour–item pairs (``Options/heldOutPairs``) are left out of
/// every training set, captions included, so the grid and the evaluation also
/// ask for compositions no model saw. Each phase writes its own folder under
/// `outputDir` and is skipped when that folder is complete, so an interrupted
/// demo continues where it stopped (`--resume` continues an interrupted phase
/// from its checkpoint).
public enum TextDemoRun {
    /// The demo's settings.
    public struct Options: Sendable {
        /// Where everything goes: `clip/`, `vae/`, `pipeline/`, grids, `evaluation.json`.
        public var outputDir = "output/demo-text"
        /// CLIP steps (batches of `clipBatchSize`).
        public var clipSteps = 800
        public var clipBatchSize = 128
        public var clipLearningRate = 5e-4
        /// VAE steps (batches of 32).
        public var vaeSteps = 800
        /// UNet steps (batches of `unetBatchSize`).
        public var unetSteps = 1000
        public var unetBatchSize = 64
        /// diffusers' `noise_offset` of the UNet training: lets the model move an image's mean colour (the backgrounds).
        public var unetNoiseOffset = 0.1
        /// Pairs no training set shows.
        public var heldOutPairs = CaptionedTintedDataset.demoHeldOutPairs
        /// Foreground colours of the grid and the evaluation (each item on the next colour of the list).
        public var colors: [NamedColor] = [.red, .green, .blue, .yellow]
        /// Classifier-free guidance scales of the grids and the evaluation.
        public var guidanceScales = [1.0, 3.0, 7.5]
        /// DPM-Solver++ steps of every generation.
        public var samplingSteps = 20
        /// Images per prompt in the grids.
        public var gridSamples = 2
        /// A clean Fashion-MNIST classifier folder to judge samples with; with `trainJudge` and no folder there, trained first.
        public var judge: String?
        /// Train the judge (`train-classifier --clean`, 1,200 steps) into `judge` (default `outputDir/judge`) when absent.
        public var trainJudge = false
        /// Images per prompt in the evaluation.
        public var evaluationSamples = 16
        /// Test images (and their VAE reconstructions) the judges score as the evaluation's reference.
        public var referenceCount = 1000
        /// Continue interrupted phases from their checkpoints.
        public var resume = false
        public var seed: UInt64 = 0
        /// Show progress lines.
        public var progress = true

        public init() {}

        var clipFolder: String { path("clip") }
        var vaeFolder: String { path("vae-training") }
        var pipelineFolder: String { path("pipeline") }
        var judgeFolder: String { judge ?? path("judge") }
        func path(_ name: String) -> String { (outputDir as NSString).appendingPathComponent(name) }
    }

    /// What the demo did.
    public struct Outcome {
        /// Each phase and its seconds (0 when an earlier run had finished it).
        public var phases: [(name: String, seconds: Double)] = []
        /// The Stable Diffusion pipeline folder (`diffuse generate` takes it).
        public var pipelinePath: String?
        /// One grid per guidance scale.
        public var grids: [String] = []
        /// The evaluation at every scale (nil without a judge).
        public var evaluation: [CaptionedTintedEvaluation.Result]?
        /// The judges on real test images and their VAE reconstructions (nil without a judge).
        public var reference: CaptionedTintedEvaluation.Reference?
        public var evaluationPath: String?
        /// Set when a phase was interrupted.
        public var interruptedPhase: String?

        /// What to tell a person.
        public var reportLines: [String] {
            var lines = phases.map { $0.name.padding(toLength: 12, withPad: " ", startingAt: 0) + String(format: " %6.0f s", $0.seconds) }
            let training = phases.filter { ["clip", "vae", "unet"].contains($0.name) }.reduce(0) { $0 + $1.seconds }
            lines.append(String(format: "training     %6.0f s in all (CLIP, VAE and UNet)", training))
            if let interruptedPhase {
                lines.append("interrupted during \(interruptedPhase): continue with `diffuse demo --text --resume`")
                return lines
            }
            if let pipelinePath { lines.append("pipeline:    \(pipelinePath)  (diffuse generate \(pipelinePath) \"a red dress on a blue background\")") }
            lines += grids.map { "grid:        \($0)" }
            if let evaluation {
                lines.append("")
                lines += CaptionedTintedEvaluation.table(evaluation)
                if let reference { lines += CaptionedTintedEvaluation.tableRows(reference) }
            }
            if let evaluationPath { lines.append("evaluation:  \(evaluationPath)") }
            return lines
        }
    }

    /// Runs every phase that is not done yet; `message` receives each phase's lines.
    public static func run(_ options: Options, message: @escaping (String) -> Void = { print($0) }) throws -> Outcome {
        var outcome = Outcome()
        try FileManager.default.createDirectory(atPath: options.outputDir, withIntermediateDirectories: true)
        let heldOut = options.heldOutPairs.sorted()
        message("held out of every training set: " + heldOut.map(\.description).joined(separator: ", "))

        // 1. CLIP: the text tower becomes the pipeline's text encoder.
        if try phase("clip", done: exists(options.clipFolder, "model.safetensors"), into: &outcome, message: message, {
            var clip = CLIPTrainingOptions()
            clip.outputDir = options.clipFolder
            clip.steps = options.clipSteps
            clip.batchSize = options.clipBatchSize
            clip.patchSize = 7
            // Batches of 128 at lr 5e-4 learn the items fastest per second on two cores (Benchmarks/text-to-image-demo.md).
            clip.learningRate = options.clipLearningRate
            clip.seed = options.seed
            clip.heldOutPairs = heldOut
            clip.evaluationCount = 2000
            clip.checkpointingSteps = 200
            clip.resumeFromCheckpoint = options.resume ? "latest" : nil
            clip.overwriteOutputDir = !options.resume
            let result = try CLIPTraining.run(clip, tokenizer: try CLIPTraining.defaultTokenizer()) { trainer in
                if !options.progress { trainer.progressOutput = nil }
                trainer.message = message
            }
            result.reportLines.forEach(message)
            return result.summary.interrupted
        }) { return outcome.interrupted("clip") }

        // 2. The VAE: 32×32 RGB → 4 × 8 × 8.
        let vaeFolder = (options.vaeFolder as NSString).appendingPathComponent("vae")
        if try phase("vae", done: exists(vaeFolder, "diffusion_pytorch_model.safetensors"), into: &outcome, message: message, {
            var vae = VAETrainingOptions()
            vae.outputDir = options.vaeFolder
            vae.steps = options.vaeSteps
            // train-vae's recipe for the small preset (Benchmarks/vae-training.md): batches of 32, lr 2e-3, 20 warm-up steps.
            vae.batchSize = 32
            vae.learningRate = 2e-3
            vae.warmupSteps = 20
            vae.resolution = 32
            vae.seed = options.seed
            vae.heldOutPairs = heldOut
            vae.resumeFromCheckpoint = options.resume ? "latest" : nil
            vae.overwriteOutputDir = !options.resume
            let result = try VAETraining.run(vae) { trainer in
                if !options.progress { trainer.progressOutput = nil }
                trainer.message = message
            }
            result.reportLines.forEach(message)
            return result.summary.interrupted
        }) { return outcome.interrupted("vae") }

        // 3. The UNet on cached latents and prompt embeddings, caption dropout for guidance.
        if try phase("unet", done: exists(options.pipelineFolder, "model_index.json"), into: &outcome, message: message, {
            var unet = TextToImageTrainingOptions()
            unet.outputDir = options.pipelineFolder
            unet.vae = vaeFolder
            unet.textEncoder = options.clipFolder
            unet.heldOutPairs = heldOut
            unet.resolution = 32
            unet.maxTrainSteps = options.unetSteps
            unet.trainBatchSize = options.unetBatchSize
            unet.learningRate = 1e-3
            unet.lrScheduler = .cosine
            unet.lrWarmupSteps = 100
            unet.captionDropout = 0.1
            unet.noiseOffset = options.unetNoiseOffset
            unet.useEMA = true
            unet.emaDecay = 0.999
            unet.seed = options.seed
            unet.checkpointingSteps = 500
            unet.checkpointsTotalLimit = 2
            unet.resumeFromCheckpoint = options.resume ? "latest" : nil
            unet.overwriteOutputDir = !options.resume
            let trainer = try TextToImageTrainer(options: unet)
            if !options.progress { trainer.progressOutput = nil }
            trainer.message = message
            let summary = try trainer.run()
            summary.reportLines.forEach(message)
            return summary.interrupted
        }) { return outcome.interrupted("unet") }
        outcome.pipelinePath = options.pipelineFolder

        // 4. Grids: every item (rows) in every colour (columns, `gridSamples` each), one grid per scale.
        let pipeline = try StableDiffusionPipeline.load(URL(fileURLWithPath: options.pipelineFolder))
        let prompts = CaptionedTintedEvaluation.prompts(colors: options.colors, heldOut: options.heldOutPairs)
        var request = StableDiffusionRequest(pipeline: options.pipelineFolder, prompt: "")
        request.steps = options.samplingSteps
        request.scheduler = SchedulerKind.dpmSolverMultistep.rawValue
        request.seed = options.seed &+ 1
        let gridStart = Date()
        for scale in options.guidanceScales {
            let images = try CaptionedTintedEvaluation.samples(prompts.map(\.text), samplesPerPrompt: options.gridSamples,
                                                               guidanceScale: scale, request: request, pipeline: pipeline)
            let path = options.path(String(format: "grid-scale-%@.png", CaptionedTintedEvaluation.scaleName(scale)))
            let grid = makeGrid(images: images, columns: options.colors.count * options.gridSamples)
            try PNG.write(grid, to: path)
            outcome.grids.append(path)
        }
        outcome.phases.append(("grids", Date().timeIntervalSince(gridStart)))
        message("grids: rows are the ten items, columns " + options.colors.map(\.name).joined(separator: ", ")
                + " (\(options.gridSamples) each) on the next colour; " + outcome.grids.joined(separator: ", "))

        // 5. The evaluation, with a judge.
        if options.trainJudge && !exists(options.judgeFolder, "model.safetensors") {
            let start = Date()
            var judge = ClassifierTraining.Options()
            judge.dataset = "fashion-mnist"
            judge.clean = true
            judge.outputDir = options.judgeFolder
            judge.blockOutChannels = [24, 48, 96]
            judge.steps = 1200
            judge.seed = 11
            let trained = try ClassifierTraining.run(judge, log: message)
            trained.reportLines.forEach(message)
            outcome.phases.append(("judge", Date().timeIntervalSince(start)))
        }
        if options.judge != nil || options.trainJudge {
            let start = Date()
            let classifier = try NoiseAwareClassifier.load(folder: URL(fileURLWithPath: options.judgeFolder))
            let reference = try CaptionedTintedEvaluation.reference(classifier: classifier, vae: pipeline.vae,
                                                                    resolution: pipeline.defaultSize.height, count: options.referenceCount)
            outcome.reference = reference
            let results = try CaptionedTintedEvaluation.run(
                pipeline: pipeline, classifier: classifier, prompts: prompts, samplesPerPrompt: options.evaluationSamples,
                guidanceScales: options.guidanceScales, request: request)
            outcome.evaluation = results
            let path = options.path("evaluation.json")
            try CaptionedTintedEvaluation.json(results, prompts: prompts, reference: reference).write(toFile: path, atomically: true, encoding: .utf8)
            for result in results {
                let grid = makeGrid(images: result.samples, columns: options.evaluationSamples)
                try PNG.write(grid, to: options.path("evaluation-scale-\(CaptionedTintedEvaluation.scaleName(result.guidanceScale)).png"))
            }
            outcome.evaluationPath = path
            outcome.phases.append(("evaluation", Date().timeIntervalSince(start)))
        }
        return outcome
    }

    /// Runs `body` unless `done`; records its time. Returns whether it was interrupted.
    private static func phase(_ name: String, done: Bool, into outcome: inout Outcome, message: (String) -> Void,
                              _ body: () throws -> Bool) throws -> Bool {
        if done {
            message("\(name): done in an earlier run")
            outcome.phases.append((name, 0))
            return false
        }
        message("— \(name) —")
        let start = Date()
        let interrupted = try body()
        outcome.phases.append((name, Date().timeIntervalSince(start)))
        return interrupted
    }

    private static func exists(_ folder: String, _ file: String) -> Bool {
        FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent(file))
    }
}

extension TextDemoRun.Outcome {
    fileprivate func interrupted(_ phase: String) -> Self {
        var copy = self
        copy.interruptedPhase = phase
        return copy
    }
}
