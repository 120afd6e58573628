import Foundation
import Tensors

/// A lookup table of vectors (PyTorch's `nn.Embedding`).
public final class Embedding: Module {
    /// `[count, dimension]`.
    public let weight: Tensor

    public init(_ count: Int, _ dimension: Int) {
        weight = Initialization.normal([count, dimension])
        super.init()
    }

    /// Rows for `indices`, shaped `[indices.count, dimension]`.
    public func callAsFunction(_ indices: [Int]) -> Tensor {
        weight.embedding(indices: indices)
    }
}

/// Zeroes activations with probability `probability` while training (PyTorch's `nn.Dropout`).
public final class Dropout: Module, UnaryLayer {
    public let probability: Float
    /// The generator for the masks.
    public var generator: RandomGenerator
    /// Which rows of the global batch this layer's input holds in data-parallel training: part
    /// `part` of `parts` equal parts stacked along axis 0 (rank r of N). The mask is drawn for the
    /// whole global batch and this part's rows kept, so N ranks draw one process's masks.
    /// `(0, 1)`, the default: the input is the whole batch.
    public var batchPart: (part: Int, parts: Int) = (0, 1)

    public init(_ probability: Float = 0.5, seed: UInt64 = 0) {
        self.probability = probability
        generator = RandomGenerator(seed: seed)
        super.init()
    }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        guard isTraining && probability > 0 else { return input }
        return input.dropout(probability: probability, training: true, generator: &generator, part: batchPart.part, of: batchPart.parts)
    }
}

extension Module {
    /// Sets ``Dropout/batchPart`` of every dropout layer in this module's tree: its inputs are
    /// part `part` of `parts` of the global batch (axis 0).
    public func setDropoutBatchPart(_ part: Int, of parts: Int) {
        precondition(parts >= 1 && part >= 0 && part < parts, "setDropoutBatchPart: part \(part) of \(parts)")
        for (_, module) in namedModules() {
            if let dropout = module as? Dropout { dropout.batchPart = (part, parts) }
        }
    }
}

/// A parameter-free activation function as a module.
public final class Activation: Module, UnaryLayer {
    /// The activations the models use, by their PyTorch/diffusers names.
    public enum Function: String, Sendable, Codable {
        case silu, swish, relu, gelu, geluTanh = "gelu_tanh", quickGelu = "quick_gelu", tanh, sigmoid, mish
    }

    public let function: Function

    public init(_ function: Function) {
        self.function = function
        super.init()
    }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        switch function {
        case .silu, .swish: return input.silu()
        case .relu: return input.relu()
        case .gelu: return input.gelu()
        case .geluTanh: return input.gelu(approximate: true)
        case .quickGelu: return input.quickGelu()
        case .tanh: return input.tanh()
        case .sigmoid: return input.sigmoid()
        case .mish: return input * (input.exp() + 1).log().tanh()
        }
    }
}

/// Layers applied in order; children are named `0`, `1`, … like PyTorch's `nn.Sequential`.
public final class Sequential: Module, UnaryLayer {
    public let layers: [UnaryLayer]

    public init(_ layers: [UnaryLayer]) {
        self.layers = layers
        super.init()
    }

    public override func children() -> [(name: String, module: Module)] {
        layers.enumerated().map { ("\($0.offset)", $0.element as Module) }
    }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        layers.reduce(input) { $1($0) }
    }
}
