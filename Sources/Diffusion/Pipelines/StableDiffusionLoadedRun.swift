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
    ///   - mask: inpainting mask for `initImage` (instead of `request.mask`, a path).
    public static func generate(_ request: StableDiffusionRequest, pipeline: StableDiffusionPipeline, initImage: PixelImage? = nil,
                                mask: PixelImage? = nil, log: ((String) -> Void)? = nil,
                                onStep: ((StableDiffusionStep) throws -> Void)? = nil) throws -> StableDiffusionImages {
        try generate(request, inputs: check(request, initImage: initImage, mask: mask), pipeline: pipeline,
                     preview: preview(for: request, pipeline: pipeline), log: log, onStep: onStep)
    }

    /// The generation of a checked request (``run(_:progressOutput:log:onStep:)`` checks before loading the pipeline).
    static func generate(_ request: StableDiffusionRequest, inputs: Inputs, pipeline: StableDiffusionPipeline, preview: StableDiffusionPreview?,
                         log: ((String) -> Void)?, onStep: ((StableDiffusionStep) throws -> Void)?) throws -> StableDiffusionImages {
        let start = Date()
        var parameters = try makeParameters(request, inputs: inputs, pipeline: pipeline)
        parameters.preview = preview
        var generator = RandomGenerator(seed: request.seed)
        let output = try pipeline.generate(parameters, generator: &generator, onStep: onStep)
        output.warnings.forEach { log?("warning: " + $0) }
        return StableDiffusionImages(images: StableDiffusionImageProcessor.pixelImages(output.images),
                                     schedulerName: type(of: try pipeline.makeScheduler(inputs.kind)).className,
                                     steps: output.timesteps.count, seconds: Date().timeIntervalSince(start), warnings: output.warnings)
    }
}
