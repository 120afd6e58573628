import Foundation
import Tensors

/// A small convolutional denoiser (conv 3×3 → group norm → SiLU → conv 3×3)
/// written directly on tensors, for the engine demo and the memory test,
/// before the module system exists.
public final class TinyConvNet {
    public let firstWeight: Tensor
    public let firstBias: Tensor
    public let normWeight: Tensor
    public let normBias: Tensor
    public let secondWeight: Tensor
    public let secondBias: Tensor
    public let groupCount: Int

    /// All trainable tensors.
    public var parameters: [Tensor] { [firstWeight, firstBias, normWeight, normBias, secondWeight, secondBias] }

    /// PyTorch's default conv initialisation: uniform in ±1/√fan-in.
    public init(channels: Int = 1, hidden: Int = 32, groupCount: Int = 8, seed: UInt64 = 0) {
        var generator = RandomGenerator(seed: seed)
        func uniform(_ shape: [Int], fanIn: Int) -> Tensor {
            let bound = 1 / Float(fanIn).squareRoot()
            return Tensor.rand(shape, low: -bound, high: bound, generator: &generator)
        }
        firstWeight = uniform([hidden, channels, 3, 3], fanIn: channels * 9)
        firstBias = uniform([hidden], fanIn: channels * 9)
        normWeight = Tensor.ones([hidden])
        normBias = Tensor.zeros([hidden])
        secondWeight = uniform([channels, hidden, 3, 3], fanIn: hidden * 9)
        secondBias = uniform([channels], fanIn: hidden * 9)
        self.groupCount = groupCount
        for parameter in parameters { parameter.requiresGrad = true }
    }

    /// The prediction for a batch `[N, channels, H, W]`.
    public func callAsFunction(_ input: Tensor) -> Tensor {
        let hidden = input.conv2d(weight: firstWeight, bias: firstBias, padding: 1)
            .groupNorm(groupCount: groupCount, weight: normWeight, bias: normBias)
            .silu()
        return hidden.conv2d(weight: secondWeight, bias: secondBias, padding: 1)
    }

    /// Plain SGD: `p ← p − learningRate · ∇p`, then clears the gradients.
    public func sgdStep(learningRate: Float) {
        noGrad {
            for parameter in parameters {
                guard let gradient = parameter.grad?.contiguousData() else { continue }
                let (values, slope) = (parameter.floatPointer, gradient.floatPointer)
                for index in 0..<parameter.count { values[index] -= learningRate * slope[index] }
                parameter.grad = nil
            }
        }
    }
}
