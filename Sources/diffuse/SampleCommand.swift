import ArgumentParser
import Diffusion
import Foundation

/// `diffuse sample`: wiring from flags to `SampleRun`.
struct Sample: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate images from a pipeline folder (diffusers layout) and write a PNG grid.",
        discussion: """
        The scheduler stored in the folder is used unless --scheduler names another (DDPMScheduler, \
        DDIMScheduler, PNDMScheduler, LMSDiscreteScheduler, EulerDiscreteScheduler, \
        EulerAncestralDiscreteScheduler, HeunDiscreteScheduler, DPMSolverMultistepScheduler, \
        UniPCMultistepScheduler, or ddpm, ddim, pndm, lms, euler, euler-ancestral, heun, dpm, unipc). \
        For a class-conditional model, --class picks the classes and --guidance-scale applies \
        classifier-free guidance: uncond + s·(cond − uncond), one batched model call per step. \
        --guide color=#RRGGBB steers an RGB model towards a colour: before each step x moves by \
        −scale·∇ colour_loss(x0), the gradient taken through the scheduler's x0 only (--guide-mode \
        shortcut) or through the UNet too (full). --guide clip="a red bag" --clip-model DIR steers \
        towards a prompt with a CLIP model (the squared great-circle distance of random cut-outs of \
        x0 to the prompt's embedding); several --guide terms add up. --classifier DIR (from `diffuse train-classifier`) \
        with --class K moves x by +scale·∇ log p(K | x_t). A guided run prints the guidance loss \
        every --guidance-report-every steps.
        """)

    @Argument(help: "The pipeline folder (model_index.json, unet/, scheduler/).") var pipeline: String
    @Option(help: "Scheduler to sample with instead of the folder's.") var scheduler: String?
    @Option(help: "Inference steps (default: 1000 for DDPM, 50 otherwise).") var steps: Int?
    @Option(help: "DDIM eta (0: deterministic, 1: DDPM-like).") var eta: Double?
    @Option(help: "Seed of the starting noise and of stochastic steps.") var seed: UInt64 = 0
    @Option(help: "Number of images (default: from --init-noise or --class, else 16).") var count: Int?
    @Option(name: .customLong("class"), help: ArgumentHelp("A class, or a comma-separated list (one per sample): 3, 0,1,2, 0-9, or names from classes.json.", valueName: "k"))
    var classes: String?
    @Option(help: "Classifier-free guidance scale: 0 unconditional, 1 plain conditional.") var guidanceScale: Double = 1
    @Option(name: .shortAndLong, help: "The grid PNG.") var output = "samples.png"
    @Option(help: "Images per grid row (default: one row per class for runs of equal classes, else 8).") var columns: Int?
    @Option(help: ArgumentHelp("Unit-variance starting noise [count, C, H, W] (tensor \"noise\" or the only tensor).", valueName: "file.safetensors"))
    var initNoise: String?
    @Option(help: ArgumentHelp("Save the final samples (before conversion to pixels) as tensor \"samples\".", valueName: "file.safetensors"))
    var saveTensor: String?
    @Flag(help: "Also write a strip of x_t and the predicted x0 every k steps (GRID-trace.png).") var trace = false
    @Option(help: "The trace's k (default: steps / 10).") var traceEvery: Int?
    @Option(help: ArgumentHelp("Loss guidance, repeatable (the terms add up): color=#RRGGBB (the notes' colour loss; RGB models) "
                               + "or clip=\"a red bag\" (CLIP guidance; needs --clip-model).", valueName: "color=#RRGGBB|clip=PROMPT"))
    var guide: [String] = []
    @Option(help: ArgumentHelp("A transformers CLIPModel folder with its tokenizer (diffuse train-clip's output) for --guide clip=.", valueName: "dir"))
    var clipModel: String?
    @Option(help: "CLIP guidance: random cut-outs per image and step.") var clipCutouts = 4
    @Option(help: "CLIP guidance: weight of the CLIP terms beside colour terms.") var clipWeight: Double = 1
    @Option(help: "Loss guidance scale (step size on the gradient of the per-image loss).") var guideScale: Double = 40
    @Option(help: ArgumentHelp("shortcut: gradient through the scheduler's x0 only; full: through the UNet too.", valueName: "shortcut|full"))
    var guideMode: String = "shortcut"
    @Option(help: ArgumentHelp("A noise-aware classifier folder (diffuse train-classifier) for classifier guidance towards --class.", valueName: "dir"))
    var classifier: String?
    @Option(help: "Classifier guidance scale: x_t += s·∇ log p(class | x_t); 0 is unguided.") var classifierScale: Double = 1
    @Option(help: "Print the guidance loss every N steps (0: never).") var guidanceReportEvery = 10
    @Flag(help: "No live progress line.") var noProgress = false

    func run() throws {
        var request = SampleRequest(pipeline: pipeline)
        request.scheduler = scheduler
        request.steps = steps
        request.eta = eta
        request.seed = seed
        request.count = count
        request.classes = classes
        request.guidanceScale = guidanceScale
        request.output = output
        request.columns = columns
        request.initNoise = initNoise
        request.saveTensor = saveTensor
        if trace || traceEvery != nil { request.traceEvery = traceEvery ?? 0 }
        request.guides = guide
        request.clipModel = clipModel
        request.clipCutouts = clipCutouts
        request.clipWeight = clipWeight
        request.guideScale = guideScale
        request.classifier = classifier
        request.classifierScale = classifierScale
        request.guidanceReportEvery = guidanceReportEvery
        try CommandFailure.report {
            guard let mode = GuidanceMode(rawValue: guideMode.lowercased()) else {
                throw GuidanceError("--guide-mode \"\(guideMode)\" is not shortcut or full")
            }
            request.guideMode = mode
            let outcome = try SampleRun.run(request, progressOutput: noProgress ? nil : FileDescriptorOutput(), log: { print($0) })
            outcome.reportLines.forEach { print($0) }
        }
    }
}
