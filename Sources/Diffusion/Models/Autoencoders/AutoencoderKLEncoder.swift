import Foundation
import NN
import Tensors

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
