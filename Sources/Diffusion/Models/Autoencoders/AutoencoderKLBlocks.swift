import Foundation
import NN
import Tensors

/// diffusers' `DownEncoderBlock2D`: resnets without a time embedding, then
/// (except in the last block) a stride-2 convolution with the (0, 1, 0, 1)
/// padding of the VAE (`downsample_padding=0`). Parameter names `resnets.i`,
/// `downsamplers.0.conv`.
public final class DownEncoderBlock2D: Module {
    public let resnets: [ResnetBlock2D]
    /// Empty for the last block.
    public let downsamplers: [Downsample2D]

    public init(layers: Int, inChannels: Int, outChannels: Int, settings: ResnetSettings, addDownsample: Bool) {
        resnets = (0..<layers).map { settings.resnet($0 == 0 ? inChannels : outChannels, outChannels) }
        downsamplers = addDownsample ? [Downsample2D(channels: outChannels, padding: 0)] : []
        super.init()
    }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        var hidden = input
        for resnet in resnets { hidden = resnet(hidden, timeEmbedding: nil) }
        for downsampler in downsamplers { hidden = downsampler(hidden) }
        return hidden
    }
}

/// diffusers' `UpDecoderBlock2D`: resnets without a time embedding, then
/// (except in the last block) nearest ×2 and a 3×3 convolution. Parameter
/// names `resnets.i`, `upsamplers.0.conv`.
public final class UpDecoderBlock2D: Module {
    public let resnets: [ResnetBlock2D]
    /// Empty for the last block.
    public let upsamplers: [Upsample2D]

    public init(layers: Int, inChannels: Int, outChannels: Int, settings: ResnetSettings, addUpsample: Bool) {
        resnets = (0..<layers).map { settings.resnet($0 == 0 ? inChannels : outChannels, outChannels) }
        upsamplers = addUpsample ? [Upsample2D(channels: outChannels)] : []
        super.init()
    }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        var hidden = input
        for resnet in resnets { hidden = resnet(hidden, timeEmbedding: nil) }
        for upsampler in upsamplers { hidden = upsampler(hidden) }
        return hidden
    }
}

/// The resnet settings of a VAE's blocks: no time embedding, ε 1e-6.
private func autoencoderResnetSettings(_ configuration: AutoencoderKLConfiguration) -> ResnetSettings {
    ResnetSettings(timeEmbeddingChannels: nil, groups: configuration.normGroupCount, epsilon: 1e-6,
                   activation: configuration.activationFunction.function)
}

/// diffusers' VAE `Encoder` (`double_z=True`): `conv_in`, the down blocks,
/// the middle block (a resnet, the single-head attention with its group norm
/// and residual, a resnet), `conv_norm_out`, SiLU (`conv_act`) and `conv_out`
/// to twice the latent channels (the mean and the log-variance).
public final class AutoencoderKLEncoder: Module {
    public let convIn: Conv2d
    public let downBlocks: [DownEncoderBlock2D]
    public let midBlock: UNetMidBlock2D
    public let convNormOut: GroupNorm
    public let convActivation: Activation
    public let convOut: Conv2d

    public override class var stateDictKeys: [String: String] {
        ["convIn": "conv_in", "downBlocks": "down_blocks", "midBlock": "mid_block", "convNormOut": "conv_norm_out",
         "convActivation": "conv_act", "convOut": "conv_out"]
    }

    public init(configuration: AutoencoderKLConfiguration) {
        let channels = configuration.blockOutChannels
        let settings = autoencoderResnetSettings(configuration)
        convIn = Conv2d(configuration.inChannels, channels[0], kernelSize: 3, padding: 1)
        var output = channels[0]
        downBlocks = channels.indices.map { index in
            let input = output
            output = channels[index]
            return DownEncoderBlock2D(layers: configuration.layersPerBlock, inChannels: input, outChannels: output,
                                      settings: settings, addDownsample: index < channels.count - 1)
        }
        let last = channels[channels.count - 1]
        midBlock = UNetMidBlock2D(channels: last, settings: settings, attentionHeadDimension: last,
                                  attentionGroups: configuration.normGroupCount, addAttention: configuration.midBlockAddAttention)
        convNormOut = GroupNorm(groupCount: configuration.normGroupCount, channels: last, epsilon: 1e-6)
        convActivation = Activation(.silu)
        convOut = Conv2d(last, 2 * configuration.latentChannels, kernelSize: 3, padding: 1)
        super.init()
    }

    /// `[batch, inChannels, height, width]` → `[batch, 2·latentChannels, height / f, width / f]`.
    public func callAsFunction(_ input: Tensor) -> Tensor {
        var hidden = convIn(input)
        for block in downBlocks { hidden = block(hidden) }
        hidden = midBlock(hidden, timeEmbedding: nil)
        hidden = hidden.groupNormSiLU(groupCount: convNormOut.groupCount, weight: convNormOut.weight,
                                      bias: convNormOut.bias, epsilon: convNormOut.epsilon)
        return convOut(hidden)
    }
}

/// diffusers' VAE `Decoder` (group norms): `conv_in`, the middle block, the up
/// blocks (`layers_per_block + 1` resnets each), `conv_norm_out`, SiLU and `conv_out`.
public final class AutoencoderKLDecoder: Module {
    public let convIn: Conv2d
    public let upBlocks: [UpDecoderBlock2D]
    public let midBlock: UNetMidBlock2D
    public let convNormOut: GroupNorm
    public let convActivation: Activation
    public let convOut: Conv2d

    public override class var stateDictKeys: [String: String] {
        ["convIn": "conv_in", "upBlocks": "up_blocks", "midBlock": "mid_block", "convNormOut": "conv_norm_out",
         "convActivation": "conv_act", "convOut": "conv_out"]
    }

    public init(configuration: AutoencoderKLConfiguration) {
        let channels = configuration.blockOutChannels
        let settings = autoencoderResnetSettings(configuration)
        let last = channels[channels.count - 1]
        convIn = Conv2d(configuration.latentChannels, last, kernelSize: 3, padding: 1)
        midBlock = UNetMidBlock2D(channels: last, settings: settings, attentionHeadDimension: last,
                                  attentionGroups: configuration.normGroupCount, addAttention: configuration.midBlockAddAttention)
        let reversed = Array(channels.reversed())
        var output = reversed[0]
        upBlocks = reversed.indices.map { index in
            let previous = output
            output = reversed[index]
            return UpDecoderBlock2D(layers: configuration.layersPerBlock + 1, inChannels: previous, outChannels: output,
                                    settings: settings, addUpsample: index < channels.count - 1)
        }
        convNormOut = GroupNorm(groupCount: configuration.normGroupCount, channels: channels[0], epsilon: 1e-6)
        convActivation = Activation(.silu)
        convOut = Conv2d(channels[0], configuration.outChannels, kernelSize: 3, padding: 1)
        super.init()
    }

    /// `[batch, latentChannels, h, w]` → `[batch, outChannels, h·f, w·f]`.
    public func callAsFunction(_ input: Tensor) -> Tensor {
        var hidden = convIn(input)
        hidden = midBlock(hidden, timeEmbedding: nil)
        for block in upBlocks { hidden = block(hidden) }
        hidden = hidden.groupNormSiLU(groupCount: convNormOut.groupCount, weight: convNormOut.weight,
                                      bias: convNormOut.bias, epsilon: convNormOut.epsilon)
        return convOut(hidden)
    }
}
