import Diffusion
import Foundation
import Tensors

/// Small PNG previews of x_t and the predicted x0 while a job samples.
enum PreviewImages {
    /// Images shown side by side in a preview.
    static let shownImages = 4

    /// A pixel model's batch `[N, C, H, W]` in [-1, 1]: the first few images in a row, as base64 PNG.
    static func pixel(_ batch: Tensor) -> String? {
        guard batch.rank == 4, [1, 3].contains(batch.shape[1]) else { return nil }
        let shown = Swift.min(shownImages, batch.shape[0])
        let images = noGrad { batch.narrowed(axis: 0, start: 0, length: shown).contiguous() }
        return try? Data(PNG.encode(makeGrid(images: images, columns: shown, padding: 1), compressionLevel: 1)).base64EncodedString()
    }

    /// Stable Diffusion v1's linear map of the four latent channels to RGB (A1111's cheap approximation).
    static let latentToRGB: [[Float]] = [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ]

    /// Latents `[N, 4, h, w]` as an approximate RGB preview at latent resolution, as base64 PNG.
    static func latent(_ latents: Tensor) -> String? {
        guard latents.rank == 4, latents.shape[1] >= 3 else { return nil }
        let (count, channels, height, width) = (latents.shape[0], latents.shape[1], latents.shape[2], latents.shape[3])
        let shown = Swift.min(shownImages, count)
        let values = noGrad { latents.narrowed(axis: 0, start: 0, length: shown).contiguous() }.toArray()
        let plane = height * width
        var rgb = [Float](repeating: 0, count: shown * 3 * plane)
        for image in 0..<shown {
            for pixel in 0..<plane {
                for output in 0..<3 {
                    var sum: Float = 0
                    if channels == 4 {
                        for input in 0..<4 { sum += values[(image * channels + input) * plane + pixel] * latentToRGB[input][output] }
                    } else {
                        sum = values[(image * channels + output) * plane + pixel] / 4
                    }
                    rgb[(image * 3 + output) * plane + pixel] = sum
                }
            }
        }
        let tensor = Tensor(rgb, shape: [shown, 3, height, width])
        return try? Data(PNG.encode(makeGrid(images: tensor, columns: shown, padding: 1), compressionLevel: 1)).base64EncodedString()
    }
}
