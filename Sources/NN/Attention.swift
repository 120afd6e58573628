import Foundation
import Tensors

/// Multi-head attention with diffusers' parameter names (`group_norm`, `to_q`,
/// `to_k`, `to_v`, `to_out.0`) and its `AttnProcessor2_0` forward pass:
/// self-attention, or cross-attention over a context (`encoder_hidden_states`).
public final class Attention: Module {
    public let groupNorm: GroupNorm?
    public let toQuery: Linear
    public let toKey: Linear
    public let toValue: Linear
    public let toOut: [Module]

    public override class var stateDictKeys: [String: String] {
        ["groupNorm": "group_norm", "toQuery": "to_q", "toKey": "to_k", "toValue": "to_v", "toOut": "to_out"]
    }

    public let heads: Int
    public let residualConnection: Bool
    public let rescaleOutputFactor: Float

    /// - Parameters:
    ///   - queryDimension: channels of the input (`query_dim`).
    ///   - crossAttentionDimension: channels of the context, if any (`cross_attention_dim`).
    ///   - heads: number of heads; `dimensionPerHead` each (`dim_head`).
    ///   - bias: biases on `to_q`, `to_k`, `to_v`; `outBias` on `to_out.0`.
    ///   - normGroupCount: a group norm on the input first (`norm_num_groups`).
    ///   - residualConnection: add the input to the output.
    ///   - rescaleOutputFactor: divide the output by this.
    public init(queryDimension: Int, crossAttentionDimension: Int? = nil, heads: Int = 8, dimensionPerHead: Int = 64,
                dropout: Float = 0, bias: Bool = false, outBias: Bool = true, normGroupCount: Int? = nil, epsilon: Float = 1e-5,
                residualConnection: Bool = false, rescaleOutputFactor: Float = 1) {
        let inner = heads * dimensionPerHead
        groupNorm = normGroupCount.map { GroupNorm(groupCount: $0, channels: queryDimension, epsilon: epsilon) }
        toQuery = Linear(queryDimension, inner, bias: bias)
        toKey = Linear(crossAttentionDimension ?? queryDimension, inner, bias: bias)
        toValue = Linear(crossAttentionDimension ?? queryDimension, inner, bias: bias)
        toOut = [Linear(inner, queryDimension, bias: outBias), Dropout(dropout)]
        self.heads = heads
        self.residualConnection = residualConnection
        self.rescaleOutputFactor = rescaleOutputFactor
        super.init()
    }

    /// Attends over `[batch, tokens, channels]` or `[batch, channels, height, width]`
    /// input, with an optional context `[batch, contextTokens, contextChannels]`
    /// and an additive mask broadcastable to `[batch, heads, tokens, contextTokens]`.
    public func callAsFunction(_ input: Tensor, context: Tensor? = nil, mask: Tensor? = nil) -> Tensor {
        let residual = input
        var hidden = input
        let imageShape: [Int]? = input.rank == 4 ? input.shape : nil
        if let shape = imageShape {
            // Group norm on the image itself (the same groups as diffusers' [B, C, H·W] view),
            // then [B, C, H, W] → [B, H·W, C]: free for a channels-last image, whose memory
            // already is that row-major matrix.
            if let groupNorm { hidden = groupNorm(hidden) }
            hidden = hidden.permuted(0, 2, 3, 1).reshaped([shape[0], shape[2] * shape[3], shape[1]])
        }
        guard hidden.rank == 3 else { fatalError("Attention: input must be [batch, tokens, channels] or 4-d, got \(input.shape)") }
        let (batch, tokens) = (hidden.shape[0], hidden.shape[1])
        if let groupNorm, imageShape == nil {
            hidden = groupNorm(hidden.transposed(1, 2)).transposed(1, 2)
        }
        let query = toQuery(hidden)
        let source = context ?? hidden
        let key = toKey(source)
        let value = toValue(source)
        let inner = query.shape[2]
        let headDimension = inner / heads
        func split(_ tensor: Tensor) -> Tensor {
            tensor.reshaped([batch, tensor.shape[1], heads, headDimension]).transposed(1, 2)
        }
        var output = Tensor.scaledDotProductAttention(query: split(query), key: split(key), value: split(value), mask: mask)
        output = output.transposed(1, 2).reshaped([batch, tokens, inner])
        guard let projection = toOut[0] as? Linear, let dropout = toOut[1] as? Dropout else {
            fatalError("Attention: to_out must be [Linear, Dropout]")
        }
        output = dropout(projection(output))
        if let shape = imageShape {
            // [B, H·W, C] → [B, C, H, W] as a channels-last view, no copy.
            output = output.reshaped([shape[0], shape[2], shape[3], shape[1]]).permuted(0, 3, 1, 2)
        }
        if residualConnection { output = output + residual }
        if rescaleOutputFactor != 1 { output = output / rescaleOutputFactor }
        return output
    }
}
