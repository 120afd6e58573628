import Foundation
import Tensors

/// Group normalisation (PyTorch's `nn.GroupNorm`).
public final class GroupNorm: Module, UnaryLayer {
    public let weight: Tensor?
    public let bias: Tensor?
    public let groupCount: Int
    public let epsilon: Float

    public init(groupCount: Int, channels: Int, epsilon: Float = 1e-5, affine: Bool = true) {
        guard groupCount > 0, channels % groupCount == 0 else {
            fatalError("GroupNorm: \(channels) channels cannot be split into \(groupCount) groups")
        }
        self.groupCount = groupCount
        self.epsilon = epsilon
        weight = affine ? Initialization.constant(1, [channels]) : nil
        bias = affine ? Initialization.constant(0, [channels]) : nil
        super.init()
    }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        input.groupNorm(groupCount: groupCount, weight: weight, bias: bias, epsilon: epsilon)
    }
}

/// Layer normalisation over the last dimension (PyTorch's `nn.LayerNorm(dim)`).
public final class LayerNorm: Module, UnaryLayer {
    public let weight: Tensor?
    public let bias: Tensor?
    public let epsilon: Float

    public init(_ dimension: Int, epsilon: Float = 1e-5, affine: Bool = true) {
        self.epsilon = epsilon
        weight = affine ? Initialization.constant(1, [dimension]) : nil
        bias = affine ? Initialization.constant(0, [dimension]) : nil
        super.init()
    }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        input.layerNorm(normalizedRank: 1, weight: weight, bias: bias, epsilon: epsilon)
    }
}
