import Foundation
import NN
import Tensors

/// diffusers' `GEGLU`: one projection to twice the width, split in two halves
/// `h` and `g`, output `h · gelu(g)` (the exact GELU, `Tensor.gatedGELU`). Parameter name `proj`.
public final class GEGLU: Module, UnaryLayer {
    public let proj: Linear

    public init(inputDimension: Int, outputDimension: Int, bias: Bool = true) {
        proj = Linear(inputDimension, 2 * outputDimension, bias: bias)
        super.init()
    }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        guard input.shape.last == proj.inFeatures else {
            fatalError("GEGLU: input shape \(input.shape) does not end in \(proj.inFeatures) features")
        }
        // One product (LoRA adapters included), then the activation on its two halves: backward
        // runs one input-gradient and one weight-gradient product, with no sum of two input gradients.
        return Tensor.gatedGELU(halves: proj(input))
    }
}

/// diffusers' `FeedForward` with the `geglu` activation: `net.0` a `GEGLU`
/// to `multiplier × dimension`, `net.1` dropout, `net.2` a `Linear` back.
public final class FeedForward: Module, UnaryLayer {
    public let net: [Module]

    public init(dimension: Int, outputDimension: Int? = nil, multiplier: Int = 4, dropout: Float = 0) {
        let inner = dimension * multiplier
        net = [GEGLU(inputDimension: dimension, outputDimension: inner), Dropout(dropout),
               Linear(inner, outputDimension ?? dimension)]
        super.init()
    }

    /// Rows (tokens × batch) per piece when nothing records a graph (diffusers'
    /// `enable_forward_chunking`, always on for inference): the GEGLU's four inner-width
    /// activations exist for one piece at a time. At Stable Diffusion's 64×64 level (8,192 rows
    /// of 1,280) they are 168 MB whole, 21 MB per piece; each row is computed exactly as whole.
    public nonisolated(unsafe) static var inferenceChunkRows = 1024

    public func callAsFunction(_ input: Tensor) -> Tensor {
        guard let gated = net[0] as? GEGLU, let dropout = net[1] as? Dropout, let output = net[2] as? Linear else {
            fatalError("FeedForward: net must be [GEGLU, Dropout, Linear]")
        }
        let rows = input.rank >= 2 ? input.count / (input.shape.last ?? 1) : 0
        let recording = GradientMode.isEnabled && (input.requiresGrad || !input.isLeaf || parameters().contains { $0.requiresGrad })
        let chunk = FeedForward.inferenceChunkRows
        guard !recording, chunk > 0, rows > 2 * chunk else { return output(dropout(gated(input))) }
        let flat = input.reshaped([rows, input.shape.last!])
        let pieces = stride(from: 0, to: rows, by: chunk).map { start in
            output(dropout(gated(flat.narrowed(axis: 0, start: start, length: Swift.min(chunk, rows - start)))))
        }
        return Tensor.concatenate(pieces, axis: 0).reshaped(Array(input.shape.dropLast()) + [output.outFeatures])
    }
}

/// diffusers' `BasicTransformerBlock` as Stable Diffusion's UNet builds it
/// (`norm_type: layer_norm`, GEGLU feed-forward): `norm1` + `attn1`
/// self-attention (attention to the context with `only_cross_attention`),
/// `norm2` + `attn2` cross-attention to `encoder_hidden_states`, `norm3` + `ff`,
/// each added to its input.
public final class BasicTransformerBlock: Module {
    public let norm1: LayerNorm
    public let attn1: Attention
    public let norm2: LayerNorm?
    public let attn2: Attention?
    public let norm3: LayerNorm
    public let ff: FeedForward
    /// `attn1` attends to the context instead of the tokens themselves.
    public let onlyCrossAttention: Bool

    /// - Parameters:
    ///   - dimension: token width (`dim`), `heads × headDimension`.
    ///   - crossAttentionDimension: context width; nil for a block without `attn2`.
    public init(dimension: Int, heads: Int, headDimension: Int, crossAttentionDimension: Int?, dropout: Float = 0,
                onlyCrossAttention: Bool = false, attentionBias: Bool = false) {
        norm1 = LayerNorm(dimension)
        attn1 = Attention(queryDimension: dimension, crossAttentionDimension: onlyCrossAttention ? crossAttentionDimension : nil,
                          heads: heads, dimensionPerHead: headDimension, dropout: dropout, bias: attentionBias)
        if let crossAttentionDimension {
            norm2 = LayerNorm(dimension)
            attn2 = Attention(queryDimension: dimension, crossAttentionDimension: crossAttentionDimension, heads: heads,
                              dimensionPerHead: headDimension, dropout: dropout, bias: attentionBias)
        } else {
            norm2 = nil
            attn2 = nil
        }
        norm3 = LayerNorm(dimension)
        ff = FeedForward(dimension: dimension, dropout: dropout)
        self.onlyCrossAttention = onlyCrossAttention
        super.init()
    }

    /// - Parameters:
    ///   - input: `[batch, tokens, dimension]`.
    ///   - context: `[batch, contextTokens, crossAttentionDimension]`.
    ///   - contextMask: an additive bias broadcastable to `[batch, heads, tokens, contextTokens]`, used by `attn2`.
    public func callAsFunction(_ input: Tensor, context: Tensor?, contextMask: Tensor? = nil) -> Tensor {
        var hidden = input
        hidden = attn1(norm1(hidden), context: onlyCrossAttention ? context : nil) + hidden
        if let norm2, let attn2 {
            guard let context else { fatalError("BasicTransformerBlock: cross-attention needs encoder_hidden_states") }
            hidden = attn2(norm2(hidden), context: context, mask: contextMask) + hidden
        }
        return ff(norm3(hidden)) + hidden
    }
}
