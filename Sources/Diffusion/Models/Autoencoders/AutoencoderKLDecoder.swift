import Foundation
import NN
import Tensors

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
