import Foundation
import NN
import Tensors

// Gradient checkpointing of the UNet's resnets and transformer blocks (diffusers'
// `enable_gradient_checkpointing()`): each runs through `checkpoint(_:parameters:_:)`
// when its block's `gradientCheckpointing` is on and gradients are recorded, so only its
// inputs are kept for backward and its activations are recomputed there.

extension Module {
    /// What a checkpointed call of this module differentiates besides its inputs: its
    /// parameters and the LoRA adapters attached to its `Linear` layers (held outside the
    /// reflected members).
    func checkpointedParameters() -> [Tensor] {
        var result = parameters()
        for (_, module) in namedModules() {
            guard let linear = module as? Linear else { continue }
            for adapter in linear.loraAdapters { result.append(contentsOf: adapter.parameters()) }
        }
        return result
    }
}

extension ResnetBlock2D {
    /// The resnet, run through a checkpoint when `checkpointed` and gradients are recorded.
    func callAsFunction(_ input: Tensor, timeEmbedding: Tensor?, checkpointed: Bool) -> Tensor {
        guard checkpointed, GradientMode.isEnabled else { return self(input, timeEmbedding: timeEmbedding) }
        let inputs = [input] + (timeEmbedding.map { [$0] } ?? [])
        return Tensors.checkpoint(inputs, parameters: checkpointedParameters()) { inputs in
            self(inputs[0], timeEmbedding: inputs.count > 1 ? inputs[1] : nil)
        }
    }
}

extension BasicTransformerBlock {
    /// The block, run through a checkpoint when `checkpointed` and gradients are recorded.
    func callAsFunction(_ input: Tensor, context: Tensor?, contextMask: Tensor?, checkpointed: Bool) -> Tensor {
        guard checkpointed, GradientMode.isEnabled else { return self(input, context: context, contextMask: contextMask) }
        let contextIndex = context == nil ? nil : 1
        let maskIndex = contextMask == nil ? nil : 1 + (context == nil ? 0 : 1)
        let inputs = [input] + [context, contextMask].compactMap { $0 }
        return Tensors.checkpoint(inputs, parameters: checkpointedParameters()) { inputs in
            self(inputs[0], context: contextIndex.map { inputs[$0] }, contextMask: maskIndex.map { inputs[$0] })
        }
    }
}
