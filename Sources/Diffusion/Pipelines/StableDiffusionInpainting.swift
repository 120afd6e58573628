import Foundation
import NN
import Tensors

/// What inpainting adds to a generation, as diffusers' `StableDiffusionInpaintPipeline` prepares it:
/// the mask at the latents' size, the masked image's latents, and (for an ordinary 4-channel UNet)
/// the init image's latents and the noise that the blending after every step re-noises them with.
struct StableDiffusionInpainting {
    /// `[batch, 1, h, w]`: the binarized mask resized to the latents (nearest), 1 where to repaint.
    let mask: Tensor
    /// `[batch, latent channels, h, w]`: the VAE latents of `image × (mask < 0.5)` (× `scaling_factor`).
    let maskedImageLatents: Tensor
    /// `[batch, latent channels, h, w]`: the init image's latents (a 4-channel UNet, or strength below 1).
    let imageLatents: Tensor?
    /// The noise the latents started from.
    let noise: Tensor
    /// Whether the UNet takes the mask and the masked image's latents (a 9-channel inpainting UNet);
    /// otherwise the latents are blended after every step.
    let concatenates: Bool

    /// The UNet input: `scale_model_input(latents)` with the mask and the masked image's latents
    /// concatenated on the channels (an inpainting UNet; both doubled for classifier-free guidance).
    func modelInput(_ scaled: Tensor, guidance: Bool) -> Tensor {
        guard concatenates else { return scaled }
        let mask = guidance ? Tensor.concatenate([self.mask, self.mask], axis: 0) : self.mask
        let masked = guidance ? Tensor.concatenate([maskedImageLatents, maskedImageLatents], axis: 0) : maskedImageLatents
        return Tensor.concatenate([scaled, mask, masked], axis: 1)
    }

    /// After step `index` of `timesteps` (an ordinary UNet): `(1 − mask) · init_latents_proper + mask · latents`,
    /// where `init_latents_proper` is the init image's latents noised to the next timestep
    /// (`scheduler.add_noise`), and not noised after the last step.
    func blend(_ latents: Tensor, index: Int, timesteps: [Float], scheduler: any Scheduler) -> Tensor {
        guard !concatenates, let imageLatents else { return latents }
        var proper = imageLatents
        if index < timesteps.count - 1 {
            proper = scheduler.addNoise(imageLatents, noise: noise,
                                        timesteps: Array(repeating: timesteps[index + 1], count: imageLatents.shape[0]))
        }
        return (1 - mask) * proper + mask * latents
    }

    /// `image × (mask < 0.5)`: the init image with the pixels to repaint set to 0 (grey), the mask's
    /// images spread over the image's (or the other way round).
    static func maskedImage(_ image: Tensor, mask: Tensor) -> Tensor {
        let keep = Tensor(mask.contiguous().toArray().map { $0 < 0.5 ? 1 : 0 }, shape: mask.shape)
        return image * keep
    }
}

/// A tensor with `count` rows along the first axis, made by repeating it (`tensor.repeat(count / n, 1, 1, 1)`).
func repeatedToBatch(_ tensor: Tensor, count: Int) -> Tensor {
    guard tensor.shape[0] < count else { return tensor }
    return Tensor.concatenate(Array(repeating: tensor, count: count / tensor.shape[0]), axis: 0)
}

extension StableDiffusionPipeline {
    /// Checks an inpainting request's mask against the init image and the UNet, before any work.
    func checkInpainting(_ parameters: StableDiffusionParameters, image: Tensor) throws {
        guard let mask = parameters.mask else {
            if hasInpaintingUNet {
                throw StableDiffusionError("this pipeline's UNet is an inpainting UNet (in_channels \(unet.configuration.inChannels)); "
                                           + "it needs an init image and a mask")
            }
            return
        }
        guard mask.rank == 4, mask.shape[1] == 1 else {
            throw StableDiffusionError("the mask must be [masks, 1, height, width], got \(mask.shape)")
        }
        guard mask.shape[2] == image.shape[2], mask.shape[3] == image.shape[3] else {
            throw StableDiffusionError("the mask is \(mask.shape[3])×\(mask.shape[2]) but the init image is "
                                       + "\(image.shape[3])×\(image.shape[2]); they must be the same size")
        }
        guard parameters.batchSize % mask.shape[0] == 0 else {
            throw StableDiffusionError("\(mask.shape[0]) masks cannot be spread over \(parameters.batchSize) images to generate")
        }
        guard image.shape[0] == mask.shape[0] || image.shape[0] == 1 || mask.shape[0] == 1 else {
            throw StableDiffusionError("\(mask.shape[0]) masks for \(image.shape[0]) init images; give one, or one per image")
        }
    }

    /// diffusers' inpainting `prepare_latents` and `prepare_mask_latents`: returns the starting latents and
    /// what the loop needs. The generator's draws, in diffusers' order: the init image's posterior sample
    /// (a 4-channel UNet, or strength below 1), the noise, the masked image's posterior sample.
    func inpaintingLatents(_ image: Tensor, mask: Tensor, batch: Int, timestep: Float, scheduler: any Scheduler,
                           parameters: StableDiffusionParameters,
                           generator: inout RandomGenerator) throws -> (latents: Tensor, inpainting: StableDiffusionInpainting) {
        let concatenates = hasInpaintingUNet
        let strengthIsMax = parameters.strength == 1
        var imageLatents: Tensor?
        if !concatenates || !strengthIsMax {
            let latents = try encodeImage(image, posteriorNoise: parameters.posteriorNoise, name: "posterior noise", generator: &generator)
            imageLatents = noGrad { repeatedToBatch(latents, count: batch) }
        }
        let shape = [batch, vae.configuration.latentChannels, image.shape[2] / vaeScaleFactor, image.shape[3] / vaeScaleFactor]
        let noise = try parameters.noise.map { try given($0, shape: shape, name: "noise") } ?? Tensor.randn(shape, generator: &generator)
        let latents: Tensor = noGrad {
            if strengthIsMax { return noise * scheduler.initNoiseSigma }
            return scheduler.addNoise(imageLatents!, noise: noise, timesteps: Array(repeating: timestep, count: batch))
        }
        let masked = StableDiffusionInpainting.maskedImage(image, mask: mask)
        let maskedLatents = try encodeImage(masked, posteriorNoise: parameters.maskedImagePosteriorNoise,
                                            name: "masked image posterior noise", generator: &generator)
        let latentMask = StableDiffusionImageProcessor.latentMask(mask, scaleFactor: vaeScaleFactor)
        let inpainting = noGrad {
            StableDiffusionInpainting(mask: repeatedToBatch(latentMask, count: batch), maskedImageLatents: repeatedToBatch(maskedLatents, count: batch),
                                      imageLatents: imageLatents, noise: noise, concatenates: concatenates)
        }
        return (latents, inpainting)
    }

    /// diffusers' `_encode_vae_image`: the VAE posterior's sample (from `posteriorNoise`, or drawn) × `scaling_factor`.
    func encodeImage(_ image: Tensor, posteriorNoise: Tensor?, name: String, generator: inout RandomGenerator) throws -> Tensor {
        let posterior = noGrad { vae.encode(image) }
        let draw = try posteriorNoise.map { try given($0, shape: posterior.mean.shape, name: name) }
            ?? Tensor.randn(posterior.mean.shape, generator: &generator)
        return noGrad { posterior.sample(noise: draw) * Float(vae.configuration.scalingFactor) }
    }
}
