import Foundation
import NN
import Tensors

/// diffusers' `ResnetBlock2D`: group norm, activation, 3×3 convolution, the
/// projected time embedding (added, or as a scale and shift after the second
/// group norm), group norm, activation, dropout, 3×3 convolution, plus a
/// shortcut (a 1×1 convolution when the channel count changes), divided by
/// `outputScaleFactor`. With `resampling` it also halves (average pooling)
/// or doubles (nearest) the resolution after the first activation.
///
/// Parameter names: `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`, `conv_shortcut`.
public final class ResnetBlock2D: Module {
    /// How the time embedding conditions the block (`resnet_time_scale_shift`).
    public enum TimeEmbeddingNorm: String, Sendable, Codable, CaseIterable {
        /// Added to the activations before the second group norm.
        case `default`
        /// Split into a scale and shift applied after the second group norm
        /// (adaptive group norm): `norm2(h) · (1 + scale) + shift`.
        case scaleShift = "scale_shift"
    }

    /// Resolution change inside the block (diffusers' `up`/`down` flags).
    public enum Resampling: Sendable {
        case none, up, down
    }

    public let norm1: GroupNorm
    public let conv1: Conv2d
    public let timeEmbeddingProjection: Linear?
    public let norm2: GroupNorm
    public let dropout: Dropout
    public let conv2: Conv2d
    public let convShortcut: Conv2d?

    public override class var stateDictKeys: [String: String] {
        ["timeEmbeddingProjection": "time_emb_proj", "convShortcut": "conv_shortcut"]
    }

    public let activation: Activation
    public let timeEmbeddingNorm: TimeEmbeddingNorm
    public let outputScaleFactor: Float
    public let resampling: Resampling

    /// - Parameters:
    ///   - timeEmbeddingChannels: channels of the time embedding (`temb_channels`); nil for none.
    ///   - groups: groups of `norm1`; `outputGroups` (default `groups`) of `norm2`.
    ///   - useShortcutConvolution: force or forbid the 1×1 shortcut convolution
    ///     (default: when `inChannels != outChannels`).
    public init(inChannels: Int, outChannels: Int? = nil, timeEmbeddingChannels: Int?, groups: Int = 32, outputGroups: Int? = nil,
                epsilon: Float = 1e-6, dropout: Float = 0, activation: Activation.Function = .silu,
                timeEmbeddingNorm: TimeEmbeddingNorm = .default, outputScaleFactor: Float = 1,
                resampling: Resampling = .none, useShortcutConvolution: Bool? = nil) {
        let outChannels = outChannels ?? inChannels
        norm1 = GroupNorm(groupCount: groups, channels: inChannels, epsilon: epsilon)
        conv1 = Conv2d(inChannels, outChannels, kernelSize: 3, padding: 1)
        timeEmbeddingProjection = timeEmbeddingChannels.map {
            Linear($0, timeEmbeddingNorm == .scaleShift ? 2 * outChannels : outChannels)
        }
        norm2 = GroupNorm(groupCount: outputGroups ?? groups, channels: outChannels, epsilon: epsilon)
        self.dropout = Dropout(dropout)
        conv2 = Conv2d(outChannels, outChannels, kernelSize: 3, padding: 1)
        convShortcut = (useShortcutConvolution ?? (inChannels != outChannels)) ? Conv2d(inChannels, outChannels, kernelSize: 1) : nil
        self.activation = Activation(activation)
        self.timeEmbeddingNorm = timeEmbeddingNorm
        self.outputScaleFactor = outputScaleFactor
        self.resampling = resampling
        super.init()
    }

    public var inChannels: Int { conv1.inChannels }
    public var outChannels: Int { conv2.outChannels }

    /// - Parameters:
    ///   - input: `[batch, inChannels, height, width]`.
    ///   - timeEmbedding: `[batch, timeEmbeddingChannels]`, before the activation.
    /// `activation(norm(x))`, as one fused op for SiLU (it keeps less for backward).
    private func normalizeAndActivate(_ input: Tensor, _ norm: GroupNorm) -> Tensor {
        if activation.function == .silu || activation.function == .swish {
            return input.groupNormSiLU(groupCount: norm.groupCount, weight: norm.weight, bias: norm.bias, epsilon: norm.epsilon)
        }
        return activation(norm(input))
    }

    public func callAsFunction(_ input: Tensor, timeEmbedding: Tensor?) -> Tensor {
        var hidden = normalizeAndActivate(input, norm1)
        var shortcut = input
        switch resampling {
        case .none:
            break
        case .up:
            shortcut = shortcut.upsampleNearest(scaleFactor: 2)
            hidden = hidden.upsampleNearest(scaleFactor: 2)
        case .down:
            shortcut = shortcut.avgPool2d(kernelSize: 2)
            hidden = hidden.avgPool2d(kernelSize: 2)
        }
        hidden = conv1(hidden)
        var projected: Tensor?
        if let timeEmbeddingProjection, let timeEmbedding {
            let rows = timeEmbeddingProjection(activation(timeEmbedding))
            projected = rows.reshaped([rows.shape[0], rows.shape[1], 1, 1])
        }
        switch timeEmbeddingNorm {
        case .default:
            if let projected { hidden = hidden + projected }
            hidden = normalizeAndActivate(hidden, norm2)
        case .scaleShift:
            guard let projected else { fatalError("ResnetBlock2D: scale_shift needs a time embedding") }
            let parts = projected.chunked(2, axis: 1)
            hidden = activation(norm2(hidden) * (parts[0] + 1) + parts[1])
        }
        hidden = conv2(dropout(hidden))
        if let convShortcut { shortcut = convShortcut(shortcut) }
        let output = shortcut + hidden
        return outputScaleFactor == 1 ? output : output / outputScaleFactor
    }
}
