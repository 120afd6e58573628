import Foundation
import NN
import Tensors

/// The configuration of a `UNet2DModel`: every argument of diffusers'
/// `UNet2DModel.__init__`, read from and written to `config.json` under
/// diffusers' keys (`block_out_channels`, `resnet_time_scale_shift`, …).
///
/// Defaults are diffusers' defaults, so a `config.json` that leaves a key out
/// means the same thing in both. Reading is strict: a key Diffuse does not
/// know, a value of the wrong type, or a choice Diffuse does not implement
/// (a block type, an activation…) is an error naming the key. Of diffusers'
/// private keys, `_class_name` (which must be `UNet2DModel`),
/// `_diffusers_version`, `_name_or_path` and `_use_default_values` are
/// accepted; they do not change the model.
///
/// ```swift
/// var configuration = UNet2DConfiguration()
/// configuration.sampleSize = .square(28)
/// configuration.inChannels = 1
/// configuration.outChannels = 1
/// configuration.blockOutChannels = [32, 64, 64]
/// configuration.downBlockTypes = [.downBlock, .attentionDownBlock, .attentionDownBlock]
/// configuration.upBlockTypes = [.attentionUpBlock, .attentionUpBlock, .upBlock]
/// let unet = try UNet2DModel(configuration: configuration)
/// ```
public struct UNet2DConfiguration: Equatable, Sendable {
    /// `sample_size`: an integer, or `[height, width]`.
    public enum SampleSize: Equatable, Sendable {
        case square(Int)
        case rectangle(height: Int, width: Int)
    }

    /// `time_embedding_type`.
    public enum TimeEmbeddingType: String, Sendable, CaseIterable {
        /// Sinusoidal embedding of the timestep (`Timesteps`).
        case positional
        /// Gaussian Fourier features of log σ (`GaussianFourierProjection`,
        /// scale 16); the output is divided by σ.
        case fourier
        /// A learned table of `num_train_timesteps` rows.
        case learned
    }

    /// Entries of `down_block_types`.
    public enum DownBlockType: String, Sendable, CaseIterable {
        case downBlock = "DownBlock2D"
        case attentionDownBlock = "AttnDownBlock2D"
        case resnetDownsampleBlock = "ResnetDownsampleBlock2D"
    }

    /// Entries of `up_block_types`.
    public enum UpBlockType: String, Sendable, CaseIterable {
        case upBlock = "UpBlock2D"
        case attentionUpBlock = "AttnUpBlock2D"
        case resnetUpsampleBlock = "ResnetUpsampleBlock2D"
    }

    /// `mid_block_type` (null for no middle block).
    public enum MidBlockType: String, Sendable, CaseIterable {
        case midBlock = "UNetMidBlock2D"
    }

    /// `downsample_type` and `upsample_type`: a strided (or upsampling)
    /// convolution, or a resnet that pools (or upsamples) inside.
    public enum ResamplingType: String, Sendable, CaseIterable {
        case conv, resnet
    }

    /// `act_fn`: the activations diffusers' `get_activation` knows.
    public enum ActivationFunction: String, Sendable, CaseIterable {
        case silu, swish, mish, gelu, relu

        /// The NN activation.
        public var function: Activation.Function {
            switch self {
            case .silu: return .silu
            case .swish: return .swish
            case .mish: return .mish
            case .gelu: return .gelu
            case .relu: return .relu
            }
        }
    }

    /// `class_embed_type` (null: an `nn.Embedding` when `num_class_embeds` is set).
    public enum ClassEmbeddingType: String, Sendable, CaseIterable {
        /// Labels go through the time projection and a second `TimestepEmbedding`.
        case timestep
        /// The class condition is a `[batch, timeEmbeddingDimension]` tensor, added as is.
        case identity
    }

    /// `sample_size` (nil: unset; informational, the model takes any size
    /// divisible by 2^(blocks − 1)).
    public var sampleSize: SampleSize? = nil
    /// `in_channels`.
    public var inChannels = 3
    /// `out_channels`.
    public var outChannels = 3
    /// `center_input_sample`: map the input from [0, 1] to [−1, 1] first.
    public var centerInputSample = false
    /// `time_embedding_type`.
    public var timeEmbeddingType = TimeEmbeddingType.positional
    /// `time_embedding_dim` (nil: 4 × `block_out_channels[0]`).
    public var timeEmbeddingDimension: Int? = nil
    /// `freq_shift`: the sinusoidal embedding's `downscale_freq_shift`.
    public var frequencyShift: Double = 0
    /// `flip_sin_to_cos`: cosines first in the sinusoidal embedding.
    public var flipSinToCos = true
    /// `down_block_types`.
    public var downBlockTypes: [DownBlockType] = [.downBlock, .attentionDownBlock, .attentionDownBlock, .attentionDownBlock]
    /// `mid_block_type`.
    public var midBlockType: MidBlockType? = .midBlock
    /// `up_block_types`.
    public var upBlockTypes: [UpBlockType] = [.attentionUpBlock, .attentionUpBlock, .attentionUpBlock, .upBlock]
    /// `block_out_channels`.
    public var blockOutChannels = [224, 448, 672, 896]
    /// `layers_per_block`: resnets per down block (up blocks have one more).
    public var layersPerBlock = 2
    /// `mid_block_scale_factor`: the middle block's output scale.
    public var midBlockScaleFactor: Double = 1
    /// `downsample_padding`.
    public var downsamplePadding = 1
    /// `downsample_type` (used by `AttnDownBlock2D`).
    public var downsampleType = ResamplingType.conv
    /// `upsample_type` (used by `AttnUpBlock2D`).
    public var upsampleType = ResamplingType.conv
    /// `dropout`.
    public var dropout: Double = 0
    /// `act_fn`: the resnets' activation.
    public var activationFunction = ActivationFunction.silu
    /// `attention_head_dim` (nil: one head over all channels).
    public var attentionHeadDimension: Int? = 8
    /// `norm_num_groups`.
    public var normGroupCount = 32
    /// `attn_norm_num_groups`: groups of the middle attention's group norm
    /// (nil: `norm_num_groups` with the default time scale shift, none with `scale_shift`).
    public var attentionNormGroupCount: Int? = nil
    /// `norm_eps`.
    public var normEpsilon: Double = 1e-5
    /// `resnet_time_scale_shift`.
    public var resnetTimeScaleShift = ResnetBlock2D.TimeEmbeddingNorm.default
    /// `add_attention`: attention in the middle block.
    public var addAttention = true
    /// `class_embed_type`.
    public var classEmbeddingType: ClassEmbeddingType? = nil
    /// `num_class_embeds`: classes of the label embedding table.
    public var classEmbeddingCount: Int? = nil
    /// `num_train_timesteps`: rows of the `learned` time embedding.
    public var trainTimesteps: Int? = nil
    /// `_name_or_path`, kept when read so it is written back.
    public var nameOrPath: String? = nil

    /// The default configuration (diffusers' defaults).
    public init() {}

    /// The time embedding's width.
    public var resolvedTimeEmbeddingDimension: Int { timeEmbeddingDimension ?? (blockOutChannels.first ?? 0) * 4 }

    /// diffusers' class name.
    public static let className = "UNet2DModel"
}

/// Errors reading or using a `UNet2DModel` configuration.
public enum UNet2DConfigurationError: Error, CustomStringConvertible, Equatable {
    /// A key Diffuse does not read.
    case unsupportedKey(String)
    /// A value of the wrong JSON type.
    case wrongType(key: String, expected: String, found: String)
    /// A string choice Diffuse does not implement.
    case unsupportedValue(key: String, value: String, supported: [String])
    /// A value that cannot build a model.
    case invalid(key: String, reason: String)
    /// `_class_name` is not `UNet2DModel`.
    case wrongClassName(String)
    /// The text is not a JSON object.
    case invalidJSON(String)

    public var description: String {
        switch self {
        case .unsupportedKey(let key):
            return "UNet2DModel configuration key \"\(key)\" is not supported by Diffuse"
        case .wrongType(let key, let expected, let found):
            return "UNet2DModel configuration key \"\(key)\" must be \(expected), found \(found)"
        case .unsupportedValue(let key, let value, let supported):
            return "UNet2DModel configuration key \"\(key)\" has value \"\(value)\", which Diffuse does not support; supported: "
                + supported.map { "\"\($0)\"" }.joined(separator: ", ")
        case .invalid(let key, let reason):
            return "UNet2DModel configuration key \"\(key)\": \(reason)"
        case .wrongClassName(let name):
            return "the configuration is for \"\(name)\", not UNet2DModel (_class_name)"
        case .invalidJSON(let reason):
            return "the UNet2DModel configuration is not a JSON object: \(reason)"
        }
    }
}
