import Foundation
import Tensors

/// Random cut-outs of images for CLIP guidance, as diffusers' community
/// `MakeCutouts` makes them: each cut-out is a square crop of side
/// `⌊r^power · (max − min) + min⌋` (r uniform in [0, 1), so a larger power
/// favours small crops) at a uniform offset, resized to CLIP's input size;
/// here also flipped left–right with probability ½ and, for images no larger
/// than CLIP's input (where `MakeCutouts` could only take the whole image), with
/// sides down to `minimumFraction` of the image.
///
/// Differences from `MakeCutouts`: resizing is bilinear in both directions
/// (`MakeCutouts` averages with `adaptive_avg_pool2d`, which only shrinks); the
/// "small affine" augmentation is the crop's translation and scale, without
/// rotation or shear.
public struct CLIPCutouts: Sendable {
    /// Cut-outs per image and step.
    public var count: Int
    /// The power of the crop-size draw (`cut_power`).
    public var power: Float
    /// The smallest crop side as a fraction of the image side, when the image
    /// is no larger than CLIP's input.
    public var minimumFraction: Float
    /// Flip half of the cut-outs left–right.
    public var flips: Bool

    public init(count: Int = 4, power: Float = 1, minimumFraction: Float = 0.6, flips: Bool = true) {
        self.count = count
        self.power = power
        self.minimumFraction = minimumFraction
        self.flips = flips
    }

    /// `count` cut-outs of every image, `[count · N, C, size, size]`, cut-out
    /// major (all images' first cut-outs, then the second ones …), differentiable in `images`.
    public func callAsFunction(_ images: Tensor, size: Int, generator: inout RandomGenerator) -> Tensor {
        precondition(images.rank == 4, "CLIPCutouts: images must be [N, C, H, W], got \(images.shape)")
        let (height, width) = (images.shape[2], images.shape[3])
        let maximum = Swift.min(height, width)
        var minimum = Swift.min(maximum, size)
        if maximum <= size { minimum = Swift.max(1, Int((Float(maximum) * minimumFraction).rounded(.up))) }
        var pieces: [Tensor] = []
        for _ in 0..<Swift.max(1, count) {
            let draws = Tensor.rand([4], generator: &generator).toArray()
            let side = Swift.min(maximum, Int(Foundation.pow(draws[0], power) * Float(maximum - minimum) + Float(minimum)))
            let top = Swift.min(height - side, Int(draws[1] * Float(height - side + 1)))
            let left = Swift.min(width - side, Int(draws[2] * Float(width - side + 1)))
            var cut = images.narrowed(axis: 2, start: top, length: side).narrowed(axis: 3, start: left, length: side)
            if side != size || cut.shape[2] != size { cut = cut.contiguous().resizedBilinear(height: size, width: size) }
            if flips && draws[3] < 0.5 { cut = cut.indexSelect(axis: 3, indices: Array((0..<size).reversed())) }
            pieces.append(cut)
        }
        return Tensor.concatenate(pieces, axis: 0)
    }
}
