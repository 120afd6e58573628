import Foundation
import NN
import Tensors

/// diffusers' `Downsample2D` with a convolution (`use_conv=True`, as every
/// UNet2DModel block builds it): a 3×3 stride-2 convolution named `conv`.
/// Padding 0 pads one zero row and column at the bottom and right first,
/// as diffusers does.
public final class Downsample2D: Module, UnaryLayer {
    public let conv: Conv2d
    public let padding: Int

    public init(channels: Int, outChannels: Int? = nil, padding: Int = 1) {
        conv = Conv2d(channels, outChannels ?? channels, kernelSize: 3, stride: 2, padding: padding)
        self.padding = padding
        super.init()
    }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        guard padding == 0 else { return conv(input) }
        if input.rank == 4 && input.layout == .channelsLast {
            // Padded as the [N, H, W, C] matrix it is in memory (runs of C contiguous
            // values), which stays channels-last for the convolution.
            return conv(input.permuted(0, 2, 3, 1).padded([(0, 0), (0, 1), (0, 1)]).permuted(0, 3, 1, 2))
        }
        return conv(input.padded([(0, 1), (0, 1)]))
    }
}

/// diffusers' `Upsample2D` with a convolution: nearest-neighbour ×2, then a
/// 3×3 convolution named `conv`.
public final class Upsample2D: Module, UnaryLayer {
    public let conv: Conv2d

    public init(channels: Int, outChannels: Int? = nil) {
        conv = Conv2d(channels, outChannels ?? channels, kernelSize: 3, padding: 1)
        super.init()
    }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        conv(input.upsampleNearest(scaleFactor: 2))
    }

    /// Nearest-neighbour to `height × width` (diffusers' `output_size`, which a UNet
    /// passes when the sample's sides are not divisible by its total downsampling),
    /// then the convolution. Each side must be twice the input's or one less: for
    /// those, nearest interpolation is doubling and dropping the last row or column.
    public func callAsFunction(_ input: Tensor, height: Int, width: Int) -> Tensor {
        let (inputHeight, inputWidth) = (input.shape[2], input.shape[3])
        guard [2 * inputHeight, 2 * inputHeight - 1].contains(height), [2 * inputWidth, 2 * inputWidth - 1].contains(width) else {
            fatalError("Upsample2D: cannot upsample \(inputHeight)×\(inputWidth) to \(height)×\(width) (only ×2, or ×2 less one)")
        }
        var upsampled = input.upsampleNearest(scaleFactor: 2)
        if height < 2 * inputHeight { upsampled = upsampled.narrowed(axis: 2, start: 0, length: height) }
        if width < 2 * inputWidth { upsampled = upsampled.narrowed(axis: 3, start: 0, length: width) }
        return conv(upsampled)
    }
}
