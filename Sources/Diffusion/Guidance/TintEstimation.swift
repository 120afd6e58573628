import Foundation
import Tensors

/// Estimates the two colours of a tinted image (an object in one colour on a
/// background of another, as the tinted datasets make them): the background
/// is the per-channel median of a ring of border pixels, the foreground the
/// mean colour of the pixels that differ from it by at least half the largest
/// difference. An image with no pixel farther than `flatThreshold` from its
/// background has no object: its foreground is its background.
public enum TintEstimation {
    /// Border ring width in pixels.
    public static let ringWidth = 2
    /// The L1 distance (in [0, 1] units summed over channels) below which an image counts as flat.
    public static let flatThreshold: Float = 0.15

    /// Foreground and background RGB in [0, 1] of every image of `images`
    /// (`[N, 3, H, W]` in the model's range [-1, 1], clamped there first).
    public static func colors(of images: Tensor) -> [(foreground: [Float], background: [Float])] {
        precondition(images.rank == 4 && images.shape[1] == 3, "TintEstimation: images must be [N, 3, H, W], got \(images.shape)")
        let values = noGrad { images.clamped(min: -1, max: 1) }.toArray().map { ($0 + 1) / 2 }
        let (count, height, width) = (images.shape[0], images.shape[2], images.shape[3])
        let plane = height * width
        return (0..<count).map { index in
            let base = index * 3 * plane
            func pixel(_ position: Int) -> [Float] { (0..<3).map { values[base + $0 * plane + position] } }
            var ring: [[Float]] = [[], [], []]
            for y in 0..<height {
                for x in 0..<width where y < ringWidth || y >= height - ringWidth || x < ringWidth || x >= width - ringWidth {
                    let colour = pixel(y * width + x)
                    for channel in 0..<3 { ring[channel].append(colour[channel]) }
                }
            }
            let background = ring.map { channel -> Float in
                let sorted = channel.sorted()
                return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
            }
            let distances = (0..<plane).map { position in zip(pixel(position), background).reduce(Float(0)) { $0 + abs($1.0 - $1.1) } }
            let largest = distances.max() ?? 0
            guard largest >= flatThreshold else { return (background, background) }
            var sum: [Float] = [0, 0, 0]
            var selected = 0
            for position in 0..<plane where distances[position] >= largest / 2 {
                let colour = pixel(position)
                for channel in 0..<3 { sum[channel] += colour[channel] }
                selected += 1
            }
            return (sum.map { $0 / Float(selected) }, background)
        }
    }

    /// The mean over channels of |a − b|, in [0, 1].
    public static func distance(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).reduce(Float(0)) { $0 + abs($1.0 - $1.1) } / Float(a.count)
    }
}
