import Foundation
import NN
import Tensors

/// The minimal UNet of the course's "from scratch" notes: three 5×5
/// convolutions down (32, 64, 64 channels), three up (64, 32, out), SiLU
/// after each, 2×2 max pooling after the first two down convolutions (whose
/// outputs are kept as skip connections), and nearest ×2 upsampling before
/// the last two up convolutions, each adding its skip connection. It takes no
/// timestep. With one input and one output channel it has 309,057 parameters.
///
/// Parameter names match the PyTorch module: `down_layers.0.weight` …
/// `up_layers.2.bias`.
public final class BasicUNet: Module {
    public let downLayers: [Conv2d]
    public let upLayers: [Conv2d]
    public let activation = Activation(.silu)

    public override class var stateDictKeys: [String: String] {
        ["downLayers": "down_layers", "upLayers": "up_layers", "activation": "act"]
    }

    public init(inChannels: Int = 1, outChannels: Int = 1) {
        downLayers = [
            Conv2d(inChannels, 32, kernelSize: 5, padding: 2),
            Conv2d(32, 64, kernelSize: 5, padding: 2),
            Conv2d(64, 64, kernelSize: 5, padding: 2),
        ]
        upLayers = [
            Conv2d(64, 64, kernelSize: 5, padding: 2),
            Conv2d(64, 32, kernelSize: 5, padding: 2),
            Conv2d(32, outChannels, kernelSize: 5, padding: 2),
        ]
        super.init()
    }

    /// `[batch, inChannels, height, width]` → `[batch, outChannels, height, width]`;
    /// height and width must be divisible by 4.
    public func callAsFunction(_ input: Tensor) -> Tensor {
        guard input.rank == 4, input.shape[2] % 4 == 0, input.shape[3] % 4 == 0 else {
            fatalError("BasicUNet: input must be [batch, channels, height, width] with height and width divisible by 4, got \(input.shape)")
        }
        var hidden = input
        var skips: [Tensor] = []
        for (index, layer) in downLayers.enumerated() {
            hidden = activation(layer(hidden))
            if index < 2 {
                skips.append(hidden)
                hidden = hidden.maxPool2d(kernelSize: 2)
            }
        }
        for (index, layer) in upLayers.enumerated() {
            if index > 0 {
                hidden = hidden.upsampleNearest(scaleFactor: 2) + skips.removeLast()
            }
            hidden = activation(layer(hidden))
        }
        return hidden
    }
}
