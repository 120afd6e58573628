import Foundation
import NN
import Tensors

/// What ``StableDiffusionRun/generate(_:pipeline:initImage:log:onStep:)`` made: the images in memory.
public struct StableDiffusionImages: Sendable {
    /// The generated images, 8-bit RGB, in order.
    public let images: [PixelImage]
    /// The scheduler's class name.
    public let schedulerName: String
    /// Steps run (fewer than asked with image-to-image).
    public let steps: Int
    /// Seconds generating (text encoding, denoising and decoding).
    public let seconds: Double
    /// Truncated prompts.
    public let warnings: [String]
}

extension StableDiffusionRun {
    /// A ``StableDiffusionRequest`` with a pipeline already loaded (a server loads it once and runs
    /// many requests): the request's checks and parameters as ``run(_:progressOutput:log:onStep:)``
    /// sets them, the images kept in memory instead of written. `request.pipeline`, `variant`,
    /// `precision` and `output` are not read (the pipeline is loaded).
    ///
    /// - Parameters:
    ///   - initImage: image-to-image from this picture (instead of `request.initImage`, a path).
    ///   - onStep: every step (previews, progress); throw to stop the generation (cancellation).
    public static func generate(_ request: StableDiffusionRequest, pipeline: StableDiffusionPipeline, initImage: PixelImage? = nil,
                                log: ((String) -> Void)? = nil,
                                onStep: ((StableDiffusionStep) throws -> Void)? = nil) throws -> StableDiffusionImages {
        let start = Date()
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
        let picture = try initImage ?? request.initImage.map { try ImageFile.read($0) }
        let latents = try request.initLatents.map { try SampleRun.loadNoise($0) }
        if picture != nil && latents != nil { throw StableDiffusionError("--init-latents is for text-to-image; image-to-image draws its noise") }
        if picture != nil && (request.width != nil || request.height != nil) {
            throw StableDiffusionError("--width and --height do not apply with --init-image: the image's size, rounded down to "
                                       + "multiples of 8, is used (as diffusers' image-to-image pipeline does)")
        }
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
            parameters.initImage = try StableDiffusionImageProcessor.preprocess(picture, scaleFactor: pipeline.vaeScaleFactor)
            parameters.strength = request.strength
        } else {
            parameters.width = request.width
            parameters.height = request.height
        }
        var generator = RandomGenerator(seed: request.seed)
        let output = try pipeline.generate(parameters, generator: &generator, onStep: onStep)
        output.warnings.forEach { log?("warning: " + $0) }
        return StableDiffusionImages(images: StableDiffusionImageProcessor.pixelImages(output.images),
                                     schedulerName: type(of: try pipeline.makeScheduler(kind)).className,
                                     steps: output.timesteps.count, seconds: Date().timeIntervalSince(start), warnings: output.warnings)
    }
}
