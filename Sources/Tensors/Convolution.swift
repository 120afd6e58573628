import Foundation

extension Tensor {
    /// 2-d convolution (PyTorch's `F.conv2d` with groups = 1).
    ///
    /// - Parameters:
    ///   - weight: `[outChannels, inChannels, kernelHeight, kernelWidth]`.
    ///   - bias: `[outChannels]` or nil.
    ///   - stride: step of the window in both directions.
    ///   - padding: zeros added on every side.
    /// - Returns: `[batch, outChannels, outHeight, outWidth]` (stored channels-last).
    public func conv2d(weight: Tensor, bias: Tensor? = nil, stride: Int = 1, padding: Int = 0) -> Tensor {
        fatalError("conv2d: not implemented yet")
    }
}
