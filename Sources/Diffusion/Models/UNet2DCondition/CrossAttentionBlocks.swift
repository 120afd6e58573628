import Foundation
import NN
import Tensors

/// Settings every `Transformer2DModel` of one UNet block shares.
public struct TransformerSettings: Sendable {
    /// Attention heads (`num_attention_heads`).
    public var heads: Int
    /// `BasicTransformerBlock`s per transformer (`transformer_layers_per_block`).
    public var layers: Int
    /// Context width (`cross_attention_dim`).
    public var crossAttentionDimension: Int
    /// Group-norm groups (`resnet_groups`).
    public var groups: Int
    /// `use_linear_projection`.
    public var useLinearProjection: Bool
    /// `only_cross_attention`.
    public var onlyCrossAttention: Bool
    /// Attention and feed-forward dropout.
    public var dropout: Float

    public init(heads: Int, layers: Int = 1, crossAttentionDimension: Int, groups: Int = 32, useLinearProjection: Bool = false,
                onlyCrossAttention: Bool = false, dropout: Float = 0) {
        self.heads = heads
        self.layers = layers
        self.crossAttentionDimension = crossAttentionDimension
        self.groups = groups
        self.useLinearProjection = useLinearProjection
        self.onlyCrossAttention = onlyCrossAttention
        self.dropout = dropout
    }

    func transformer(_ channels: Int) -> Transformer2DModel {
        Transformer2DModel(channels: channels, heads: heads, layers: layers, crossAttentionDimension: crossAttentionDimension,
                           groups: groups, useLinearProjection: useLinearProjection, onlyCrossAttention: onlyCrossAttention,
                           dropout: dropout)
    }
}

/// The context a cross-attention block attends to: `encoder_hidden_states` and
/// the additive bias made from `encoder_attention_mask`.
public struct CrossAttentionContext {
    /// `[batch, contextTokens, crossAttentionDimension]`.
    public var states: Tensor
    /// Broadcastable to `[batch, heads, tokens, contextTokens]`, or nil.
    public var mask: Tensor?

    public init(states: Tensor, mask: Tensor? = nil) {
        self.states = states
        self.mask = mask
    }
}

/// diffusers' `CrossAttnDownBlock2D`: (resnet, transformer) pairs, then a
/// strided-convolution downsampler unless it is the last block. Parameter
/// names `resnets.i`, `attentions.i`, `downsamplers.0.conv`.
public final class CrossAttnDownBlock2D: Module {
    public let attentions: [Transformer2DModel]
    public let resnets: [ResnetBlock2D]
    public let downsamplers: [Downsample2D]
    /// Checkpoint each resnet (and transformer block) while recording gradients (diffusers' `gradient_checkpointing`).
    public var gradientCheckpointing = false {
        didSet { attentions.forEach { $0.gradientCheckpointing = gradientCheckpointing } }
    }

    public init(layers: Int, inChannels: Int, outChannels: Int, settings: ResnetSettings, transformer: TransformerSettings,
                addDownsample: Bool, downsamplePadding: Int) {
        resnets = (0..<layers).map { settings.resnet($0 == 0 ? inChannels : outChannels, outChannels) }
        attentions = (0..<layers).map { _ in transformer.transformer(outChannels) }
        downsamplers = addDownsample ? [Downsample2D(channels: outChannels, padding: downsamplePadding)] : []
        super.init()
    }

    /// Runs the block; appends each pair's output and the downsampled output to `residuals`.
    public func callAsFunction(_ input: Tensor, timeEmbedding: Tensor?, context: CrossAttentionContext,
                               residuals: inout [Tensor]) -> Tensor {
        var hidden = input
        for (resnet, attention) in zip(resnets, attentions) {
            hidden = resnet(hidden, timeEmbedding: timeEmbedding, checkpointed: gradientCheckpointing)
            hidden = attention(hidden, context: context.states, contextMask: context.mask)
            residuals.append(hidden)
        }
        if let downsampler = downsamplers.first {
            hidden = downsampler(hidden)
            residuals.append(hidden)
        }
        return hidden
    }
}

/// diffusers' `CrossAttnUpBlock2D`: (resnet over `[hidden, skip]`, transformer)
/// pairs, then a nearest ×2 upsampler with a convolution unless it is the last
/// block. Parameter names `resnets.i`, `attentions.i`, `upsamplers.0.conv`.
public final class CrossAttnUpBlock2D: Module {
    public let attentions: [Transformer2DModel]
    public let resnets: [ResnetBlock2D]
    public let upsamplers: [Upsample2D]
    /// Checkpoint each resnet (and transformer block) while recording gradients (diffusers' `gradient_checkpointing`).
    public var gradientCheckpointing = false {
        didSet { attentions.forEach { $0.gradientCheckpointing = gradientCheckpointing } }
    }

    /// - Parameters:
    ///   - inChannels: channels of the skip connection taken by the last resnet.
    ///   - previousOutputChannels: channels coming from the block below.
    public init(layers: Int, inChannels: Int, previousOutputChannels: Int, outChannels: Int, settings: ResnetSettings,
                transformer: TransformerSettings, addUpsample: Bool) {
        resnets = (0..<layers).map { index in
            let skipChannels = index == layers - 1 ? inChannels : outChannels
            return settings.resnet((index == 0 ? previousOutputChannels : outChannels) + skipChannels, outChannels)
        }
        attentions = (0..<layers).map { _ in transformer.transformer(outChannels) }
        upsamplers = addUpsample ? [Upsample2D(channels: outChannels)] : []
        super.init()
    }

    /// Runs the block, taking (and removing) one skip connection per resnet from the end of `residuals`.
    public func callAsFunction(_ input: Tensor, timeEmbedding: Tensor?, context: CrossAttentionContext,
                               residuals: inout [Tensor]) -> Tensor {
        var hidden = input
        for (resnet, attention) in zip(resnets, attentions) {
            hidden = resnet(UNet2DConditionModel.joined(hidden, skip: residuals.popLast()), timeEmbedding: timeEmbedding,
                            checkpointed: gradientCheckpointing)
            hidden = attention(hidden, context: context.states, contextMask: context.mask)
        }
        if let upsampler = upsamplers.first {
            // To the next skip connection's size: twice this one's, or one less for an odd side.
            hidden = residuals.last.map { upsampler(hidden, height: $0.shape[2], width: $0.shape[3]) } ?? upsampler(hidden)
        }
        return hidden
    }
}

/// diffusers' `UNetMidBlock2DCrossAttn`: a resnet, then (transformer, resnet)
/// pairs. Parameter names `resnets.i`, `attentions.i`.
public final class UNetMidBlock2DCrossAttn: Module {
    public let attentions: [Transformer2DModel]
    public let resnets: [ResnetBlock2D]
    /// Checkpoint each resnet (and transformer block) while recording gradients (diffusers' `gradient_checkpointing`).
    public var gradientCheckpointing = false {
        didSet { attentions.forEach { $0.gradientCheckpointing = gradientCheckpointing } }
    }

    public init(channels: Int, settings: ResnetSettings, transformer: TransformerSettings, layers: Int = 1) {
        resnets = (0...layers).map { _ in settings.resnet(channels, channels) }
        attentions = (0..<layers).map { _ in transformer.transformer(channels) }
        super.init()
    }

    public func callAsFunction(_ input: Tensor, timeEmbedding: Tensor?, context: CrossAttentionContext) -> Tensor {
        var hidden = resnets[0](input, timeEmbedding: timeEmbedding, checkpointed: gradientCheckpointing)
        for (attention, resnet) in zip(attentions, resnets.dropFirst()) {
            hidden = attention(hidden, context: context.states, contextMask: context.mask)
            hidden = resnet(hidden, timeEmbedding: timeEmbedding, checkpointed: gradientCheckpointing)
        }
        return hidden
    }
}
