import Foundation
import NN
import Tensors

/// AdamW over two parameter groups, as open_clip and the CLIP paper train:
/// weight decay on the matrices (linear and convolution weights, embedding
/// tables) and none on what has fewer than two dimensions — LayerNorm gains
/// and biases, linear biases, the vision tower's class token and the
/// temperature `logit_scale`.
public final class GroupedAdamW {
    /// The parameters that decay, and those that do not (names as in the state dict).
    public let decayed: [(name: String, tensor: Tensor)]
    public let undecayed: [(name: String, tensor: Tensor)]
    /// One AdamW per group (the same betas, epsilon and learning rate).
    public let decayOptimizer: Adam
    public let noDecayOptimizer: Adam

    /// Whether the parameter called `name` of shape `shape` decays: open_clip's
    /// rule (`p.ndim < 2 or "bias" in n or "ln" in n or "bn" in n or "logit_scale" in n`
    /// excluded), which for CLIP is exactly "has at least two dimensions".
    public static func decays(name: String, shape: [Int]) -> Bool {
        shape.count >= 2 && !name.hasSuffix(".bias") && name != "logit_scale"
    }

    /// Splits `module`'s trainable parameters into the two groups.
    public init(module: Module, learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.98, epsilon: Float = 1e-6,
                weightDecay: Float) {
        let trainable = module.namedParameters().filter { $0.tensor.requiresGrad }
        decayed = trainable.filter { Self.decays(name: $0.name, shape: $0.tensor.shape) }
        undecayed = trainable.filter { !Self.decays(name: $0.name, shape: $0.tensor.shape) }
        decayOptimizer = Adam.adamW(parameters: decayed.map(\.tensor), learningRate: learningRate, beta1: beta1, beta2: beta2,
                                    epsilon: epsilon, weightDecay: weightDecay)
        noDecayOptimizer = Adam.adamW(parameters: undecayed.map(\.tensor), learningRate: learningRate, beta1: beta1, beta2: beta2,
                                      epsilon: epsilon, weightDecay: 0)
    }

    /// Every trainable parameter (decayed first).
    public var parameters: [Tensor] { decayed.map(\.tensor) + undecayed.map(\.tensor) }

    /// The learning rate of both groups.
    public var learningRate: Float {
        get { decayOptimizer.learningRate }
        set { decayOptimizer.learningRate = newValue; noDecayOptimizer.learningRate = newValue }
    }

    /// One update of both groups.
    public func step() {
        decayOptimizer.step()
        noDecayOptimizer.step()
    }

    public func zeroGradients() {
        decayOptimizer.zeroGradients()
        noDecayOptimizer.zeroGradients()
    }

    private static let decayPrefix = "decay.", noDecayPrefix = "no_decay."

    /// Both groups' moments and step counts, keyed `decay.<index>.exp_avg`, `no_decay.step`, ….
    public var state: [String: Tensor] {
        var result: [String: Tensor] = [:]
        for (key, tensor) in decayOptimizer.state { result[Self.decayPrefix + key] = tensor }
        for (key, tensor) in noDecayOptimizer.state { result[Self.noDecayPrefix + key] = tensor }
        return result
    }

    /// Restores what `state` returned.
    public func load(state: [String: Tensor]) throws {
        func group(_ prefix: String) -> [String: Tensor] {
            Dictionary(uniqueKeysWithValues: state.compactMap { key, tensor in
                key.hasPrefix(prefix) ? (String(key.dropFirst(prefix.count)), tensor) : nil
            })
        }
        try decayOptimizer.load(state: group(Self.decayPrefix))
        try noDecayOptimizer.load(state: group(Self.noDecayPrefix))
    }
}
