import Foundation
import NN
import Tensors

/// diffusers' `AutoencoderTinyBlock`: three 3×3 convolutions with the
/// activation between them (`conv.0`, `conv.2`, `conv.4`), plus a skip (a 1×1
/// convolution without bias when the width changes), then ReLU (`fuse`).
public final class AutoencoderTinyBlock: Module, UnaryLayer {
    public let conv: Sequential
    /// The 1×1 skip convolution, or nil for the identity.
    public let skip: Conv2d?

    public init(inChannels: Int, outChannels: Int, activation: Activation.Function) {
        conv = Sequential([
            Conv2d(inChannels, outChannels, kernelSize: 3, padding: 1), Activation(activation),
            Conv2d(outChannels, outChannels, kernelSize: 3, padding: 1), Activation(activation),
            Conv2d(outChannels, outChannels, kernelSize: 3, padding: 1),
        ])
        skip = inChannels == outChannels ? nil : Conv2d(inChannels, outChannels, kernelSize: 1, bias: false)
        super.init()
    }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        (conv(input) + (skip.map { $0(input) } ?? input)).relu()
    }
}

/// `nn.Upsample(scale_factor:, mode: "nearest")`: no parameters.
public final class NearestUpsampling: Module, UnaryLayer {
    public let scaleFactor: Int

    public init(scaleFactor: Int) {
        self.scaleFactor = scaleFactor
        super.init()
    }

    public func callAsFunction(_ input: Tensor) -> Tensor { input.upsampleNearest(scaleFactor: scaleFactor) }
}

/// diffusers' `EncoderTiny`: `layers` = a 3×3 convolution, then per block a
/// stride-2 3×3 convolution without bias (except for the first block) and the
/// block's `AutoencoderTinyBlock`s, and a last 3×3 convolution to the latent
/// channels. Images in [−1, 1] are mapped to TAESD's [0, 1] first.
public final class AutoencoderTinyEncoder: Module {
    public let layers: Sequential

    public init(configuration: AutoencoderTinyConfiguration) {
        let channels = configuration.encoderBlockOutChannels
        let activation = configuration.activationFunction.function
        var list: [UnaryLayer] = []
        for (index, count) in configuration.encoderBlockCounts.enumerated() {
            let width = channels[index]
            if index == 0 {
                list.append(Conv2d(configuration.inChannels, width, kernelSize: 3, padding: 1))
            } else {
                list.append(Conv2d(width, width, kernelSize: 3, stride: 2, padding: 1, bias: false))
            }
            for _ in 0..<count { list.append(AutoencoderTinyBlock(inChannels: width, outChannels: width, activation: activation)) }
        }
        list.append(Conv2d(channels[channels.count - 1], configuration.latentChannels, kernelSize: 3, padding: 1))
        layers = Sequential(list)
        super.init()
    }

    /// `[batch, inChannels, H, W]` in [−1, 1] → latents `[batch, latentChannels, H / 2^(blocks − 1), …]`.
    public func callAsFunction(_ images: Tensor) -> Tensor {
        layers((images + 1) / 2)
    }
}

/// diffusers' `DecoderTiny`: `tanh(x / 3) · 3`, then `layers` = a 3×3
/// convolution and the activation, per block its `AutoencoderTinyBlock`s, an
/// upsampling (except for the last block) and a 3×3 convolution (without bias,
/// except for the last, which gives the output channels); the [0, 1] result
/// is mapped to [−1, 1].
public final class AutoencoderTinyDecoder: Module {
    public let layers: Sequential

    public init(configuration: AutoencoderTinyConfiguration) {
        let channels = configuration.decoderBlockOutChannels
        let activation = configuration.activationFunction.function
        var list: [UnaryLayer] = [Conv2d(configuration.latentChannels, channels[0], kernelSize: 3, padding: 1), Activation(activation)]
        let last = configuration.decoderBlockCounts.count - 1
        for (index, count) in configuration.decoderBlockCounts.enumerated() {
            let width = channels[index]
            for _ in 0..<count { list.append(AutoencoderTinyBlock(inChannels: width, outChannels: width, activation: activation)) }
            if index != last { list.append(NearestUpsampling(scaleFactor: configuration.upsamplingScalingFactor)) }
            list.append(Conv2d(width, index == last ? configuration.outChannels : width, kernelSize: 3, padding: 1, bias: index == last))
        }
        layers = Sequential(list)
        super.init()
    }

    /// Latents `[batch, latentChannels, h, w]` → images in [−1, 1].
    public func callAsFunction(_ latents: Tensor) -> Tensor {
        let clamped = (latents / 3).tanh() * 3
        return layers(clamped) * 2 - 1
    }
}
