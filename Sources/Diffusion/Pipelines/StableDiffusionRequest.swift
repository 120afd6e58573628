import Foundation
import NN
import Tensors

/// `diffuse generate`: one Stable Diffusion generation from a pipeline folder to PNG files, as the
/// command line, the library and a server describe it.
public struct StableDiffusionRequest: Sendable {
    /// The pipeline folder (diffusers' `StableDiffusionPipeline` layout).
    public var pipeline: String
    /// The prompt.
    public var prompt: String
    /// The negative prompt (nil: the empty string, as diffusers).
    public var negativePrompt: String?
    /// Inference steps.
    public var steps = 50
    /// Classifier-free guidance scale (guidance only above 1).
    public var guidanceScale: Double = 7.5
    /// `guidance_rescale` (text-to-image).
    public var guidanceRescale: Double = 0
    /// A scheduler to use instead of the folder's (class name or short name: ddim, euler, dpm, ...).
    public var scheduler: String?
    /// DDIM's η.
    public var eta: Double = 0
    /// Seed of the starting latents (and of the posterior sample and noise of image-to-image, and stochastic steps).
    public var seed: UInt64 = 0
    /// Image size (nil: the UNet's `sample_size` × 8, or the init image's size).
    public var width: Int?
    public var height: Int?
    /// Images to generate.
    public var count = 1
    /// `clip_skip`.
    public var clipSkip: Int?
    /// Image-to-image: a PNG or JPEG to start from.
    public var initImage: String?
    /// Inpainting (with ``initImage``): a PNG or JPEG of the init image's size, white where to repaint,
    /// black where to keep (binarized at half grey, as diffusers' mask processor).
    public var mask: String?
    /// Image-to-image and inpainting: how much of the schedule runs (0…1). 0.8 is diffusers' image-to-image
    /// default; its inpainting default is 1 (`diffuse generate --mask` sets 1 unless `--strength` is given).
    public var strength: Double = 0.8
    /// Karras sigmas (`use_karras_sigmas`) for the schedulers that have them in diffusers (LMS, Euler,
    /// Heun, DPM-Solver++); an error for the others.
    public var karras = false
    /// How the per-step previews are decoded (nil: no previews, unless ``trace`` asks: then ``StableDiffusionPreviewSource/linear``).
    public var preview: StableDiffusionPreviewSource?
    /// Write a strip of x_t and the predicted x0 previews over the steps (``traceOutput``).
    public var trace = false
    /// Record every this many steps for the trace (nil: about ten frames), and the last step.
    public var traceEvery: Int?
    /// The trace PNG (nil: the output's name with `-trace`).
    public var traceOutput: String?
    /// The weights variant of every model (`fp16`).
    public var variant: String?
    /// How the models hold their weights.
    public var precision: WeightPrecision = .float32
    /// The PNG to write (several images: `name-1.png`, `name-2.png`, ...).
    public var output = "image.png"
    /// Unit-variance starting latents in a safetensors file (text-to-image), instead of seeded ones.
    public var initLatents: String?
    /// What a single `.safetensors` checkpoint cannot say (prediction type, tokenizer, configuration folder).
    public var singleFile = SingleFileOptions()
    /// CLIP guidance in latent space with a CLIP model folder (nil: none).
    public var clipGuidance: StableDiffusionCLIPGuidanceOptions?
    /// LoRA files with their scales, loaded after the pipeline (diffusers' `load_lora_weights` and `set_adapters`).
    public var loras: [LoRARequest] = []
    /// Add the LoRAs into the weights before generating (diffusers' `fuse_lora`), so steps cost what they cost without.
    public var fuseLoRA = true

    public init(pipeline: String, prompt: String) {
        self.pipeline = pipeline
        self.prompt = prompt
    }
}

/// Where a request's previews come from.
public enum StableDiffusionPreviewSource: Sendable, Equatable {
    /// The linear latent-to-RGB map (``StableDiffusionPreview/linear``), at the latents' size.
    case linear
    /// A TAESD folder (diffusers' `AutoencoderTiny`, e.g. madebyollin/taesd), full size.
    case taesd(folder: String)
}

/// What a ``StableDiffusionRequest`` did.
public struct StableDiffusionOutcome: Sendable {
    /// The PNG files written, one per image.
    public let paths: [String]
    public let schedulerName: String
    /// Steps run (fewer than asked with image-to-image).
    public let steps: Int
    /// Seconds loading the pipeline, and generating (text encoding, denoising and decoding).
    public let loadSeconds: Double
    public let generateSeconds: Double
    /// Truncated prompts.
    public let warnings: [String]
    /// Components in the folder that were not run (safety checker, feature extractor).
    public let componentsNotRun: [String]
    /// The trace strip written (nil: none).
    public var tracePath: String?

    /// What to tell a person.
    public var reportLines: [String] {
        var lines = [String(format: "%d image%@, %@, %d timesteps, %.1f s (loading %.1f s)", paths.count, paths.count == 1 ? "" : "s",
                            schedulerName, steps, generateSeconds, loadSeconds)]
        if !componentsNotRun.isEmpty { lines.append("not run:     " + componentsNotRun.joined(separator: ", ")) }
        lines += paths.map { "wrote        \($0)" }
        if let tracePath { lines.append("trace:       \(tracePath) (rows: x_t, predicted x0)") }
        return lines
    }
}

/// Runs a ``StableDiffusionRequest``.
public enum StableDiffusionRun {
    /// Checks the request, loads the pipeline, generates and writes the PNGs (each with its generation
    /// parameters in a `parameters` text chunk, ``StableDiffusionInfotext``), and the trace strip when asked.
    /// - Parameters:
    ///   - progressOutput: where the live progress line goes (nil: none).
    ///   - log: receives warnings (truncated prompts) as they happen.
    ///   - onStep: every step of the generation (for previews or a server); its ``StableDiffusionStep/preview``
    ///     is set when the request asks for previews (``StableDiffusionRequest/preview``) or a trace.
    public static func run(_ request: StableDiffusionRequest, progressOutput: ProgressOutput? = nil,
                           log: ((String) -> Void)? = nil,
                           onStep: ((StableDiffusionStep) throws -> Void)? = nil) throws -> StableDiffusionOutcome {
        let inputs = try check(request)
        let loadStart = Date()
        let pipeline = try StableDiffusionPipeline.load(URL(fileURLWithPath: request.pipeline), variant: request.variant, options: request.singleFile,
                                                        precision: request.precision, scheduler: inputs.kind)
        try applyLoRAs(request, to: pipeline, log: log)
        let preview = try self.preview(for: request, pipeline: pipeline)
        let loadSeconds = Date().timeIntervalSince(loadStart)
        var frames: [(latents: Tensor, predictedOriginal: Tensor)] = []
        var bar: ProgressBar?
        let generated = try generate(request, inputs: inputs, pipeline: pipeline, preview: preview, log: log) { step in
            if bar == nil, let progressOutput { bar = ProgressBar(total: step.count, label: "generate", output: progressOutput) }
            bar?.update(step: step.index + 1)
            let traceEvery = request.traceEvery.map { Swift.max($0, 1) } ?? Swift.max(1, step.count / 10)
            if request.trace, let preview, let x0 = step.preview, step.index % traceEvery == 0 || step.index == step.count - 1 {
                frames.append((preview.images(step.latents), x0))
            }
            try onStep?(step)
        }
        bar?.finish()
        let pictures = generated.images
        let paths = outputPaths(request.output, count: pictures.count)
        for (position, (picture, path)) in zip(pictures, paths).enumerated() {
            let infotext = self.infotext(for: request, schedulerName: generated.schedulerName, width: picture.width, height: picture.height,
                                         fromImage: inputs.picture != nil, position: position, count: pictures.count)
            try FileManager.default.createDirectory(at: URL(fileURLWithPath: path).deletingLastPathComponent(), withIntermediateDirectories: true)
            try PNG.write(picture, to: path, text: [(StableDiffusionInfotext.key, infotext.text)])
        }
        var outcome = StableDiffusionOutcome(paths: paths, schedulerName: generated.schedulerName + (request.karras ? " (Karras sigmas)" : ""),
                                             steps: generated.steps, loadSeconds: loadSeconds,
                                             generateSeconds: generated.seconds, warnings: generated.warnings,
                                             componentsNotRun: pipeline.componentsNotRun)
        if let strip = StableDiffusionPreview.traceStrip(frames) {
            let path = request.traceOutput ?? SampleRun.defaultTracePath(request.output)
            try PNG.write(strip, to: path)
            outcome.tracePath = path
        }
        return outcome
    }

    /// `out.png` for one image; `out-1.png`, `out-2.png`, ... for several.
    public static func outputPaths(_ output: String, count: Int) -> [String] {
        guard count > 1 else { return [output] }
        let url = URL(fileURLWithPath: output)
        let base = url.deletingPathExtension().lastPathComponent
        let suffix = url.pathExtension.isEmpty ? "png" : url.pathExtension
        return (1...count).map { url.deletingLastPathComponent().appendingPathComponent("\(base)-\($0).\(suffix)").path }
    }
}
