import Foundation

extension Tensor {
    /// Max pooling over `[N, C, H, W]` (PyTorch's `F.max_pool2d`); `stride` defaults to `kernelSize`.
    public func maxPool2d(kernelSize: Int, stride: Int? = nil, padding: Int = 0) -> Tensor {
        fatalError("maxPool2d: not implemented yet")
    }

    /// Average pooling over `[N, C, H, W]` (PyTorch's `F.avg_pool2d`, count_include_pad = true).
    public func avgPool2d(kernelSize: Int, stride: Int? = nil, padding: Int = 0) -> Tensor {
        fatalError("avgPool2d: not implemented yet")
    }

    /// Nearest-neighbour upsampling by an integer factor (PyTorch's `F.interpolate(mode="nearest")`).
    public func upsampleNearest(scaleFactor: Int) -> Tensor {
        fatalError("upsampleNearest: not implemented yet")
    }

    /// Bilinear resize to `height × width` (PyTorch's `F.interpolate(mode="bilinear")`, antialias off).
    public func resizedBilinear(height: Int, width: Int, alignCorners: Bool = false) -> Tensor {
        fatalError("resizedBilinear: not implemented yet")
    }
}
