import Foundation
import NN
import Tensors

extension StableDiffusionPipeline {
    /// Generates images as diffusers' `StableDiffusionPipeline.__call__` (text-to-image) or
    /// `StableDiffusionImg2ImgPipeline.__call__` (when `parameters.initImage` is set) computes them.
    ///
    /// Text-to-image: prompt embeddings (``encodePrompt(_:negativePrompts:imagesPerPrompt:classifierFreeGuidance:clipSkip:)``),
    /// latents = unit noise × `init_noise_sigma`; at every timestep the UNet sees
    /// `scale_model_input(latents)` (the batch doubled, unconditional half first, when the guidance
    /// scale is above 1: one UNet call), the guided prediction `uncond + s · (text − uncond)`
    /// (rescaled by `guidance_rescale`), and the scheduler steps. The latents are divided by the VAE's
    /// `scaling_factor` and decoded; images are `(x / 2 + 0.5)` clamped to [0, 1]. The VAE's
    /// `shift_factor` is not applied, as diffusers' Stable Diffusion pipelines do not.
    ///
    /// Image-to-image: the schedule of `steps` is cut as diffusers' `get_timesteps` does (the last
    /// `int(steps × strength)` steps); the init image is encoded, the posterior sampled and scaled by
    /// `scaling_factor`, and `scheduler.add_noise` noises it to the first remaining timestep.
    ///
    /// Inpainting (`parameters.mask` with the init image), as `StableDiffusionInpaintPipeline.__call__`:
    /// the schedule cut by `strength` as image-to-image; at strength 1 the latents start from noise ×
    /// `init_noise_sigma`, else from the init image's latents noised to the first timestep. With a
    /// 9-channel inpainting UNet, the mask (nearest-resized to the latents) and the latents of the masked
    /// image (`image × (mask < 0.5)`) are concatenated to the UNet's input at every step; with an ordinary
    /// UNet, after every step the latents outside the mask are replaced by the init latents noised to the
    /// next timestep (not noised after the last). `guidance_rescale` is not applied, as diffusers.
    ///
    /// - Parameters:
    ///   - generator: draws the starting latents, the posterior sample and the noise (unless given) and
    ///     the noise of stochastic schedulers (unless `parameters.stepNoise` gives it).
    ///   - onStep: called after every step (for previews, progress, or a server); throw to stop.
    public func generate(_ parameters: StableDiffusionParameters, generator: inout RandomGenerator,
                         onStep: ((StableDiffusionStep) throws -> Void)? = nil) throws -> StableDiffusionOutput {
        let plan = try check(parameters)
        let guidance = parameters.guidanceScale > 1 && unet.configuration.timeConditionProjectionDimension == nil
        let embeddings = try encodePrompt(parameters.prompts, negativePrompts: parameters.negativePrompts,
                                          imagesPerPrompt: parameters.imagesPerPrompt, classifierFreeGuidance: guidance,
                                          clipSkip: parameters.clipSkip)
        let context = noGrad { guidance ? Tensor.concatenate([embeddings.negative!, embeddings.prompt], axis: 0) : embeddings.prompt }

        let scheduler = try makeScheduler(parameters.scheduler, karras: parameters.karrasSigmas)
        if let ddim = scheduler as? DDIMScheduler { ddim.eta = Float(parameters.eta) }
        let timesteps = try Self.timesteps(scheduler: scheduler, parameters: parameters)
        let batch = parameters.batchSize
        let latentShape = [batch, vae.configuration.latentChannels, plan.height / vaeScaleFactor, plan.width / vaeScaleFactor]
        let stepNoise = try parameters.stepNoise.map { noises in
            guard noises.count == timesteps.count else {
                throw StableDiffusionError("\(noises.count) step noise tensors given; this request runs \(timesteps.count) timesteps")
            }
            return try noises.map { try given($0, shape: latentShape, name: "step noise") }
        }
        var latents: Tensor
        var inpainting: StableDiffusionInpainting?
        if let image = plan.initImage, let mask = parameters.mask {
            let prepared = try inpaintingLatents(image, mask: mask, batch: batch, timestep: timesteps[0], scheduler: scheduler,
                                                 parameters: parameters, generator: &generator)
            latents = prepared.latents
            inpainting = prepared.inpainting
        } else if let image = plan.initImage {
            latents = try imageLatents(image, batch: batch, timestep: timesteps[0], scheduler: scheduler, parameters: parameters,
                                       generator: &generator)
        } else {
            let noise = try parameters.latents.map { try given($0, shape: latentShape, name: "latents") }
                ?? Tensor.randn(latentShape, generator: &generator)
            latents = noGrad { noise * scheduler.initNoiseSigma }
        }

        let timestepCondition = unet.configuration.timeConditionProjectionDimension.map {
            Self.guidanceScaleEmbedding(Float(parameters.guidanceScale - 1), dimension: $0, batch: batch)
        }
        let rescale = plan.initImage == nil && guidance ? Float(parameters.guidanceRescale) : 0
        let scale = Float(parameters.guidanceScale)
        let clipGuidance = parameters.clipGuidance.flatMap { $0.scale > 0 ? $0 : nil }
        let clipText = try clipGuidance.map { clip in
            let ids = try clip.prompt.map { try tokenizer.tokenize([$0], padding: .maximumLength, truncation: true, maximumLength: promptLength).ids }
            return clip.textEmbeddings(ids: ids ?? embeddings.promptIDs, imagesPerPrompt: ids == nil ? parameters.imagesPerPrompt : batch)
        }
        for (index, timestep) in timesteps.enumerated() {
            var prediction = guidedNoisePrediction(latents, timestep: timestep, scheduler: scheduler, context: context,
                                                   timestepCondition: timestepCondition, guidance: guidance, scale: scale, rescale: rescale,
                                                   modelInput: inpainting.map { inpainting in { inpainting.modelInput($0, guidance: guidance) } })
            if let clipGuidance, let clipText {
                let guided = try clipGuidance.guide(latents: latents, timestep: timestep, index: index, noisePrediction: prediction,
                                                    textEmbeddings: clipText, scheduler: scheduler, vae: vae) { leaf in
                    var input = scheduler.scaleModelInput(leaf, timestep: timestep)
                    if let inpainting { input = inpainting.modelInput(input, guidance: false) }
                    return unet(input, timestep: timestep, encoderHiddenStates: embeddings.prompt, timestepCondition: timestepCondition)
                }
                prediction = guided.noisePrediction
                latents = guided.latents
            }
            let result = noGrad { scheduler.step(prediction, timestep: timestep, sample: latents, noise: stepNoise?[index], generator: &generator) }
            latents = result.prevSample
            if let inpainting { latents = noGrad { inpainting.blend(latents, index: index, timesteps: timesteps, scheduler: scheduler) } }
            if let onStep {
                let preview = parameters.preview.map { $0.images(result.predOriginalSample) }
                try onStep(StableDiffusionStep(index: index, count: timesteps.count, timestep: timestep, latents: latents,
                                               predictedOriginal: result.predOriginalSample, preview: preview))
            }
        }
        let images = decodeAfterDenoising(latents)
        return StableDiffusionOutput(images: images, latents: latents, timesteps: timesteps, embeddings: embeddings)
    }

    /// The timesteps a generation runs (after `scheduler.setTimesteps(parameters.steps)`): all of them for
    /// text-to-image; for image-to-image diffusers' `get_timesteps`: `init_timestep = min(int(steps × strength), steps)`,
    /// starting at `(steps − init_timestep) × order`.
    public func timesteps(for parameters: StableDiffusionParameters) throws -> [Float] {
        try Self.timesteps(scheduler: try makeScheduler(parameters.scheduler, karras: parameters.karrasSigmas), parameters: parameters)
    }

    /// A fresh scheduler (see ``makeScheduler(_:)``), with Karras sigmas when `karras` is true.
    public func makeScheduler(_ kind: SchedulerKind?, karras: Bool) throws -> any Scheduler {
        guard karras else { return try makeScheduler(kind) }
        let kind = kind ?? SchedulerKind(rawValue: type(of: scheduler).className) ?? .pndm
        return try Schedulers.make(kind, configuration: try Self.karrasConfiguration(scheduler.configuration, kind: kind))
    }

    /// `configuration` with `use_karras_sigmas` set, or an error naming the scheduler when diffusers' class has no
    /// Karras sigmas (DDPM, DDIM, PNDM, Euler ancestral).
    static func karrasConfiguration(_ configuration: SchedulerConfiguration, kind: SchedulerKind?) throws -> SchedulerConfiguration {
        if let kind, !kind.schedulerType.configurationDefaults.contains(where: { $0.key == "use_karras_sigmas" }) {
            let having = SchedulerKind.allCases.filter { $0.schedulerType.configurationDefaults.contains { $0.key == "use_karras_sigmas" } }
            throw StableDiffusionError("--karras: diffusers' \(kind.rawValue) has no Karras sigmas (use_karras_sigmas); "
                                       + "these schedulers have them: " + having.map(\.rawValue).joined(separator: ", "))
        }
        var result = configuration
        try result.set("use_karras_sigmas", .bool(true))
        return result
    }

    static func timesteps(scheduler: any Scheduler, parameters: StableDiffusionParameters) throws -> [Float] {
        try scheduler.setTimesteps(parameters.steps)
        let all = scheduler.timesteps
        guard parameters.initImage != nil else { return all }
        let initial = Swift.min(Int(Double(parameters.steps) * parameters.strength), parameters.steps)
        let start = Swift.max(parameters.steps - initial, 0) * scheduler.order
        guard start < all.count else {
            throw StableDiffusionError("strength \(parameters.strength) with \(parameters.steps) steps leaves no step to run; "
                                       + "raise the strength or the steps")
        }
        return Array(all[start...])
    }

    /// Latents to images in [0, 1]: `vae.decode(latents / scaling_factor)`, then `(x / 2 + 0.5)` clamped.
    public func decodeLatents(_ latents: Tensor) -> Tensor {
        noGrad {
            let decoded = vae.decode(latents / Float(vae.configuration.scalingFactor))
            return (decoded / 2 + 0.5).clamped(min: 0, max: 1)
        }
    }

    /// One denoising step's noise prediction (without gradients): the UNet on `latents` scaled for `scheduler`,
    /// and with classifier-free `guidance` on the doubled batch (`context` and the rows of the prediction hold the
    /// unconditional half first), `unconditional + scale · (text − unconditional)`, rescaled when `rescale` > 0.
    /// `modelInput` adapts the scaled input (an inpainting UNet's extra channels). The lone and the batched
    /// text-to-image runs step with it.
    func guidedNoisePrediction(_ latents: Tensor, timestep: Float, scheduler: any Scheduler, context: Tensor, timestepCondition: Tensor?,
                               guidance: Bool, scale: Float, rescale: Float, modelInput: ((Tensor) -> Tensor)? = nil) -> Tensor {
        noGrad {
            let batch = latents.shape[0]
            let doubled = guidance ? Tensor.concatenate([latents, latents], axis: 0) : latents
            var input = scheduler.scaleModelInput(doubled, timestep: timestep)
            if let modelInput { input = modelInput(input) }
            var prediction = unet(input, timestep: timestep, encoderHiddenStates: context,
                                  timestepCondition: timestepCondition.map { guidance ? Tensor.concatenate([$0, $0], axis: 0) : $0 })
            if guidance {
                let unconditional = prediction.narrowed(axis: 0, start: 0, length: batch)
                let text = prediction.narrowed(axis: 0, start: batch, length: batch)
                prediction = unconditional + (text - unconditional) * scale
                if rescale > 0 { prediction = Self.rescaleNoise(prediction, text: text, guidanceRescale: rescale) }
            }
            return prediction
        }
    }

    /// diffusers' `rescale_noise_cfg`: the guided prediction scaled to the text prediction's
    /// standard deviation (per example, Bessel-corrected), mixed back by `guidanceRescale`.
    public static func rescaleNoise(_ guided: Tensor, text: Tensor, guidanceRescale: Float) -> Tensor {
        let axes = Array(1..<guided.rank)
        let textDeviation = text.variance(axes: axes, correction: 1, keepDims: true).sqrt()
        let guidedDeviation = guided.variance(axes: axes, correction: 1, keepDims: true).sqrt()
        let rescaled = guided * (textDeviation / guidedDeviation)
        return rescaled * guidanceRescale + guided * (1 - guidanceRescale)
    }

    /// diffusers' `get_guidance_scale_embedding` (for UNets with `time_cond_proj_dim`): sinusoids of `w · 1000`.
    public static func guidanceScaleEmbedding(_ scale: Float, dimension: Int, batch: Int) -> Tensor {
        let half = dimension / 2
        let step = Float(Foundation.log(10000.0)) / Float(half - 1)
        let w = scale * 1000
        var row = (0..<half).map { w * Foundation.exp(Float($0) * -step) }
        row = row.map { Foundation.sin($0) } + row.map { Foundation.cos($0) }
        if dimension % 2 == 1 { row.append(0) }
        return Tensor(Array((0..<batch).map { _ in row }.joined()), shape: [batch, dimension])
    }

    // MARK: Checks and image-to-image latents

    /// What `check` settled.
    struct Plan {
        var height: Int
        var width: Int
        var initImage: Tensor?
    }

    /// Everything that can be wrong with a request, before any work.
    func check(_ parameters: StableDiffusionParameters) throws -> Plan {
        guard !parameters.prompts.isEmpty else { throw StableDiffusionError("no prompt given") }
        guard parameters.steps >= 1 else { throw StableDiffusionError("steps must be at least 1, got \(parameters.steps)") }
        guard parameters.imagesPerPrompt >= 1 else {
            throw StableDiffusionError("images per prompt must be at least 1, got \(parameters.imagesPerPrompt)")
        }
        if let negatives = parameters.negativePrompts, negatives.count != 1, negatives.count != parameters.prompts.count {
            throw StableDiffusionError("\(negatives.count) negative prompts for \(parameters.prompts.count) prompts; give one, or one per prompt")
        }
        guard parameters.guidanceRescale >= 0 && parameters.guidanceRescale <= 1 else {
            throw StableDiffusionError("guidance rescale must be in [0, 1], got \(parameters.guidanceRescale)")
        }
        if let image = parameters.initImage {
            guard parameters.strength >= 0 && parameters.strength <= 1 else {
                throw StableDiffusionError("strength must be in [0, 1], got \(parameters.strength)")
            }
            guard image.rank == 4, image.shape[1] == vae.configuration.inChannels else {
                throw StableDiffusionError("the init image must be [images, \(vae.configuration.inChannels), height, width], got \(image.shape)")
            }
            let (height, width) = (image.shape[2], image.shape[3])
            guard height % vaeScaleFactor == 0 && width % vaeScaleFactor == 0 else {
                throw StableDiffusionError("the init image is \(width)×\(height); its sides must be multiples of \(vaeScaleFactor) "
                                           + "(StableDiffusionImageProcessor.preprocess resizes it)")
            }
            if let given = parameters.height, given != height { throw StableDiffusionError("height \(given) differs from the init image's \(height)") }
            if let given = parameters.width, given != width { throw StableDiffusionError("width \(given) differs from the init image's \(width)") }
            try checkInpainting(parameters, image: image)
            let images = image.shape[0]
            guard parameters.batchSize % images == 0 else {
                throw StableDiffusionError("\(images) init images cannot be spread over \(parameters.batchSize) images to generate")
            }
            return Plan(height: height, width: width, initImage: image)
        }
        if parameters.mask != nil { throw StableDiffusionError("a mask needs an init image (inpainting repaints part of an image)") }
        if hasInpaintingUNet {
            throw StableDiffusionError("this pipeline's UNet is an inpainting UNet (in_channels \(unet.configuration.inChannels)); "
                                       + "it needs an init image and a mask")
        }
        let height = parameters.height ?? defaultSize.height
        let width = parameters.width ?? defaultSize.width
        guard height > 0, width > 0, height % 8 == 0, width % 8 == 0 else {
            throw StableDiffusionError("height and width have to be divisible by 8 but are \(height) and \(width)")
        }
        return Plan(height: height, width: width, initImage: nil)
    }

    /// A given tensor of the expected shape, as float32.
    func given(_ tensor: Tensor, shape: [Int], name: String) throws -> Tensor {
        guard tensor.shape == shape else { throw StableDiffusionError("the given \(name) have shape \(tensor.shape); this request needs \(shape)") }
        return tensor.dataType == .float32 ? tensor : tensor.converted(to: .float32)
    }

    /// diffusers' img2img `prepare_latents`: the posterior sample × `scaling_factor`, repeated to the
    /// batch, noised by `add_noise` at `timestep`.
    private func imageLatents(_ image: Tensor, batch: Int, timestep: Float, scheduler: any Scheduler,
                              parameters: StableDiffusionParameters, generator: inout RandomGenerator) throws -> Tensor {
        var initial = try encodeImage(image, posteriorNoise: parameters.posteriorNoise, name: "posterior noise", generator: &generator)
        initial = noGrad { repeatedToBatch(initial, count: batch) }
        let noise = try parameters.noise.map { try given($0, shape: initial.shape, name: "noise") } ?? Tensor.randn(initial.shape, generator: &generator)
        return noGrad { scheduler.addNoise(initial, noise: noise, timesteps: Array(repeating: timestep, count: batch)) }
    }
}

extension StableDiffusionPipeline {
    /// Readies memory for the VAE decode: frees the bfloat16 paths' weight copies and gives back this
    /// process's pages of the UNet's and text encoder's weights where they are mapped from unwritten
    /// checkpoint files (`MappedPages`; 2.0 GB for Stable Diffusion 1.5 in 16 bits), so that the decode's
    /// activations do not come on top of them. The next image maps them again from the page cache
    /// (about 0.1 s for 2 GB). Weights in the process's own memory are left alone. Returns the bytes given back.
    @discardableResult
    public func releaseDenoisingMemory() -> Int {
        ComputeMode.releaseWeightCopies()
        return (unet.parameters() + textEncoder.parameters()).reduce(0) { $0 + MappedPages.release($1) }
    }

    /// The decode that ends a generation (`generate` and the server's batched run): the denoising
    /// memory given back first, and the decode's freed activations returned to the system after it, so
    /// that they do not stay cached under the next image's UNet weights.
    public func decodeAfterDenoising(_ latents: Tensor) -> Tensor {
        releaseDenoisingMemory()
        defer { BufferPool.shared.drain() }
        return decodeLatents(latents)
    }
}
