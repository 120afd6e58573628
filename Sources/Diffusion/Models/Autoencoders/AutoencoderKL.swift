import Foundation
import NN
import Tensors

/// diffusers' `AutoencoderKL`: the variational autoencoder of Stable Diffusion,
/// with the same parameter names (`encoder.down_blocks.0.resnets.0.conv1.weight`,
/// `decoder.mid_block.attentions.0.to_q.weight`, `quant_conv.weight`, …), the
/// same `config.json` and the same outputs, so the `vae/` folder of every
/// Stable Diffusion 1.x and 2.x checkpoint loads.
///
/// ```swift
/// let vae = try AutoencoderKL.load(folder: URL(fileURLWithPath: "stable-diffusion-v1-5/vae"))
/// let latents = noGrad { vae.encode(images).sample(generator: &generator) * Float(vae.configuration.scalingFactor) }
/// let decoded = noGrad { vae.decode(latents / Float(vae.configuration.scalingFactor)) }
/// ```
///
/// Like diffusers, the model leaves `scaling_factor` and `shift_factor` to the
/// pipeline (`scaledLatents(_:)` / `unscaledLatents(_:)` apply them). Set
/// `usesSlicing` to encode and decode a batch one image at a time and
/// `usesTiling` to process large images in overlapping tiles blended
/// together (diffusers' `enable_slicing()` / `enable_tiling()`). Everything is
/// differentiable: decode under autograd for guidance, or train.
public final class AutoencoderKL: Module {
    public let encoder: AutoencoderKLEncoder
    public let decoder: AutoencoderKLDecoder
    /// `quant_conv` (nil when `use_quant_conv` is false).
    public let quantConvolution: Conv2d?
    /// `post_quant_conv` (nil when `use_post_quant_conv` is false).
    public let postQuantConvolution: Conv2d?

    public override class var stateDictKeys: [String: String] {
        ["quantConvolution": "quant_conv", "postQuantConvolution": "post_quant_conv"]
    }

    /// The configuration the model was built from.
    public let configuration: AutoencoderKLConfiguration
    /// What did not match when the weights were loaded by `load(folder:variant:strict:)`.
    public internal(set) var loadReport: StateDictReport?

    /// Encode and decode a batch one image at a time (diffusers' `use_slicing`).
    public var usesSlicing = false
    /// Encode and decode in overlapping tiles when the input is larger than a
    /// tile (diffusers' `use_tiling`).
    public var usesTiling = false
    /// The side of an image tile (`tile_sample_min_size`; by default `sample_size`).
    public var tileSampleSize: Int
    /// The side of a latent tile (`tile_latent_min_size`; by default `sample_size / 2^(blocks − 1)`).
    public var tileLatentSize: Int
    /// The fraction of a tile that overlaps its neighbour (`tile_overlap_factor`).
    public var tileOverlapFactor: Double = 0.25

    /// Builds a randomly initialised model. Throws `AutoencoderConfigurationError`
    /// naming the key when the configuration cannot build one.
    public init(configuration: AutoencoderKLConfiguration) throws {
        try configuration.validate()
        self.configuration = configuration
        encoder = AutoencoderKLEncoder(configuration: configuration)
        decoder = AutoencoderKLDecoder(configuration: configuration)
        let latent = configuration.latentChannels
        quantConvolution = configuration.useQuantConvolution ? Conv2d(2 * latent, 2 * latent, kernelSize: 1) : nil
        postQuantConvolution = configuration.usePostQuantConvolution ? Conv2d(latent, latent, kernelSize: 1) : nil
        let side = configuration.sampleSize.tileSide
        tileSampleSize = side
        tileLatentSize = Int(Double(side) / Double(configuration.downsamplingFactor))
        super.init()
    }

    // MARK: Encoding

    /// The posterior of `images` `[batch, inChannels, height, width]` (in [−1, 1]),
    /// sliced and tiled as `usesSlicing` and `usesTiling` say.
    public func encode(_ images: Tensor) -> DiagonalGaussianDistribution {
        DiagonalGaussianDistribution(moments: encodeMoments(images))
    }

    /// The encoder's output after `quant_conv`: `[batch, 2·latentChannels, h, w]`.
    public func encodeMoments(_ images: Tensor) -> Tensor {
        guard images.rank == 4, images.shape[1] == configuration.inChannels else {
            fatalError("AutoencoderKL: images must be [batch, \(configuration.inChannels), height, width], got \(images.shape)")
        }
        if usesSlicing && images.shape[0] > 1 {
            return Tensor.concatenate((0..<images.shape[0]).map { encodeOne(images.narrowed(axis: 0, start: $0, length: 1)) }, axis: 0)
        }
        return encodeOne(images)
    }

    private func encodeOne(_ images: Tensor) -> Tensor {
        if usesTiling && (images.shape[3] > tileSampleSize || images.shape[2] > tileSampleSize) {
            return tiledEncodeMoments(images)
        }
        return encodeTile(images)
    }

    /// Encoder and `quant_conv` on one tile (or the whole image).
    func encodeTile(_ images: Tensor) -> Tensor {
        let moments = encoder(images)
        return quantConvolution.map { $0(moments) } ?? moments
    }

    // MARK: Decoding

    /// The images `[batch, outChannels, h·f, w·f]` of latents `[batch, latentChannels, h, w]`
    /// (unscaled: divide by `scaling_factor` first, or use `unscaledLatents`).
    public func decode(_ latents: Tensor) -> Tensor {
        guard latents.rank == 4, latents.shape[1] == configuration.latentChannels else {
            fatalError("AutoencoderKL: latents must be [batch, \(configuration.latentChannels), height, width], got \(latents.shape)")
        }
        if usesSlicing && latents.shape[0] > 1 {
            return Tensor.concatenate((0..<latents.shape[0]).map { decodeOne(latents.narrowed(axis: 0, start: $0, length: 1)) }, axis: 0)
        }
        return decodeOne(latents)
    }

    private func decodeOne(_ latents: Tensor) -> Tensor {
        if usesTiling && (latents.shape[3] > tileLatentSize || latents.shape[2] > tileLatentSize) {
            return tiledDecode(latents)
        }
        return decodeTile(latents)
    }

    /// `post_quant_conv` and the decoder on one tile (or the whole latent).
    func decodeTile(_ latents: Tensor) -> Tensor {
        decoder(postQuantConvolution.map { $0(latents) } ?? latents)
    }

    // MARK: Whole model

    /// diffusers' `forward`: encode, take the posterior's mode (or a sample with
    /// the given standard normal `noise`), decode.
    public func callAsFunction(_ images: Tensor, noise: Tensor? = nil) -> Tensor {
        let posterior = encode(images)
        return decode(noise.map { posterior.sample(noise: $0) } ?? posterior.mode())
    }

    /// As `callAsFunction(_:noise:)`, sampling the posterior with `generator`.
    public func callAsFunction(_ images: Tensor, generator: inout RandomGenerator) -> Tensor {
        let posterior = encode(images)
        return decode(posterior.sample(generator: &generator))
    }

    // MARK: Latent scaling (the pipeline's side)

    /// Latents as the diffusion model sees them: `(z − shift_factor) · scaling_factor`.
    public func scaledLatents(_ latents: Tensor) -> Tensor {
        let shifted = configuration.shiftFactor.map { latents - Float($0) } ?? latents
        return shifted * Float(configuration.scalingFactor)
    }

    /// The inverse of `scaledLatents`: `z / scaling_factor + shift_factor`, ready for `decode`.
    public func unscaledLatents(_ latents: Tensor) -> Tensor {
        let unscaled = latents / Float(configuration.scalingFactor)
        return configuration.shiftFactor.map { unscaled + Float($0) } ?? unscaled
    }
}
