import Foundation
import NN
import Tensors

/// Settings every resnet of a UNet shares.
public struct ResnetSettings: Sendable {
    /// Width of the time embedding (`temb_channels`), nil for none.
    public var timeEmbeddingChannels: Int?
    /// Group-norm groups (`resnet_groups`), also used by the blocks' attentions.
    public var groups: Int
    /// Group-norm epsilon (`resnet_eps`), also used by the attentions.
    public var epsilon: Float
    /// Dropout before each resnet's second convolution.
    public var dropout: Float
    /// The resnets' activation (`resnet_act_fn`).
    public var activation: Activation.Function
    /// How the time embedding enters (`resnet_time_scale_shift`).
    public var timeEmbeddingNorm: ResnetBlock2D.TimeEmbeddingNorm
    /// Output divisor of resnets and attentions (`output_scale_factor`).
    public var outputScaleFactor: Float

    public init(timeEmbeddingChannels: Int?, groups: Int = 32, epsilon: Float = 1e-6, dropout: Float = 0,
                activation: Activation.Function = .silu, timeEmbeddingNorm: ResnetBlock2D.TimeEmbeddingNorm = .default,
                outputScaleFactor: Float = 1) {
        self.timeEmbeddingChannels = timeEmbeddingChannels
        self.groups = groups
        self.epsilon = epsilon
        self.dropout = dropout
        self.activation = activation
        self.timeEmbeddingNorm = timeEmbeddingNorm
        self.outputScaleFactor = outputScaleFactor
    }

    func resnet(_ inChannels: Int, _ outChannels: Int, resampling: ResnetBlock2D.Resampling = .none) -> ResnetBlock2D {
        ResnetBlock2D(inChannels: inChannels, outChannels: outChannels, timeEmbeddingChannels: timeEmbeddingChannels,
                      groups: groups, epsilon: epsilon, dropout: dropout, activation: activation,
                      timeEmbeddingNorm: timeEmbeddingNorm, outputScaleFactor: outputScaleFactor, resampling: resampling)
    }

    /// The self-attention diffusers puts after a resnet (`_from_deprecated_attn_block`).
    func attention(_ channels: Int, headDimension: Int, groups: Int?) -> Attention {
        Attention(queryDimension: channels, heads: channels / headDimension, dimensionPerHead: headDimension, bias: true,
                  normGroupCount: groups, epsilon: epsilon, residualConnection: true, rescaleOutputFactor: outputScaleFactor)
    }
}

/// A down block of `UNet2DModel`: diffusers' `DownBlock2D`, `AttnDownBlock2D`
/// or `ResnetDownsampleBlock2D` (by `type`), with their parameter names
/// (`attentions.i`, `resnets.i`, `downsamplers.0`).
public final class UNetDownBlock: Module {
    public let attentions: [Attention]
    public let resnets: [ResnetBlock2D]
    /// Empty, or one `Downsample2D` or downsampling `ResnetBlock2D`.
    public let downsamplers: [Module]
    /// Checkpoint each resnet (and transformer block) while recording gradients (diffusers' `gradient_checkpointing`).
    public var gradientCheckpointing = false
    /// Which diffusers block this is.
    public let type: UNet2DConfiguration.DownBlockType

    /// - Parameters:
    ///   - downsampling: nil for the last block; `.conv` or `.resnet` otherwise
    ///     (`DownBlock2D` always uses a convolution, `ResnetDownsampleBlock2D` a resnet).
    public init(type: UNet2DConfiguration.DownBlockType, layers: Int, inChannels: Int, outChannels: Int,
                settings: ResnetSettings, attentionHeadDimension: Int, downsampling: UNet2DConfiguration.ResamplingType?,
                downsamplePadding: Int) {
        self.type = type
        var resnets: [ResnetBlock2D] = []
        var attentions: [Attention] = []
        for index in 0..<layers {
            resnets.append(settings.resnet(index == 0 ? inChannels : outChannels, outChannels))
            if type == .attentionDownBlock {
                attentions.append(settings.attention(outChannels, headDimension: attentionHeadDimension, groups: settings.groups))
            }
        }
        self.resnets = resnets
        self.attentions = attentions
        var kind = downsampling
        if kind != nil && type == .downBlock { kind = .conv }
        if kind != nil && type == .resnetDownsampleBlock { kind = .resnet }
        switch kind {
        case .conv?: downsamplers = [Downsample2D(channels: outChannels, padding: downsamplePadding)]
        case .resnet?: downsamplers = [settings.resnet(outChannels, outChannels, resampling: .down)]
        case nil: downsamplers = []
        }
        super.init()
    }

    /// Runs the block; appends each resnet's (or attention's) output and the
    /// downsampled output to `residuals`, and returns the last.
    public func callAsFunction(_ input: Tensor, timeEmbedding: Tensor?, residuals: inout [Tensor]) -> Tensor {
        var hidden = input
        for (index, resnet) in resnets.enumerated() {
            hidden = resnet(hidden, timeEmbedding: timeEmbedding, checkpointed: gradientCheckpointing)
            if !attentions.isEmpty { hidden = attentions[index](hidden) }
            residuals.append(hidden)
        }
        if let downsampler = downsamplers.first {
            if let resnet = downsampler as? ResnetBlock2D {
                hidden = resnet(hidden, timeEmbedding: timeEmbedding)
            } else if let convolution = downsampler as? Downsample2D {
                hidden = convolution(hidden)
            }
            residuals.append(hidden)
        }
        return hidden
    }
}

/// An up block of `UNet2DModel`: diffusers' `UpBlock2D`, `AttnUpBlock2D` or
/// `ResnetUpsampleBlock2D` (by `type`), with their parameter names
/// (`attentions.i`, `resnets.i`, `upsamplers.0`).
public final class UNetUpBlock: Module {
    public let attentions: [Attention]
    public let resnets: [ResnetBlock2D]
    /// Empty, or one `Upsample2D` or upsampling `ResnetBlock2D`.
    public let upsamplers: [Module]
    /// Checkpoint each resnet while recording gradients (diffusers' `gradient_checkpointing`).
    public var gradientCheckpointing = false
    /// Which diffusers block this is.
    public let type: UNet2DConfiguration.UpBlockType

    /// - Parameters:
    ///   - inChannels: channels of the skip connection taken by the last resnet.
    ///   - previousOutputChannels: channels coming from the block below.
    ///   - upsampling: nil for the last block; `.conv` or `.resnet` otherwise
    ///     (`UpBlock2D` always uses a convolution, `ResnetUpsampleBlock2D` a resnet).
    public init(type: UNet2DConfiguration.UpBlockType, layers: Int, inChannels: Int, previousOutputChannels: Int, outChannels: Int,
                settings: ResnetSettings, attentionHeadDimension: Int, upsampling: UNet2DConfiguration.ResamplingType?) {
        self.type = type
        var resnets: [ResnetBlock2D] = []
        var attentions: [Attention] = []
        for index in 0..<layers {
            let skipChannels = index == layers - 1 ? inChannels : outChannels
            let resnetInChannels = index == 0 ? previousOutputChannels : outChannels
            resnets.append(settings.resnet(resnetInChannels + skipChannels, outChannels))
            if type == .attentionUpBlock {
                attentions.append(settings.attention(outChannels, headDimension: attentionHeadDimension, groups: settings.groups))
            }
        }
        self.resnets = resnets
        self.attentions = attentions
        var kind = upsampling
        if kind != nil && type == .upBlock { kind = .conv }
        if kind != nil && type == .resnetUpsampleBlock { kind = .resnet }
        switch kind {
        case .conv?: upsamplers = [Upsample2D(channels: outChannels)]
        case .resnet?: upsamplers = [settings.resnet(outChannels, outChannels, resampling: .up)]
        case nil: upsamplers = []
        }
        super.init()
    }

    /// Runs the block, taking (and removing) one skip connection per resnet
    /// from the end of `residuals`.
    public func callAsFunction(_ input: Tensor, timeEmbedding: Tensor?, residuals: inout [Tensor]) -> Tensor {
        var hidden = input
        for (index, resnet) in resnets.enumerated() {
            // The joined tensor is a temporary, released once the resnet has used it.
            hidden = resnet(Self.joined(hidden, skip: residuals.popLast()), timeEmbedding: timeEmbedding,
                            checkpointed: gradientCheckpointing)
            if !attentions.isEmpty { hidden = attentions[index](hidden) }
        }
        if let upsampler = upsamplers.first {
            if let resnet = upsampler as? ResnetBlock2D {
                hidden = resnet(hidden, timeEmbedding: timeEmbedding)
            } else if let convolution = upsampler as? Upsample2D {
                // To the next skip connection's size: twice this one's, or one less for an odd side.
                hidden = residuals.last.map { convolution(hidden, height: $0.shape[2], width: $0.shape[3]) } ?? convolution(hidden)
            }
        }
        return hidden
    }

    /// `[hidden, skip]` along the channels.
    private static func joined(_ hidden: Tensor, skip: Tensor?) -> Tensor {
        guard let skip else { fatalError("UNetUpBlock: no skip connection left") }
        guard skip.shape[2] == hidden.shape[2], skip.shape[3] == hidden.shape[3] else {
            fatalError("UNetUpBlock: skip connection \(skip.shape) does not match \(hidden.shape); "
                + "the sample's height and width must be divisible by 2^(number of blocks − 1)")
        }
        // Channels-last operands (convolution outputs) are joined channels-last, without copies.
        return Tensor.concatenate([hidden, skip], axis: 1)
    }
}

/// diffusers' `UNetMidBlock2D`: a resnet, then (attention, resnet) pairs.
/// Parameter names `attentions.i`, `resnets.i`.
public final class UNetMidBlock2D: Module {
    public let attentions: [Attention]
    public let resnets: [ResnetBlock2D]
    /// Checkpoint each resnet (and transformer block) while recording gradients (diffusers' `gradient_checkpointing`).
    public var gradientCheckpointing = false

    /// - Parameters:
    ///   - attentionGroups: groups of the attention's group norm, nil for none.
    ///   - addAttention: false leaves the attentions out (the resnets keep their indices).
    public init(channels: Int, settings: ResnetSettings, layers: Int = 1, attentionHeadDimension: Int,
                attentionGroups: Int?, addAttention: Bool = true) {
        var resnets = [settings.resnet(channels, channels)]
        var attentions: [Attention] = []
        for _ in 0..<layers {
            if addAttention {
                attentions.append(settings.attention(channels, headDimension: attentionHeadDimension, groups: attentionGroups))
            }
            resnets.append(settings.resnet(channels, channels))
        }
        self.resnets = resnets
        self.attentions = attentions
        super.init()
    }

    public func callAsFunction(_ input: Tensor, timeEmbedding: Tensor?) -> Tensor {
        var hidden = resnets[0](input, timeEmbedding: timeEmbedding, checkpointed: gradientCheckpointing)
        for (index, resnet) in resnets.dropFirst().enumerated() {
            if !attentions.isEmpty { hidden = attentions[index](hidden) }
            hidden = resnet(hidden, timeEmbedding: timeEmbedding, checkpointed: gradientCheckpointing)
        }
        return hidden
    }
}
