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
    /// - Parameters:
    ///   - generator: draws the starting latents, the posterior sample and the noise (unless given) and
    ///     the noise of stochastic schedulers.
    ///   - onStep: called after every step (for previews, progress, or a server); throw to stop.
    public func generate(_ parameters: StableDiffusionParameters, generator: inout RandomGenerator,
                         onStep: ((StableDiffusionStep) throws -> Void)? = nil) throws -> StableDiffusionOutput {
        let plan = try check(parameters)
        let guidance = parameters.guidanceScale > 1 && unet.configuration.timeConditionProjectionDimension == nil
        let embeddings = try encodePrompt(parameters.prompts, negativePrompts: parameters.negativePrompts,
                                          imagesPerPrompt: parameters.imagesPerPrompt, classifierFreeGuidance: guidance,
                                          clipSkip: parameters.clipSkip)
        let context = noGrad { guidance ? Tensor.concatenate([embeddings.negative!, embeddings.prompt], axis: 0) : embeddings.prompt }

        let scheduler = try makeScheduler(parameters.scheduler)
        if let ddim = scheduler as? DDIMScheduler { ddim.eta = Float(parameters.eta) }
        let timesteps = try Self.timesteps(scheduler: scheduler, parameters: parameters)
        let batch = parameters.batchSize
        var latents: Tensor
        if let image = plan.initImage {
            latents = try imageLatents(image, batch: batch, timestep: timesteps[0], scheduler: scheduler, parameters: parameters,
                                       generator: &generator)
        } else {
            let shape = [batch, unet.configuration.inChannels, plan.height / vaeScaleFactor, plan.width / vaeScaleFactor]
            let noise = try parameters.latents.map { try given($0, shape: shape, name: "latents") } ?? Tensor.randn(shape, generator: &generator)
            latents = noGrad { noise * scheduler.initNoiseSigma }
        }

        let timestepCondition = unet.configuration.timeConditionProjectionDimension.map {
            Self.guidanceScaleEmbedding(Float(parameters.guidanceScale - 1), dimension: $0, batch: batch)
        }
        let rescale = plan.initImage == nil && guidance ? Float(parameters.guidanceRescale) : 0
        let scale = Float(parameters.guidanceScale)
        for (index, timestep) in timesteps.enumerated() {
            let result: SchedulerStepOutput = noGrad {
                let doubled = guidance ? Tensor.concatenate([latents, latents], axis: 0) : latents
                let input = scheduler.scaleModelInput(doubled, timestep: timestep)
                var prediction = unet(input, timestep: timestep, encoderHiddenStates: context,
                                      timestepCondition: timestepCondition.map { guidance ? Tensor.concatenate([$0, $0], axis: 0) : $0 })
                if guidance {
                    let unconditional = prediction.narrowed(axis: 0, start: 0, length: batch)
                    let text = prediction.narrowed(axis: 0, start: batch, length: batch)
                    prediction = unconditional + (text - unconditional) * scale
                    if rescale > 0 { prediction = Self.rescaleNoise(prediction, text: text, guidanceRescale: rescale) }
                }
                return scheduler.step(prediction, timestep: timestep, sample: latents, noise: nil, generator: &generator)
            }
            latents = result.prevSample
            try onStep?(StableDiffusionStep(index: index, count: timesteps.count, timestep: timestep, latents: latents,
                                            predictedOriginal: result.predOriginalSample))
        }
        let images = noGrad { decodeLatents(latents) }
        return StableDiffusionOutput(images: images, latents: latents, timesteps: timesteps, embeddings: embeddings)
    }

    /// The timesteps a generation runs (after `scheduler.setTimesteps(parameters.steps)`): all of them for
    /// text-to-image; for image-to-image diffusers' `get_timesteps`: `init_timestep = min(int(steps × strength), steps)`,
    /// starting at `(steps − init_timestep) × order`.
    public func timesteps(for parameters: StableDiffusionParameters) throws -> [Float] {
        try Self.timesteps(scheduler: try makeScheduler(parameters.scheduler), parameters: parameters)
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
            let images = image.shape[0]
            guard parameters.batchSize % images == 0 else {
                throw StableDiffusionError("\(images) init images cannot be spread over \(parameters.batchSize) images to generate")
            }
            return Plan(height: height, width: width, initImage: image)
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
        let posterior = noGrad { vae.encode(image) }
        let draw = try parameters.posteriorNoise.map { try given($0, shape: posterior.mean.shape, name: "posterior noise") }
            ?? Tensor.randn(posterior.mean.shape, generator: &generator)
        var initial = noGrad { posterior.sample(noise: draw) * Float(vae.configuration.scalingFactor) }
        if initial.shape[0] < batch {
            initial = noGrad { Tensor.concatenate(Array(repeating: initial, count: batch / initial.shape[0]), axis: 0) }
        }
        let noise = try parameters.noise.map { try given($0, shape: initial.shape, name: "noise") } ?? Tensor.randn(initial.shape, generator: &generator)
        return noGrad { scheduler.addNoise(initial, noise: noise, timesteps: Array(repeating: timestep, count: batch)) }
    }
}
