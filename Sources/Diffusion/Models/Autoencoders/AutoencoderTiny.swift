import Foundation
import NN
import Tensors

/// diffusers' `AutoencoderTiny`: TAESD, a small convolutional autoencoder with
/// Stable Diffusion's latent space, cheap enough to decode previews at every
/// sampling step. Parameter names `encoder.layers.*` and `decoder.layers.*`,
/// diffusers' `config.json`.
///
/// Unlike `AutoencoderKL`, encoding gives the latents directly (no
/// distribution). `usesSlicing` and `usesTiling` follow diffusers'
/// `enable_slicing()` / `enable_tiling()`; tiles are blended with diffusers'
/// masks. Encoding and decoding are differentiable; `callAsFunction` (the
/// byte-quantised round trip) is not.
public final class AutoencoderTiny: Module {
    public let encoder: AutoencoderTinyEncoder
    public let decoder: AutoencoderTinyDecoder

    /// The configuration the model was built from.
    public let configuration: AutoencoderTinyConfiguration
    /// What did not match when the weights were loaded by `load(folder:variant:strict:)`.
    public internal(set) var loadReport: StateDictReport?

    /// Encode and decode a batch one image at a time.
    public var usesSlicing = false
    /// Encode and decode in overlapping tiles.
    public var usesTiling = false
    /// diffusers' `spatial_scale_factor`: `2^out_channels` (8 for RGB, which is
    /// TAESD's downsampling; diffusers' tiling assumes it).
    public var spatialScaleFactor: Int
    /// The side of an image tile (`tile_sample_min_size`, 512).
    public var tileSampleSize = 512
    /// The side of a latent tile (`tile_latent_min_size`, 512 / `spatialScaleFactor`).
    public var tileLatentSize: Int
    /// The fraction of a tile blended with its neighbours (`tile_overlap_factor`).
    public var tileOverlapFactor: Double = 0.125

    /// Builds a randomly initialised model; throws `AutoencoderConfigurationError`
    /// naming the key when the configuration cannot build one.
    public init(configuration: AutoencoderTinyConfiguration = AutoencoderTinyConfiguration()) throws {
        try configuration.validate()
        self.configuration = configuration
        encoder = AutoencoderTinyEncoder(configuration: configuration)
        decoder = AutoencoderTinyDecoder(configuration: configuration)
        spatialScaleFactor = 1 << configuration.outChannels
        tileLatentSize = 512 / (1 << configuration.outChannels)
        super.init()
    }

    /// Latents `[batch, latentChannels, H / f, W / f]` of images in [−1, 1].
    public func encode(_ images: Tensor) -> Tensor {
        guard images.rank == 4, images.shape[1] == configuration.inChannels else {
            fatalError("AutoencoderTiny: images must be [batch, \(configuration.inChannels), height, width], got \(images.shape)")
        }
        return sliced(images) { usesTiling ? tiledEncode($0) : encoder($0) }
    }

    /// Images in [−1, 1] of latents `[batch, latentChannels, h, w]` (unscaled, as `encode` gives them).
    public func decode(_ latents: Tensor) -> Tensor {
        guard latents.rank == 4, latents.shape[1] == configuration.latentChannels else {
            fatalError("AutoencoderTiny: latents must be [batch, \(configuration.latentChannels), height, width], got \(latents.shape)")
        }
        return sliced(latents) { usesTiling ? tiledDecode($0) : decoder($0) }
    }

    private func sliced(_ input: Tensor, _ body: (Tensor) -> Tensor) -> Tensor {
        guard usesSlicing && input.shape[0] > 1 else { return body(input) }
        return Tensor.concatenate((0..<input.shape[0]).map { body(input.narrowed(axis: 0, start: $0, length: 1)) }, axis: 0)
    }

    /// diffusers' `forward`: encode, store the latents as bytes (`scale_latents`,
    /// ×255, rounded), read them back (`unscale_latents`) and decode. Not differentiable.
    public func callAsFunction(_ images: Tensor) -> Tensor {
        let latents = noGrad { encode(images) }
        let magnitude = Float(2 * configuration.latentMagnitude), shift = Float(configuration.latentShift)
        let restored = latents.toArray().map { value -> Float in
            let scaled = Swift.min(Swift.max(value / magnitude + shift, 0), 1)
            let byte = (scaled * 255).rounded(.toNearestOrEven)
            return (byte / 255 - shift) * magnitude
        }
        return noGrad { decode(Tensor(restored, shape: latents.shape)) }
    }

    /// diffusers' `scale_latents`: raw latents → [0, 1] (`x / (2·magnitude) + shift`, clamped).
    public func scaleLatents(_ latents: Tensor) -> Tensor {
        (latents / Float(2 * configuration.latentMagnitude) + Float(configuration.latentShift)).clamped(min: 0, max: 1)
    }

    /// diffusers' `unscale_latents`: [0, 1] → raw latents.
    public func unscaleLatents(_ scaled: Tensor) -> Tensor {
        (scaled - Float(configuration.latentShift)) * Float(2 * configuration.latentMagnitude)
    }

    // MARK: Tiling (diffusers' `_tiled_encode` / `_tiled_decode`)

    /// Encodes `images` in tiles of `tileSampleSize` pixels.
    public func tiledEncode(_ images: Tensor) -> Tensor {
        let factor = spatialScaleFactor
        let blend = Int(Double(tileSampleSize) * tileOverlapFactor)
        let masks = Self.blendMask(count: Int((Double(tileSampleSize) / Double(factor)).rounded(.up)),
                                   divisor: Double(blend) / Double(factor) - 1)
        let output = [images.shape[0], configuration.latentChannels, images.shape[2] / factor, images.shape[3] / factor]
        return Self.tiled(images, tile: tileSampleSize, traverse: tileSampleSize - blend, output: output,
                          region: { ($0 / factor, ($0 + self.tileSampleSize) / factor) }, mask: masks, transform: encoder.callAsFunction)
    }

    /// Decodes `latents` in tiles of `tileLatentSize` latent pixels.
    public func tiledDecode(_ latents: Tensor) -> Tensor {
        let factor = spatialScaleFactor
        let blend = Int(Double(tileLatentSize) * tileOverlapFactor)
        let masks = Self.blendMask(count: tileLatentSize * factor, divisor: Double(blend * factor) - 1)
        let output = [latents.shape[0], configuration.outChannels, latents.shape[2] * factor, latents.shape[3] * factor]
        return Self.tiled(latents, tile: tileLatentSize, traverse: tileLatentSize - blend, output: output,
                          region: { ($0 * factor, ($0 + self.tileLatentSize) * factor) }, mask: masks, transform: decoder.callAsFunction)
    }

    /// `clamp(arange(count) / divisor, 0, 1)`, diffusers' one-dimensional blend ramp.
    static func blendMask(count: Int, divisor: Double) -> [Float] {
        (0..<count).map { Swift.min(Swift.max(Float($0) / Float(divisor), 0), 1) }
    }

    /// Starting from zeros of shape `output`, each tile's result replaces its
    /// region as `mask · tile + (1 − mask) · region`, where the mask is the
    /// product of the row ramp (ones for the first row of tiles) and the column
    /// ramp (ones for the first column). Written as slices and concatenations.
    static func tiled(_ input: Tensor, tile: Int, traverse: Int, output shape: [Int], region: (Int) -> (Int, Int), mask ramp: [Float],
                      transform: (Tensor) -> Tensor) -> Tensor {
        precondition(traverse > 0, "AutoencoderTiny tiling: the tile must be larger than its blended border")
        let (height, width) = (input.shape[2], input.shape[3])
        var output = Tensor.zeros(shape)
        for top in stride(from: 0, to: height, by: traverse) {
            for left in stride(from: 0, to: width, by: traverse) {
                let piece = input.narrowed(axis: 2, start: top, length: min(tile, height - top))
                    .narrowed(axis: 3, start: left, length: min(tile, width - left))
                let result = transform(piece)
                let (h, w) = (result.shape[2], result.shape[3])
                let (rowStart, rowEnd) = region(top), (columnStart, columnEnd) = region(left)
                let rows = min(rowEnd, shape[2]) - rowStart, columns = min(columnEnd, shape[3]) - columnStart
                precondition(rows == h && columns == w, "AutoencoderTiny tiling: a tile's result \(result.shape) does not fit its region \(rows)×\(columns)")
                var values = [Float](repeating: 1, count: h * w)
                for y in 0..<h {
                    for x in 0..<w {
                        values[y * w + x] = (top == 0 ? 1 : ramp[y]) * (left == 0 ? 1 : ramp[x])
                    }
                }
                let mask = Tensor(values, shape: [1, 1, h, w])
                let current = output.narrowed(axis: 2, start: rowStart, length: h).narrowed(axis: 3, start: columnStart, length: w)
                let blended = mask * result + (1 - mask) * current
                output = replacing(output, region: blended, top: rowStart, left: columnStart)
            }
        }
        return output
    }

    /// `tensor` with the block at (`top`, `left`) replaced by `block`.
    static func replacing(_ tensor: Tensor, region block: Tensor, top: Int, left: Int) -> Tensor {
        let (height, width) = (tensor.shape[2], tensor.shape[3])
        let (h, w) = (block.shape[2], block.shape[3])
        var band = [block]
        if left > 0 { band.insert(tensor.narrowed(axis: 2, start: top, length: h).narrowed(axis: 3, start: 0, length: left), at: 0) }
        if left + w < width {
            band.append(tensor.narrowed(axis: 2, start: top, length: h).narrowed(axis: 3, start: left + w, length: width - left - w))
        }
        var rows = [band.count == 1 ? band[0] : Tensor.concatenate(band, axis: 3)]
        if top > 0 { rows.insert(tensor.narrowed(axis: 2, start: 0, length: top), at: 0) }
        if top + h < height { rows.append(tensor.narrowed(axis: 2, start: top + h, length: height - top - h)) }
        return rows.count == 1 ? rows[0] : Tensor.concatenate(rows, axis: 2)
    }
}
