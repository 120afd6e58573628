import Foundation
import Tensors

/// The generator new layers draw their initial weights from (PyTorch's
/// `torch.manual_seed` for parameters). Seed it for reproducible models.
public enum Initialization {
    public nonisolated(unsafe) static var generator = RandomGenerator(seed: 0)

    /// Restarts the parameter generator from `seed`.
    public static func seed(_ seed: UInt64) { generator = RandomGenerator(seed: seed) }

    /// True inside ``withoutInitialValues(_:)``.
    public private(set) nonisolated(unsafe) static var skipsInitialValues = false

    /// Builds modules whose parameters will all be loaded from a checkpoint: inside `body`,
    /// new parameters get memory that is not written (no random numbers drawn, no pages
    /// touched), so loading a large model in 16 bits never holds a float32 copy of it.
    /// Load such a model strictly: a parameter the checkpoint lacks would keep garbage.
    public static func withoutInitialValues<Result>(_ body: () throws -> Result) rethrows -> Result {
        let previous = skipsInitialValues
        skipsInitialValues = true
        defer { skipsInitialValues = previous }
        return try body()
    }

    /// A trainable tensor of `shape` that is not written (inside ``withoutInitialValues(_:)``), or nil.
    private static func skipped(_ shape: [Int]) -> Tensor? {
        guard skipsInitialValues else { return nil }
        let tensor = Tensor.uninitialized(shape)
        tensor.requiresGrad = true
        return tensor
    }

    /// Uniform in ±bound: PyTorch's default for Linear and Conv2d weights and
    /// biases (kaiming-uniform with a = √5 gives bound 1/√fan-in).
    public static func uniform(_ shape: [Int], bound: Float) -> Tensor {
        if let skipped = skipped(shape) { return skipped }
        let tensor = Tensor.rand(shape, low: -bound, high: bound, generator: &generator)
        tensor.requiresGrad = true
        return tensor
    }

    /// Standard normal (PyTorch's default for Embedding).
    public static func normal(_ shape: [Int]) -> Tensor {
        if let skipped = skipped(shape) { return skipped }
        let tensor = Tensor.randn(shape, generator: &generator)
        tensor.requiresGrad = true
        return tensor
    }

    /// A trainable constant.
    public static func constant(_ value: Float, _ shape: [Int]) -> Tensor {
        if let skipped = skipped(shape) { return skipped }
        let tensor = Tensor.full(value, shape)
        tensor.requiresGrad = true
        return tensor
    }
}

/// A module with one input and one output, so it can sit in a `Sequential`.
public protocol UnaryLayer: Module {
    func callAsFunction(_ input: Tensor) -> Tensor
}
