import Foundation
import NN
import Tensors

/// The parts of ``StableDiffusionRun/run(_:progressOutput:log:onStep:)`` that a caller with a pipeline already
/// loaded (a server) composes itself: the checked parameters, the preview decoder, the PNG `parameters` text.
extension StableDiffusionRun {
    /// The generation parameters of `request` for a loaded pipeline, after the checks `run` makes before any work
    /// (sizes, strength, the mask's size, Karras sigmas for the chosen scheduler): what `run` generates with.
    /// `initImage` and `mask` are pictures given in memory (an upload) instead of the request's paths.
    /// `request.preview` and `request.trace` are not read here (see ``preview(for:pipeline:)``).
    public static func parameters(for request: StableDiffusionRequest, pipeline: StableDiffusionPipeline,
                                  initImage: PixelImage? = nil, mask: PixelImage? = nil) throws -> StableDiffusionParameters {
        try makeParameters(request, inputs: try check(request, initImage: initImage, mask: mask), pipeline: pipeline)
    }

    /// The preview decoder a request asks for: ``StableDiffusionRequest/preview``, else the linear map when it asks for
    /// a trace, else nil. Loads a TAESD folder.
    public static func preview(for request: StableDiffusionRequest, pipeline: StableDiffusionPipeline) throws -> StableDiffusionPreview? {
        switch request.preview ?? (request.trace ? .linear : nil) {
        case .linear?:
            guard pipeline.vae.configuration.latentChannels == StableDiffusionPreview.linearFactors.count else {
                throw StableDiffusionError("the linear preview is for 4-channel latents; this VAE has "
                                           + "\(pipeline.vae.configuration.latentChannels): give a TAESD folder")
            }
            return .linear
        case .taesd(let folder)?: return .taesd(try AutoencoderTiny.load(folder: URL(fileURLWithPath: folder)))
        case nil: return nil
        }
    }

    /// The `parameters` text chunk of image `position` (0-based) of the `count` a request made: the web UI's form
    /// (``StableDiffusionInfotext``); the model is the pipeline folder's name. `fromImage`: whether the generation
    /// started from an init image (writes the denoising strength; nil: whether the request names one).
    public static func infotext(for request: StableDiffusionRequest, schedulerName: String, width: Int, height: Int,
                                fromImage: Bool? = nil, position: Int = 0, count: Int = 1) -> StableDiffusionInfotext {
        var infotext = StableDiffusionInfotext(
            prompt: request.prompt, negativePrompt: request.negativePrompt, steps: request.steps,
            sampler: StableDiffusionInfotext.samplerName(className: schedulerName), guidanceScale: request.guidanceScale,
            seed: request.seed, width: width, height: height,
            model: URL(fileURLWithPath: request.pipeline).standardizedFileURL.lastPathComponent)
        infotext.karras = request.karras
        infotext.strength = (fromImage ?? (request.initImage != nil)) ? request.strength : nil
        infotext.clipSkip = request.clipSkip
        infotext.guidanceRescale = request.guidanceRescale
        infotext.eta = schedulerName == SchedulerKind.ddim.rawValue ? request.eta : nil
        infotext.batchSize = count
        infotext.batchPosition = position
        infotext.loras = request.loras.map { (URL(fileURLWithPath: $0.path).lastPathComponent, $0.scale) }
        if let clip = request.clipGuidance {
            infotext.clipGuidance = "scale \(StableDiffusionInfotext.number(clip.scale)), "
                + (clip.useCutouts ? "\(clip.cutouts) cut-outs" : "no cut-outs")
                + (clip.throughUNet ? "" : ", through the VAE only")
                + ", model \(URL(fileURLWithPath: clip.model).standardizedFileURL.lastPathComponent)"
        }
        return infotext
    }

    /// What ``check(_:initImage:mask:)`` read before any model is loaded.
    struct Inputs {
        var kind: SchedulerKind?
        var picture: PixelImage?
        var mask: PixelImage?
        var latents: Tensor?
    }

    /// Every request error that needs no model: flags, sizes, the images (read here unless given), their sizes.
    static func check(_ request: StableDiffusionRequest, initImage: PixelImage? = nil, mask: PixelImage? = nil) throws -> Inputs {
        var inputs = Inputs()
        if let name = request.scheduler {
            guard let named = SchedulerNames.kind(name) else {
                throw StableDiffusionError("unknown scheduler \"\(name)\"; known: \(SchedulerNames.known)")
            }
            inputs.kind = named
        }
        guard request.count >= 1 else { throw StableDiffusionError("--count must be at least 1") }
        guard request.steps >= 1 else { throw StableDiffusionError("--steps must be at least 1, got \(request.steps)") }
        if let width = request.width, width % 8 != 0 || width <= 0 { throw StableDiffusionError("--width \(width) is not a positive multiple of 8") }
        if let height = request.height, height % 8 != 0 || height <= 0 { throw StableDiffusionError("--height \(height) is not a positive multiple of 8") }
        guard (0...1).contains(request.strength) else { throw StableDiffusionError("--strength must be in [0, 1], got \(request.strength)") }
        if let every = request.traceEvery, every < 1 { throw StableDiffusionError("--trace-every must be at least 1, got \(every)") }
        inputs.picture = try initImage ?? request.initImage.map { try ImageFile.read($0) }
        inputs.mask = try mask ?? request.mask.map { try ImageFile.read($0) }
        inputs.latents = try request.initLatents.map { try SampleRun.loadNoise($0) }
        if inputs.picture != nil && inputs.latents != nil {
            throw StableDiffusionError("--init-latents is for text-to-image; image-to-image draws its noise")
        }
        if inputs.picture != nil && (request.width != nil || request.height != nil) {
            throw StableDiffusionError("--width and --height do not apply with --init-image: the image's size, rounded down to "
                                       + "multiples of 8, is used (as diffusers' image-to-image pipeline does)")
        }
        if let mask = inputs.mask {
            guard let picture = inputs.picture else { throw StableDiffusionError("--mask needs --init-image: the image to repaint part of") }
            guard mask.width == picture.width, mask.height == picture.height else {
                let maskName = request.mask.map { "the mask \($0)" } ?? "the mask"
                let imageName = request.initImage.map { "the init image \($0)" } ?? "the init image"
                throw StableDiffusionError("\(maskName) is \(mask.width)×\(mask.height) but \(imageName) is "
                                           + "\(picture.width)×\(picture.height); they must be the same size")
            }
        }
        if request.karras { _ = try StableDiffusionPipeline.karrasConfiguration(SchedulerConfiguration(), kind: inputs.kind) }
        try request.clipGuidance?.check()
        return inputs
    }

    /// The generation's parameters from the request and what ``check(_:initImage:mask:)`` read.
    static func makeParameters(_ request: StableDiffusionRequest, inputs: Inputs,
                               pipeline: StableDiffusionPipeline) throws -> StableDiffusionParameters {
        var parameters = StableDiffusionParameters(prompt: request.prompt)
        parameters.negativePrompts = request.negativePrompt.map { [$0] }
        parameters.steps = request.steps
        parameters.guidanceScale = request.guidanceScale
        parameters.guidanceRescale = request.guidanceRescale
        parameters.clipSkip = request.clipSkip
        parameters.imagesPerPrompt = request.count
        parameters.scheduler = inputs.kind
        parameters.karrasSigmas = request.karras
        parameters.eta = request.eta
        parameters.latents = inputs.latents
        parameters.clipGuidance = try request.clipGuidance.map { try $0.make(seed: request.seed) }
        if let picture = inputs.picture {
            parameters.initImage = try StableDiffusionImageProcessor.preprocess(picture, scaleFactor: pipeline.vaeScaleFactor)
            parameters.mask = try inputs.mask.map { try StableDiffusionImageProcessor.preprocessMask($0, scaleFactor: pipeline.vaeScaleFactor) }
            parameters.strength = request.strength
        } else {
            parameters.width = request.width
            parameters.height = request.height
        }
        return parameters
    }
}
