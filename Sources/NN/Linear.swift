import Foundation
import Tensors

/// `y = x · Wᵀ + b` over the last dimension (PyTorch's `nn.Linear`).
public final class Linear: Module, UnaryLayer {
    /// `[outFeatures, inFeatures]`.
    public let weight: Tensor
    /// `[outFeatures]`, if any.
    public let bias: Tensor?
    /// Low-rank adapters added to the output (``LoRAAdapter``); not part of the state dict.
    public internal(set) var lora = LoRAAttachments()

    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true) {
        let bound = 1 / Float(inFeatures).squareRoot()
        weight = Initialization.uniform([outFeatures, inFeatures], bound: bound)
        self.bias = bias ? Initialization.uniform([outFeatures], bound: bound) : nil
        super.init()
    }

    public var inFeatures: Int { weight.shape[1] }
    public var outFeatures: Int { weight.shape[0] }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        guard input.shape.last == inFeatures else {
            fatalError("Linear: input shape \(input.shape) does not end in \(inFeatures) features (weight \(weight.shape))")
        }
        let output = input.linear(weight: weight, bias: bias)
        return lora.adapters.isEmpty ? output : addingLoRA(output, input: input)
    }
}
