import Foundation
import NN
import Tensors

/// diffusers' `Transformer2DModel` on continuous (image) input, as the
/// cross-attention blocks of Stable Diffusion's UNet build it: group norm
/// (ε 1e-6), `proj_in` (a 1×1 convolution, or a `Linear` with
/// `use_linear_projection`), `transformer_blocks`, `proj_out`, plus the input.
public final class Transformer2DModel: Module {
    public let norm: GroupNorm
    /// A 1×1 `Conv2d` or a `Linear`.
    public let projIn: Module
    public let transformerBlocks: [BasicTransformerBlock]
    /// A 1×1 `Conv2d` or a `Linear`.
    public let projOut: Module
    /// Checkpoint each transformer block while recording gradients (diffusers' `gradient_checkpointing`).
    public var gradientCheckpointing = false

    public override class var stateDictKeys: [String: String] {
        ["projIn": "proj_in", "transformerBlocks": "transformer_blocks", "projOut": "proj_out"]
    }

    /// - Parameters:
    ///   - channels: channels of the image (`in_channels`).
    ///   - heads: attention heads; each of `channels / heads` (diffusers' `out_channels // num_attention_heads`).
    ///   - layers: `BasicTransformerBlock`s (`num_layers`).
    public init(channels: Int, heads: Int, layers: Int = 1, crossAttentionDimension: Int?, groups: Int,
                useLinearProjection: Bool = false, onlyCrossAttention: Bool = false, dropout: Float = 0) {
        let headDimension = channels / heads
        let inner = heads * headDimension
        norm = GroupNorm(groupCount: groups, channels: channels, epsilon: 1e-6)
        projIn = useLinearProjection ? Linear(channels, inner) : Conv2d(channels, inner, kernelSize: 1)
        transformerBlocks = (0..<layers).map { _ in
            BasicTransformerBlock(dimension: inner, heads: heads, headDimension: headDimension,
                                  crossAttentionDimension: crossAttentionDimension, dropout: dropout,
                                  onlyCrossAttention: onlyCrossAttention)
        }
        projOut = useLinearProjection ? Linear(inner, channels) : Conv2d(inner, channels, kernelSize: 1)
        super.init()
    }

    /// A projection over the last (channel) axis of tokens: a `Linear`, or a 1×1
    /// convolution applied as the same product (its weight viewed as `[out, in]`).
    private static func project(_ tokens: Tensor, _ module: Module) -> Tensor {
        if let linear = module as? Linear { return linear(tokens) }
        guard let convolution = module as? Conv2d else { fatalError("Transformer2DModel: proj_in/proj_out must be Linear or Conv2d") }
        let weight = convolution.weight.reshaped([convolution.outChannels, convolution.inChannels])
        return tokens.linear(weight: weight, bias: convolution.bias)
    }

    /// - Parameters:
    ///   - input: `[batch, channels, height, width]`.
    ///   - context: `encoder_hidden_states`, `[batch, contextTokens, crossAttentionDimension]`.
    ///   - contextMask: an additive bias broadcastable to `[batch, heads, tokens, contextTokens]`.
    public func callAsFunction(_ input: Tensor, context: Tensor?, contextMask: Tensor? = nil) -> Tensor {
        let (batch, channels, height, width) = (input.shape[0], input.shape[1], input.shape[2], input.shape[3])
        // [B, C, H, W] → [B, H·W, C]: free for a channels-last image. A 1×1 convolution
        // commutes with this view, so both projections run on the tokens.
        var hidden = norm(input).permuted(0, 2, 3, 1).reshaped([batch, height * width, channels])
        hidden = Self.project(hidden, projIn)
        for block in transformerBlocks {
            hidden = block(hidden, context: context, contextMask: contextMask, checkpointed: gradientCheckpointing)
        }
        hidden = Self.project(hidden, projOut)
        // [B, H·W, C] → [B, C, H, W] as a channels-last view.
        return hidden.reshaped([batch, height, width, channels]).permuted(0, 3, 1, 2) + input
    }
}
