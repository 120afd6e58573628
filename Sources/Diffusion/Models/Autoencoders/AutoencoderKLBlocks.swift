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
func autoencoderResnetSettings(_ configuration: AutoencoderKLConfiguration) -> ResnetSettings {
    ResnetSettings(timeEmbeddingChannels: nil, groups: configuration.normGroupCount, epsilon: 1e-6,
                   activation: configuration.activationFunction.function)
}
