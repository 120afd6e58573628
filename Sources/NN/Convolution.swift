import Foundation
import Tensors

/// 2-d convolution (PyTorch's `nn.Conv2d`, groups = 1).
public final class Conv2d: Module, UnaryLayer {
    /// `[outChannels, inChannels, kernel, kernel]`.
    public let weight: Tensor
    /// `[outChannels]`, if any.
    public let bias: Tensor?
    public let stride: Int
    public let padding: Int

    public init(_ inChannels: Int, _ outChannels: Int, kernelSize: Int, stride: Int = 1, padding: Int = 0, bias: Bool = true) {
        let bound = 1 / Float(inChannels * kernelSize * kernelSize).squareRoot()
        weight = Initialization.uniform([outChannels, inChannels, kernelSize, kernelSize], bound: bound)
        self.bias = bias ? Initialization.uniform([outChannels], bound: bound) : nil
        self.stride = stride
        self.padding = padding
        super.init()
    }

    public var inChannels: Int { weight.shape[1] }
    public var outChannels: Int { weight.shape[0] }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        input.conv2d(weight: weight, bias: bias, stride: stride, padding: padding)
    }
}
