import Foundation

extension Tensor {
    /// Group normalisation of `[N, C, …]` (PyTorch's `F.group_norm`), with optional affine `[C]` weight and bias.
    public func groupNorm(groupCount: Int, weight: Tensor? = nil, bias: Tensor? = nil, epsilon: Float = 1e-5) -> Tensor {
        fatalError("groupNorm: not implemented yet")
    }

    /// Layer normalisation over the last `normalizedRank` dimensions (PyTorch's `F.layer_norm`), optional affine weight and bias.
    public func layerNorm(normalizedRank: Int = 1, weight: Tensor? = nil, bias: Tensor? = nil, epsilon: Float = 1e-5) -> Tensor {
        fatalError("layerNorm: not implemented yet")
    }
}
