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
    /// Image-to-image: how much of the schedule runs (0…1).
    public var strength: Double = 0.8
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

    public init(pipeline: String, prompt: String) {
        self.pipeline = pipeline
        self.prompt = prompt
    }
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

    /// What to tell a person.
    public var reportLines: [String] {
        var lines = [String(format: "%d image%@, %@, %d timesteps, %.1f s (loading %.1f s)", paths.count, paths.count == 1 ? "" : "s",
                            schedulerName, steps, generateSeconds, loadSeconds)]
        if !componentsNotRun.isEmpty { lines.append("not run:     " + componentsNotRun.joined(separator: ", ")) }
        lines += paths.map { "wrote        \($0)" }
        return lines
    }
}

/// Runs a ``StableDiffusionRequest``.
public enum StableDiffusionRun {
    /// Checks the request, loads the pipeline, generates and writes the PNGs.
    /// - Parameters:
    ///   - progressOutput: where the live progress line goes (nil: none).
    ///   - log: receives warnings (truncated prompts) as they happen.
    ///   - onStep: every step of the generation (for previews or a server).
    public static func run(_ request: StableDiffusionRequest, progressOutput: ProgressOutput? = nil,
                           log: ((String) -> Void)? = nil,
                           onStep: ((StableDiffusionStep) throws -> Void)? = nil) throws -> StableDiffusionOutcome {
        var kind: SchedulerKind?
        if let name = request.scheduler {
            guard let named = SchedulerNames.kind(name) else {
                throw StableDiffusionError("unknown scheduler \"\(name)\"; known: \(SchedulerNames.known)")
            }
            kind = named
        }
        guard request.count >= 1 else { throw StableDiffusionError("--count must be at least 1") }
        if let width = request.width, width % 8 != 0 || width <= 0 { throw StableDiffusionError("--width \(width) is not a positive multiple of 8") }
        if let height = request.height, height % 8 != 0 || height <= 0 { throw StableDiffusionError("--height \(height) is not a positive multiple of 8") }
        let picture = try request.initImage.map { try ImageFile.read($0) }
        let latents = try request.initLatents.map { try SampleRun.loadNoise($0) }
        if picture != nil && latents != nil { throw StableDiffusionError("--init-latents is for text-to-image; image-to-image draws its noise") }
        if picture != nil && (request.width != nil || request.height != nil) {
            throw StableDiffusionError("--width and --height do not apply with --init-image: the image's size, rounded down to "
                                       + "multiples of 8, is used (as diffusers' image-to-image pipeline does)")
        }

        let loadStart = Date()
        let pipeline = try StableDiffusionPipeline.load(URL(fileURLWithPath: request.pipeline), variant: request.variant, options: request.singleFile,
                                                        precision: request.precision, scheduler: kind)
        let loadSeconds = Date().timeIntervalSince(loadStart)
        let start = Date()
        var parameters = StableDiffusionParameters(prompt: request.prompt)
        parameters.negativePrompts = request.negativePrompt.map { [$0] }
        parameters.steps = request.steps
        parameters.guidanceScale = request.guidanceScale
        parameters.guidanceRescale = request.guidanceRescale
        parameters.clipSkip = request.clipSkip
        parameters.imagesPerPrompt = request.count
        parameters.scheduler = kind
        parameters.eta = request.eta
        parameters.latents = latents
        if let picture {
            let image = try StableDiffusionImageProcessor.preprocess(picture, scaleFactor: pipeline.vaeScaleFactor)
            parameters.initImage = image
            parameters.strength = request.strength
        } else {
            parameters.width = request.width
            parameters.height = request.height
        }
        var generator = RandomGenerator(seed: request.seed)
        let total = try pipeline.timesteps(for: parameters).count
        let bar = progressOutput.map { ProgressBar(total: total, label: "generate", output: $0) }
        let output = try pipeline.generate(parameters, generator: &generator) { step in
            bar?.update(step: step.index + 1)
            try onStep?(step)
        }
        bar?.finish()
        output.warnings.forEach { log?("warning: " + $0) }
        let pictures = StableDiffusionImageProcessor.pixelImages(output.images)
        let paths = outputPaths(request.output, count: pictures.count)
        for (picture, path) in zip(pictures, paths) {
            try FileManager.default.createDirectory(at: URL(fileURLWithPath: path).deletingLastPathComponent(), withIntermediateDirectories: true)
            try PNG.write(picture, to: path)
        }
        return StableDiffusionOutcome(paths: paths, schedulerName: type(of: try pipeline.makeScheduler(kind)).className,
                                      steps: output.timesteps.count, loadSeconds: loadSeconds,
                                      generateSeconds: Date().timeIntervalSince(start), warnings: output.warnings,
                                      componentsNotRun: pipeline.componentsNotRun)
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
