import Foundation
import Tensors

/// A low-rank adapter on a `Linear` (PEFT's `lora.Linear`): the layer computes
/// `y = W x + b + scale · (alpha / rank) · B (A x)`, with `down` = A `[rank, in]`
/// (`lora_A.weight`) and `up` = B `[out, rank]` (`lora_B.weight`).
///
/// A new adapter is trainable with its base frozen: A is Kaiming-uniform (a = √5,
/// bound 1/√in, as PEFT initialises it) and B zero, so it starts as the identity change.
public final class LoRAAdapter: Module {
    /// A, `[rank, inFeatures]` (`lora_A.weight`).
    public let down: Tensor
    /// B, `[outFeatures, rank]` (`lora_B.weight`).
    public let up: Tensor
    /// PEFT's `lora_alpha`: the update is scaled by `alpha / rank`.
    public let alpha: Float
    /// The user's multiplier (diffusers' `set_adapters` weight or `cross_attention_kwargs["scale"]`).
    public var scale: Float
    /// True while the update is added into the base weight (``Linear/fuseLoRA()``), so the forward pass skips it.
    public internal(set) var isFused = false
    /// The name the adapter was attached under (diffusers' `adapter_name`).
    public let name: String

    public override class var stateDictKeys: [String: String] { ["down": "lora_A.weight", "up": "lora_B.weight"] }

    /// A new trainable adapter for a layer of `inFeatures` → `outFeatures`.
    public init(inFeatures: Int, outFeatures: Int, rank: Int, alpha: Float? = nil, scale: Float = 1, name: String = "default") {
        precondition(rank > 0, "LoRAAdapter: rank must be positive")
        down = Initialization.uniform([rank, inFeatures], bound: 1 / Float(inFeatures).squareRoot())
        up = Initialization.constant(0, [outFeatures, rank])
        self.alpha = alpha ?? Float(rank)
        self.scale = scale
        self.name = name
        super.init()
    }

    /// An adapter with given factors (as loaded from a file); `alpha` defaults to the rank (scaling 1).
    public init(down: Tensor, up: Tensor, alpha: Float? = nil, scale: Float = 1, name: String = "default") {
        precondition(down.rank == 2 && up.rank == 2 && up.shape[1] == down.shape[0],
                     "LoRAAdapter: A \(down.shape) and B \(up.shape) are not [rank, in] and [out, rank]")
        self.down = down
        self.up = up
        self.alpha = alpha ?? Float(down.shape[0])
        self.scale = scale
        self.name = name
        super.init()
    }

    public var rank: Int { down.shape[0] }
    public var inFeatures: Int { down.shape[1] }
    public var outFeatures: Int { up.shape[0] }

    /// `scale · alpha / rank`, the factor of `B A`.
    public var effectiveScale: Float { scale * alpha / Float(rank) }

    /// `effectiveScale · B (A x)` over the last dimension of `input`.
    public func callAsFunction(_ input: Tensor) -> Tensor {
        input.linear(weight: down, bias: nil).linear(weight: up, bias: nil) * effectiveScale
    }

    /// `effectiveScale · B A`, `[out, in]` float32, outside the graph.
    public func weightDelta() -> Tensor {
        noGrad { up.converted(to: .float32).matmul(down.converted(to: .float32)) * effectiveScale }
    }
}

/// The adapters attached to a `Linear`, held outside the module's reflected
/// members so they never enter the base model's state dict.
public struct LoRAAttachments {
    public internal(set) var adapters: [LoRAAdapter] = []
    public init() {}
}

extension Linear {
    /// Attaches `adapter` (its shape must match this layer's).
    public func attachLoRA(_ adapter: LoRAAdapter) {
        precondition(adapter.inFeatures == inFeatures && adapter.outFeatures == outFeatures,
                     "Linear.attachLoRA: adapter \(adapter.inFeatures) → \(adapter.outFeatures) on a layer of \(inFeatures) → \(outFeatures)")
        precondition(!lora.adapters.contains { $0.name == adapter.name }, "Linear.attachLoRA: an adapter named \(adapter.name) is already attached")
        lora.adapters.append(adapter)
    }

    /// The attached adapters, in order.
    public var loraAdapters: [LoRAAdapter] { lora.adapters }

    /// Removes the adapters named `name` (all when nil), unfusing them first.
    public func detachLoRA(named name: String? = nil) {
        unfuseLoRA(named: name)
        lora.adapters.removeAll { name == nil || $0.name == name }
    }

    /// Adds each attached, unfused adapter's `scale · alpha / rank · B A` into the weight
    /// (diffusers' `fuse_lora`, PEFT's `merge`); the forward pass then skips it. A 16-bit
    /// weight is widened, updated and rounded back to its data type.
    public func fuseLoRA(named name: String? = nil) {
        for adapter in lora.adapters where !adapter.isFused && (name == nil || adapter.name == name) {
            addToWeight(adapter.weightDelta(), sign: 1)
            adapter.isFused = true
        }
    }

    /// Subtracts fused adapters' updates from the weight again (diffusers' `unfuse_lora`, PEFT's `unmerge`).
    public func unfuseLoRA(named name: String? = nil) {
        for adapter in lora.adapters.reversed() where adapter.isFused && (name == nil || adapter.name == name) {
            addToWeight(adapter.weightDelta(), sign: -1)
            adapter.isFused = false
        }
    }

    private func addToWeight(_ delta: Tensor, sign: Float) {
        noGrad {
            let updated = weight.converted(to: .float32) + delta * sign
            if weight.dataType == .float32 {
                weight.copyValues(from: updated)
            } else {
                weight.replaceStorage(with: updated.converted(to: weight.dataType).storage)
            }
        }
    }

    /// The base output plus every active (unfused) adapter's.
    func addingLoRA(_ output: Tensor, input: Tensor) -> Tensor {
        var result = output
        for adapter in lora.adapters where !adapter.isFused && adapter.scale != 0 {
            result = result + adapter(input)
        }
        return result
    }
}
