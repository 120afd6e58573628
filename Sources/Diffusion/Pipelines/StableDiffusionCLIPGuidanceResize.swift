import Foundation
import Tensors

/// torchvision's `transforms.Resize(size)` of an image batch, as diffusers' community CLIP-guided
/// pipeline resizes the decoded image to CLIP's input without cut-outs: the shorter side to `size`
/// (the longer to `⌊size · long / short⌋`) by bilinear interpolation with antialiasing
/// (`F.interpolate(…, mode="bilinear", align_corners=False, antialias=True)`, torchvision's default for
/// tensors), unchanged when the shorter side already is `size`.
///
/// The interpolation is two weight matrices (PyTorch's `_upsample_bilinear2d_aa` weights: a triangle filter
/// widened by the scale when shrinking, renormalised at the borders), so it is differentiable by `matmul`.
public enum StableDiffusionCLIPGuidanceResize {
    /// `[N, C, H, W]` with its shorter side resized to `size`.
    public static func shorterSide(_ images: Tensor, to size: Int) -> Tensor {
        precondition(images.rank == 4, "resize: images must be [N, C, H, W], got \(images.shape)")
        let (height, width) = (images.shape[2], images.shape[3])
        let (short, long) = (Swift.min(height, width), Swift.max(height, width))
        guard short != size else { return images }
        let other = Int(Double(size) * Double(long) / Double(short))
        let (newHeight, newWidth) = height <= width ? (size, other) : (other, size)
        return resized(images, height: newHeight, width: newWidth)
    }

    /// `[N, C, H, W]` resized to `height × width` (antialiased bilinear).
    public static func resized(_ images: Tensor, height: Int, width: Int) -> Tensor {
        let rows = Tensor(weights(input: images.shape[2], output: height), shape: [height, images.shape[2]])
        let columns = Tensor(weights(input: images.shape[3], output: width), shape: [width, images.shape[3]])
        return rows.matmul(images.contiguous()).matmul(columns.transposed().contiguous())
    }

    /// The `[output, input]` interpolation weights of one axis, row major.
    static func weights(input: Int, output: Int) -> [Float] {
        let scale = Double(input) / Double(output)
        let support = scale >= 1 ? scale : 1
        let inverse = scale >= 1 ? 1 / scale : 1
        var result = [Float](repeating: 0, count: output * input)
        for row in 0..<output {
            let center = scale * (Double(row) + 0.5)
            let first = Swift.max(Int(center - support + 0.5), 0)
            let last = Swift.min(Int(center + support + 0.5), input)
            var values: [Double] = []
            for column in first..<last {
                values.append(Swift.max(0, 1 - abs((Double(column) - center + 0.5) * inverse)))
            }
            let total = values.reduce(0, +)
            for (offset, value) in values.enumerated() where total > 0 {
                result[row * input + first + offset] = Float(value / total)
            }
        }
        return result
    }
}
