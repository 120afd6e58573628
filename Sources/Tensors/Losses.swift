import Foundation

extension Tensor {
    /// Mean squared error (PyTorch's `F.mse_loss`, reduction mean).
    public static func mseLoss(_ prediction: Tensor, _ target: Tensor) -> Tensor {
        fatalError("mseLoss: not implemented yet")
    }

    /// Mean absolute error (PyTorch's `F.l1_loss`, reduction mean).
    public static func l1Loss(_ prediction: Tensor, _ target: Tensor) -> Tensor {
        fatalError("l1Loss: not implemented yet")
    }

    /// Cross-entropy of `[N, classes]` logits against class indices (PyTorch's `F.cross_entropy`, reduction mean).
    public static func crossEntropy(logits: Tensor, targets: [Int]) -> Tensor {
        fatalError("crossEntropy: not implemented yet")
    }

    /// Zeroes each element with probability `probability` and scales the rest by `1/(1-p)`; identity when not training.
    public func dropout(probability: Float, training: Bool = true, generator: inout RandomGenerator) -> Tensor {
        fatalError("dropout: not implemented yet")
    }
}
