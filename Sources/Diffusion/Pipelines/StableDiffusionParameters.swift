import Foundation
import Tensors

/// What one Stable Diffusion generation does: diffusers' `StableDiffusionPipeline.__call__`
/// arguments (`StableDiffusionImg2ImgPipeline`'s when ``initImage`` is set, and
/// `StableDiffusionInpaintPipeline`'s when ``mask`` is set too).
public struct StableDiffusionParameters {
    /// The prompts; each makes ``imagesPerPrompt`` images.
    public var prompts: [String]
    /// One negative prompt per prompt, or one for all (nil: empty strings). Used only with
    /// classifier-free guidance.
    public var negativePrompts: [String]?
    /// Inference steps given to the scheduler's `set_timesteps` (image-to-image runs the last
    /// `steps × strength` of them).
    public var steps = 50
    /// Classifier-free guidance scale `s` of `uncond + s · (text − uncond)`; guidance (and the
    /// second half of the batch) only when above 1.
    public var guidanceScale: Double = 7.5
    /// `guidance_rescale` (text-to-image only, as diffusers): the guided prediction rescaled towards
    /// the text prediction's standard deviation, by this fraction.
    public var guidanceRescale: Double = 0
    /// `clip_skip`: take the hidden state this many layers before the last (through the final layer norm).
    public var clipSkip: Int?
    /// Image height and width in pixels, multiples of 8 (nil: the UNet's `sample_size` × the VAE factor,
    /// or the init image's size).
    public var height: Int?
    public var width: Int?
    /// `num_images_per_prompt`.
    public var imagesPerPrompt = 1
    /// The scheduler to run, built from the folder's scheduler configuration (nil: the folder's class).
    public var scheduler: SchedulerKind?
    /// Karras sigmas: the scheduler built with `use_karras_sigmas = true` (LMS, Euler, Heun, DPM-Solver++ and
    /// UniPC have them in diffusers; an error for the others).
    public var karrasSigmas = false
    /// DDIM's η (ignored by other schedulers, as in diffusers).
    public var eta: Double = 0
    /// Unit-variance starting latents `[prompts × imagesPerPrompt, latent channels, height / 8, width / 8]`
    /// (text-to-image; scaled by `init_noise_sigma` here). Nil: drawn from the generator.
    public var latents: Tensor?
    /// The noise of a stochastic scheduler (Euler ancestral, DDPM, DDIM with η > 0, SDE DPM-Solver), one unit-variance
    /// tensor per timestep the loop runs, each shaped like the latents, as diffusers' `randn_tensor` draws it in the
    /// scheduler's `step`. Nil: drawn from the generator. Deterministic schedulers ignore it.
    public var stepNoise: [Tensor]?

    /// Image-to-image: the init image, `[1 or batch, 3, H, W]` in [-1, 1] (see
    /// ``StableDiffusionImageProcessor/preprocess(_:scaleFactor:)``). Nil: text-to-image.
    public var initImage: Tensor?
    /// Image-to-image and inpainting: how much of the schedule runs, from 0 (the init image back) to 1
    /// (all steps). diffusers' image-to-image default is 0.8, its inpainting default 1.0 (with 1.0 the
    /// latents start from pure noise, as text-to-image).
    public var strength: Double = 0.8
    /// Image-to-image: the unit normal draw of the VAE posterior's sample, `[images, latent channels, h, w]` (nil: drawn).
    public var posteriorNoise: Tensor?
    /// Image-to-image: the noise `scheduler.add_noise` adds at the first timestep, shaped like the latents (nil: drawn).
    /// Inpainting: the starting noise (× `init_noise_sigma` at strength 1), also the noise the blending adds.
    public var noise: Tensor?

    /// Inpainting (with ``initImage``): where to repaint, `[1 or batch, 1, H, W]` of the init image's size,
    /// 1 to repaint and 0 to keep (see ``StableDiffusionImageProcessor/preprocessMask(_:scaleFactor:)``,
    /// which binarizes as diffusers' mask processor). With a 9-channel inpainting UNet the mask (resized to
    /// the latents) and the masked image's latents are concatenated to the latents; with an ordinary
    /// UNet the latents outside the mask are replaced by the noised init latents after every step.
    /// Nil: image-to-image (or text-to-image).
    public var mask: Tensor?
    /// Inpainting: the unit normal draw of the VAE posterior's sample for the masked image,
    /// `[images, latent channels, h, w]` (nil: drawn).
    public var maskedImagePosteriorNoise: Tensor?

    /// How to make a preview of the predicted x0 at every step for the step callback (nil: none).
    public var preview: StableDiffusionPreview?
    /// CLIP guidance in latent space (diffusers' community `CLIPGuidedStableDiffusion`), applied at every step
    /// after classifier-free guidance when its scale is above 0 (nil: none).
    public var clipGuidance: StableDiffusionCLIPGuidance?

    public init(prompts: [String]) { self.prompts = prompts }

    public init(prompt: String) { self.prompts = [prompt] }

    /// Images generated: prompts × images per prompt.
    public var batchSize: Int { prompts.count * imagesPerPrompt }
}

/// What the per-step callback of a generation sees.
public struct StableDiffusionStep {
    /// 0-based step number.
    public let index: Int
    /// Steps in this generation.
    public let count: Int
    /// The timestep the UNet was evaluated at.
    public let timestep: Float
    /// The latents after this step (x_{t−1}).
    public let latents: Tensor
    /// The scheduler's prediction of the clean latents at this step.
    public let predictedOriginal: Tensor
    /// Preview pictures of ``predictedOriginal``, `[batch, 3, h, w]` in [0, 1], when the parameters ask
    /// for previews (``StableDiffusionParameters/preview``); nil otherwise.
    public let preview: Tensor?

    public init(index: Int, count: Int, timestep: Float, latents: Tensor, predictedOriginal: Tensor, preview: Tensor? = nil) {
        self.index = index
        self.count = count
        self.timestep = timestep
        self.latents = latents
        self.predictedOriginal = predictedOriginal
        self.preview = preview
    }

    /// ``preview`` as 8-bit pictures, one per image (empty without previews).
    public var previewPictures: [PixelImage] { preview.map { StableDiffusionImageProcessor.pixelImages($0) } ?? [] }
}

/// What a generation returns.
public struct StableDiffusionOutput {
    /// `[batch, 3, height, width]` in [0, 1]: diffusers' `output_type="pt"` images.
    public let images: Tensor
    /// The final latents (before division by `scaling_factor`).
    public let latents: Tensor
    /// The timesteps the loop ran.
    public let timesteps: [Float]
    /// The prompt embeddings used (text, and negative with guidance).
    public let embeddings: StableDiffusionPromptEmbeddings
    /// Warnings for a person: truncated prompts.
    public var warnings: [String] { embeddings.warnings }
}
