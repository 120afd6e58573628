import Foundation
import NN
import Tensors

/// How latents become cheap preview pictures at every step (for `--trace` and a server's live
/// previews): far cheaper than the VAE's decoder.
public enum StableDiffusionPreview {
    /// A linear map of the four latent channels to RGB, at the latents' size (1/8 of the image's
    /// sides): the Stable Diffusion 1.x factors of ComfyUI's `latent_formats.SD15`
    /// (`rgb = latents · factors`, read as [-1, 1], then `(x + 1) / 2`). Only for 4-channel latents.
    case linear
    /// TAESD (diffusers' `AutoencoderTiny`, e.g. madebyollin/taesd): decodes the latents at full size.
    case taesd(AutoencoderTiny)

    /// ComfyUI's SD 1.5 latent-to-RGB factors, one row (R, G, B) per latent channel.
    public static let linearFactors: [[Float]] = [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]

    /// Preview pictures `[batch, 3, h, w]` in [0, 1] of latents `[batch, 4, h, w]` (the UNet's latent
    /// space, i.e. already × `scaling_factor`, as x_t and the predicted x0 of a step are).
    public func images(_ latents: Tensor) -> Tensor {
        switch self {
        case .linear: return Self.linearImages(latents)
        case .taesd(let decoder):
            // A pipeline with TAESD as its VAE decodes `latents / scaling_factor` with TAESD's scaling factor 1.
            return noGrad { (decoder.decode(latents.converted(to: .float32)) / 2 + 0.5).clamped(min: 0, max: 1) }
        }
    }

    /// `latents · linearFactors`, `(x + 1) / 2` clamped to [0, 1].
    static func linearImages(_ latents: Tensor) -> Tensor {
        precondition(latents.rank == 4 && latents.shape[1] == linearFactors.count,
                     "StableDiffusionPreview.linear: expected [batch, 4, h, w] latents, got \(latents.shape)")
        let (batch, channels, height, width) = (latents.shape[0], latents.shape[1], latents.shape[2], latents.shape[3])
        let plane = height * width
        let values = latents.contiguous().converted(to: .float32).toArray()
        var output = [Float](repeating: 0, count: batch * 3 * plane)
        for image in 0..<batch {
            for color in 0..<3 {
                let target = (image * 3 + color) * plane
                for channel in 0..<channels {
                    let factor = linearFactors[channel][color]
                    let source = (image * channels + channel) * plane
                    for pixel in 0..<plane { output[target + pixel] += values[source + pixel] * factor }
                }
                for pixel in 0..<plane { output[target + pixel] = Swift.min(Swift.max((output[target + pixel] + 1) / 2, 0), 1) }
            }
        }
        return Tensor(output, shape: [batch, 3, height, width])
    }

    /// A trace strip of `frames` (x_t and predicted x0 previews `[batch, 3, h, w]` in [0, 1], in step order):
    /// for each of the first `rows` images, a row of x_t and a row of predicted x0, one column per frame,
    /// 2 pixels of black between tiles (as `diffuse sample --trace`).
    public static func traceStrip(_ frames: [(latents: Tensor, predictedOriginal: Tensor)], rows: Int = 4) -> PixelImage? {
        guard let first = frames.first else { return nil }
        let shown = Swift.min(rows, first.latents.shape[0])
        var tiles: [Tensor] = []
        for example in 0..<shown {
            for useOriginal in [false, true] {
                for frame in frames {
                    let source = useOriginal ? frame.predictedOriginal : frame.latents
                    tiles.append(source.narrowed(axis: 0, start: example, length: 1).contiguous())
                }
            }
        }
        let images = noGrad { Tensor.concatenate(tiles, axis: 0) * 2 - 1 }
        return makeGrid(images: images, columns: frames.count)
    }
}
