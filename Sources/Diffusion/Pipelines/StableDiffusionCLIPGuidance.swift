import Foundation
import NN
import Tensors

/// CLIP guidance of Stable Diffusion in latent space, as diffusers' community pipeline
/// `CLIPGuidedStableDiffusion` (examples/community/clip_guided_stable_diffusion.py) does it in its `cond_fn`,
/// once per step after classifier-free guidance:
///
/// 1. the noise is predicted again, with gradients, from the latents (a leaf) and the prompt's
///    (conditional) embeddings;
/// 2. DDIM, DDPM, PNDM, DPM-Solver++, UniPC: x0 = (x − √(1−ᾱₜ)·ε)/√ᾱₜ and the sample decoded is
///    `x0 · f + x · (1 − f)` with f = √(1−ᾱₜ); LMS and Euler: `x − σ·ε` with the step's σ;
/// 3. that sample / `scaling_factor` goes through the VAE decoder, `(image / 2 + 0.5)` clamped to [0, 1];
/// 4. with cut-outs, `cutouts` random crops (`MakeCutouts`, see below); without, torchvision's
///    `Resize(image_size)` of the shorter side (``StableDiffusionCLIPGuidanceResize``); CLIP's normalisation;
/// 5. the loss is `scale ·` the spherical distance `2 · arcsin(‖a − b‖ / 2)²` of the unit image embeddings
///    to the prompt's unit CLIP text embedding: averaged over the images without cut-outs; with cut-outs
///    averaged over the cut-outs and summed over the images (both as the community pipeline);
/// 6. g = −∂loss/∂x; alpha schedulers: ε ← ε_cfg − √(1−ᾱₜ) · g; sigma schedulers: x ← x + σ² · g (ε_cfg kept).
///
/// Differences: the community pipeline supports PNDM, DDIM, DPM-Solver++ and LMS; here DDPM, UniPC and Euler
/// (ancestral) are accepted too, by the same two formulas (Heun is refused). Cut-outs are ``CLIPCutouts``
/// without flips and with `MakeCutouts`' sizes, resized bilinearly (`MakeCutouts` uses `adaptive_avg_pool2d`),
/// drawn from this guidance's own generator. A non-square image without cut-outs is centre-cropped to a
/// square after the resize (the community pipeline would hand CLIP a non-square image).
/// ``throughUNet`` false skips the second UNet pass: x0 is made from the classifier-free-guided prediction,
/// held constant, so the gradient reaches the latents only through the VAE (cheaper, not the community's).
public final class StableDiffusionCLIPGuidance {
    /// The CLIP model (transformers' `CLIPModel`: text and vision towers with projections).
    public let model: CLIPModel
    /// `clip_guidance_scale` (0: no guidance).
    public var scale: Float
    /// `num_cutouts`: cut-outs per image and step when ``useCutouts``.
    public var cutouts: Int
    /// `use_cutouts`; false: the whole image resized to CLIP's input size (deterministic).
    public var useCutouts: Bool
    /// `MakeCutouts`' `cut_power`.
    public var cutPower: Float
    /// Recompute the noise prediction with gradients (the community pipeline); false: see the type's notes.
    public var throughUNet: Bool
    /// `clip_prompt`: what CLIP compares the images with (nil: the generation's prompts).
    public var prompt: String?
    private var generator: RandomGenerator

    /// - Parameters:
    ///   - seed: the cut-outs' generator.
    public init(model: CLIPModel, scale: Float, cutouts: Int = 4, useCutouts: Bool = true, cutPower: Float = 1,
                throughUNet: Bool = true, prompt: String? = nil, seed: UInt64 = 0) {
        self.model = model
        self.scale = scale
        self.cutouts = cutouts
        self.useCutouts = useCutouts
        self.cutPower = cutPower
        self.throughUNet = throughUNet
        self.prompt = prompt
        generator = RandomGenerator(seed: seed)
        model.eval()
        model.freeze()
    }

    /// Loads a CLIP model folder in transformers' `CLIPModel` layout.
    public convenience init(folder: URL, scale: Float, cutouts: Int = 4, useCutouts: Bool = true, seed: UInt64 = 0) throws {
        self.init(model: try CLIPModel.load(folder: folder), scale: scale, cutouts: cutouts, useCutouts: useCutouts, seed: seed)
    }

    /// The unit CLIP text embeddings `[batch, projection_dim]` of padded token ids, each prompt's row repeated
    /// `imagesPerPrompt` times (`text_embeddings_clip`).
    public func textEmbeddings(ids: [[Int]], imagesPerPrompt: Int) -> Tensor {
        noGrad {
            let rows = ids.map { CLIPModel.normalized(model.textFeatures(ids: $0, batch: 1)) }
            let repeated = rows.flatMap { Array(repeating: $0, count: imagesPerPrompt) }
            return Tensor.concatenate(repeated, axis: 0)
        }
    }

    /// What one guided step gives back.
    public struct Step {
        /// The noise prediction the scheduler steps with.
        public var noisePrediction: Tensor
        /// The latents the scheduler steps from.
        public var latents: Tensor
        /// −∂loss/∂latents.
        public var gradient: Tensor
        /// The loss (scale included).
        public var loss: Float
    }

    /// `cond_fn`: the guided noise prediction and latents of one step.
    /// - Parameters:
    ///   - noisePrediction: the step's (classifier-free-guided) prediction, `noise_pred_original`.
    ///   - index: the step's index in the loop (sigma schedulers read σ by it, as the community pipeline).
    ///   - predictNoise: the UNet's conditional prediction from unscaled latents (scaled inside), with gradients.
    public func guide(latents: Tensor, timestep: Float, index: Int, noisePrediction: Tensor, textEmbeddings: Tensor,
                      scheduler: any Scheduler, vae: AutoencoderKL, predictNoise: (Tensor) -> Tensor) throws -> Step {
        let coefficient = try Self.coefficient(scheduler: scheduler, timestep: timestep, index: index)
        let leaf = latents.detach()
        leaf.requiresGrad = true
        let (loss, gradient): (Tensor, Tensor) = try SamplingGuidance.withFrozenParameters([vae, model]) {
            let noise = throughUNet ? predictNoise(leaf) : noisePrediction.detach()
            let sample: Tensor
            switch coefficient {
            case .alpha(let alphaProduct):
                let factor = (1 - alphaProduct).squareRoot()
                let original = (leaf - noise * factor) / alphaProduct.squareRoot()
                sample = original * factor + leaf * (1 - factor)
            case .sigma(let sigma):
                sample = leaf - noise * sigma
            }
            let decoded = vae.decode(sample * (1 / Float(vae.configuration.scalingFactor)))
            let images = (decoded / 2 + 0.5).clamped(min: 0, max: 1)
            let embeddings = CLIPModel.normalized(model.imageFeatures(Self.normalize(clipInput(images))))
            let distances = CLIPGuidanceLoss.sphericalDistance(embeddings, textEmbeddings)
            let batch = latents.shape[0]
            let loss = useCutouts
                ? distances.reshaped([distances.shape[0] / batch, batch]).mean(axis: 0).sum() * scale
                : distances.mean() * scale
            guard !loss.isLeaf else { throw StableDiffusionError("CLIP guidance: the loss does not depend on the latents") }
            return (loss, Tensors.gradients(of: loss, withRespectTo: [leaf])[0])
        }
        let ascent = noGrad { -gradient }
        let lossValue = loss.detach().toArray()[0]
        switch coefficient {
        case .alpha(let alphaProduct):
            let guided = noGrad { noisePrediction - ascent * (1 - alphaProduct).squareRoot() }
            return Step(noisePrediction: guided, latents: latents, gradient: ascent, loss: lossValue)
        case .sigma(let sigma):
            let moved = noGrad { latents + ascent * (sigma * sigma) }
            return Step(noisePrediction: noisePrediction, latents: moved, gradient: ascent, loss: lossValue)
        }
    }

    /// The images as CLIP's input: cut-outs, or the shorter side resized to CLIP's size (then a centre square).
    func clipInput(_ images: Tensor) -> Tensor {
        let size = model.configuration.vision.imageSize
        if useCutouts {
            let maker = CLIPCutouts(count: cutouts, power: cutPower, minimumFraction: 1, flips: false)
            return maker(images, size: size, generator: &generator)
        }
        var resized = StableDiffusionCLIPGuidanceResize.shorterSide(images, to: size)
        let (height, width) = (resized.shape[2], resized.shape[3])
        if height != width {
            resized = resized.narrowed(axis: 2, start: (height - size) / 2, length: size)
                .narrowed(axis: 3, start: (width - size) / 2, length: size)
        }
        return resized
    }

    /// transforms.Normalize with CLIP's mean and standard deviation, of images in [0, 1].
    static func normalize(_ images: Tensor) -> Tensor {
        let mean = Tensor(CLIPImageNormalization.mean, shape: [1, 3, 1, 1])
        let deviation = Tensor(CLIPImageNormalization.standardDeviation, shape: [1, 3, 1, 1])
        return (images - mean) / deviation
    }

    enum Coefficient {
        case alpha(Float)
        case sigma(Float)
    }

    static func coefficient(scheduler: any Scheduler, timestep: Float, index: Int) throws -> Coefficient {
        let sigmas: [Float]
        switch scheduler {
        case is DDIMScheduler, is DDPMScheduler, is PNDMScheduler, is DPMSolverMultistepScheduler, is UniPCMultistepScheduler:
            let training = Int(timestep)
            guard Float(training) == timestep, training >= 0, training < scheduler.noiseSchedule.alphasCumprod.count else {
                throw StableDiffusionError("CLIP guidance: timestep \(timestep) is not a training timestep")
            }
            return .alpha(scheduler.noiseSchedule.alphasCumprod[training])
        case let lms as LMSDiscreteScheduler: sigmas = lms.sigmas
        case let euler as EulerDiscreteScheduler: sigmas = euler.sigmas
        case let euler as EulerAncestralDiscreteScheduler: sigmas = euler.sigmas
        default:
            throw StableDiffusionError("CLIP guidance does not support \(type(of: scheduler).className) (as diffusers' community pipeline); "
                                       + "use ddim, pndm, dpm, unipc, ddpm, lms or euler")
        }
        guard index < sigmas.count else { throw StableDiffusionError("CLIP guidance: step \(index) has no sigma") }
        return .sigma(sigmas[index])
    }
}
