import Foundation
import NN
import Tensors

/// The configuration of a `UNet2DConditionModel` (Stable Diffusion's UNet):
/// the arguments of diffusers' `UNet2DConditionModel.__init__`, read from and
/// written to `config.json` under diffusers' keys.
///
/// Defaults are diffusers' defaults. Reading is strict about what changes the
/// model: a key Diffuse does not know, a value of the wrong type, or a choice
/// Diffuse does not implement (`addition_embed_type`, `dual_cross_attention`,
/// a `SimpleCrossAttn` block…) is an error naming the key. Keys that only
/// configure blocks Diffuse does not build (`resnet_skip_time_act`,
/// `cross_attention_norm`, …) are accepted, kept and written back.
///
/// ```swift
/// let configuration = UNet2DConditionConfiguration.stableDiffusion15
/// let unet = try UNet2DConditionModel(configuration: configuration)
/// ```
public struct UNet2DConditionConfiguration: Equatable, Sendable {
    /// Entries of `down_block_types`.
    public enum DownBlockType: String, Sendable, CaseIterable {
        /// Resnets each followed by a `Transformer2DModel`.
        case crossAttentionDownBlock = "CrossAttnDownBlock2D"
        /// Resnets only.
        case downBlock = "DownBlock2D"
    }

    /// Entries of `up_block_types`.
    public enum UpBlockType: String, Sendable, CaseIterable {
        case crossAttentionUpBlock = "CrossAttnUpBlock2D"
        case upBlock = "UpBlock2D"
    }

    /// `mid_block_type` (null for no middle block).
    public enum MidBlockType: String, Sendable, CaseIterable {
        /// Resnet, then (transformer, resnet) pairs.
        case crossAttention = "UNetMidBlock2DCrossAttn"
        /// One resnet (diffusers builds `UNetMidBlock2D` here without attention).
        case plain = "UNetMidBlock2D"
    }

    /// `class_embed_type` (null: an embedding table when `num_class_embeds` is set).
    public enum ClassEmbeddingType: String, Sendable, CaseIterable {
        /// Labels go through the time projection and a second `TimestepEmbedding`.
        case timestep
        /// A `[batch, timeEmbeddingDimension]` condition added as is.
        case identity
        /// A `[batch, projection_class_embeddings_input_dim]` condition through a `TimestepEmbedding`.
        case projection
        /// A `[batch, projection_class_embeddings_input_dim]` condition through one `Linear`.
        case simpleProjection = "simple_projection"
    }

    /// A value given once for all blocks, or as a list with one entry per down block
    /// (diffusers accepts both; the form is kept so the file is written back the same).
    public enum PerBlock<Value: Equatable & Sendable>: Equatable, Sendable {
        case uniform(Value)
        case list([Value])

        /// One value per block.
        public func values(count: Int) -> [Value] {
            switch self {
            case .uniform(let value): return Array(repeating: value, count: count)
            case .list(let values): return values
            }
        }

        /// The number of entries when given as a list.
        var listCount: Int? {
            if case .list(let values) = self { return values.count }
            return nil
        }
    }

    /// `sample_size` (informational).
    public var sampleSize: UNet2DConfiguration.SampleSize? = nil
    /// `in_channels`.
    public var inChannels = 4
    /// `out_channels`.
    public var outChannels = 4
    /// `center_input_sample`: map the input from [0, 1] to [−1, 1] first.
    public var centerInputSample = false
    /// `flip_sin_to_cos`: cosines first in the sinusoidal time embedding.
    public var flipSinToCos = true
    /// `freq_shift`: the sinusoidal embedding's `downscale_freq_shift`.
    public var frequencyShift: Double = 0
    /// `down_block_types`.
    public var downBlockTypes: [DownBlockType] = [.crossAttentionDownBlock, .crossAttentionDownBlock, .crossAttentionDownBlock, .downBlock]
    /// `mid_block_type`.
    public var midBlockType: MidBlockType? = .crossAttention
    /// `up_block_types`.
    public var upBlockTypes: [UpBlockType] = [.upBlock, .crossAttentionUpBlock, .crossAttentionUpBlock, .crossAttentionUpBlock]
    /// `only_cross_attention`: the first attention of each transformer block attends to the context too.
    public var onlyCrossAttention = PerBlock<Bool>.uniform(false)
    /// `block_out_channels`.
    public var blockOutChannels = [320, 640, 1280, 1280]
    /// `layers_per_block`: resnets per down block (up blocks have one more).
    public var layersPerBlock = PerBlock<Int>.uniform(2)
    /// `downsample_padding`.
    public var downsamplePadding = 1
    /// `mid_block_scale_factor`: the middle block's resnet output divisor.
    public var midBlockScaleFactor: Double = 1
    /// `dropout`.
    public var dropout: Double = 0
    /// `act_fn`: the activation of resnets, time embedding and output.
    public var activationFunction = UNet2DConfiguration.ActivationFunction.silu
    /// `norm_num_groups`.
    public var normGroupCount = 32
    /// `norm_eps`.
    public var normEpsilon: Double = 1e-5
    /// `cross_attention_dim`: channels of `encoder_hidden_states`.
    public var crossAttentionDimension = PerBlock<Int>.uniform(1280)
    /// `transformer_layers_per_block`: `BasicTransformerBlock`s per `Transformer2DModel`.
    public var transformerLayersPerBlock = PerBlock<Int>.uniform(1)
    /// `attention_head_dim`. Despite the name, diffusers reads it as the number of
    /// heads when `num_attention_heads` is null (Stable Diffusion 1.x's 8 means 8 heads).
    public var attentionHeadDimension = PerBlock<Int>.uniform(8)
    /// `num_attention_heads` (diffusers 0.42 refuses a non-null value; Diffuse takes it as the head count).
    public var attentionHeadCount: PerBlock<Int>? = nil
    /// `use_linear_projection`: `proj_in`/`proj_out` as `Linear` instead of 1×1 convolutions.
    public var useLinearProjection = false
    /// `upcast_attention`: attention scores in float32 (Diffuse always computes them in float32).
    public var upcastAttention = false
    /// `resnet_time_scale_shift`.
    public var resnetTimeScaleShift = ResnetBlock2D.TimeEmbeddingNorm.default
    /// `class_embed_type`.
    public var classEmbeddingType: ClassEmbeddingType? = nil
    /// `num_class_embeds`: rows of the class embedding table.
    public var classEmbeddingCount: Int? = nil
    /// `projection_class_embeddings_input_dim`: input width of the `projection` class embeddings.
    public var projectionClassEmbeddingInputDimension: Int? = nil
    /// `class_embeddings_concat`: concatenate the class embedding to the time embedding instead of adding it.
    public var classEmbeddingsConcatenated = false
    /// `time_embedding_dim` (nil: 4 × `block_out_channels[0]`).
    public var timeEmbeddingDimension: Int? = nil
    /// `time_embedding_act_fn`: an activation applied to the time embedding before the blocks.
    public var timeEmbeddingActivation: UNet2DConfiguration.ActivationFunction? = nil
    /// `time_cond_proj_dim`: width of an extra timestep condition (`timestep_cond`), projected
    /// by `time_embedding.cond_proj` and added to the sinusoidal embedding.
    public var timeConditionProjectionDimension: Int? = nil
    /// `conv_in_kernel`.
    public var convInKernel = 3
    /// `conv_out_kernel`.
    public var convOutKernel = 3
    /// Keys that configure only blocks Diffuse does not build, kept to be written back
    /// (`resnet_skip_time_act`, `resnet_out_scale_factor`, `mid_block_only_cross_attention`,
    /// `cross_attention_norm`, `addition_embed_type_num_heads`, `addition_time_embed_dim`).
    public var inertKeys: [String: JSONValue] = UNet2DConditionConfiguration.inertDefaults
    /// `_name_or_path`, kept when read so it is written back.
    public var nameOrPath: String? = nil

    /// The default configuration (diffusers' defaults).
    public init() {}

    /// diffusers' class name.
    public static let className = "UNet2DConditionModel"

    /// Stable Diffusion 1.5's `unet/config.json`.
    public static var stableDiffusion15: UNet2DConditionConfiguration {
        var configuration = UNet2DConditionConfiguration()
        configuration.sampleSize = .square(64)
        configuration.crossAttentionDimension = .uniform(768)
        configuration.normEpsilon = 1e-5
        return configuration
    }

    /// Stable Diffusion 2.1's (768-v) `unet/config.json`: per-block heads, linear
    /// projections, upcast attention, a 1024-wide context.
    public static var stableDiffusion21: UNet2DConditionConfiguration {
        var configuration = UNet2DConditionConfiguration()
        configuration.sampleSize = .square(96)
        configuration.crossAttentionDimension = .uniform(1024)
        configuration.attentionHeadDimension = .list([5, 10, 20, 20])
        configuration.useLinearProjection = true
        configuration.upcastAttention = true
        return configuration
    }

    /// The time embedding's width.
    public var resolvedTimeEmbeddingDimension: Int { timeEmbeddingDimension ?? (blockOutChannels.first ?? 0) * 4 }

    /// The width of the time embedding the resnets take (doubled with `class_embeddings_concat`).
    public var blockTimeEmbeddingDimension: Int { resolvedTimeEmbeddingDimension * (classEmbeddingsConcatenated ? 2 : 1) }

    /// Attention heads per down block (`num_attention_heads`, else `attention_head_dim`).
    public var resolvedHeadCounts: [Int] { (attentionHeadCount ?? attentionHeadDimension).values(count: blockOutChannels.count) }
}

/// Errors reading or using a `UNet2DConditionModel` configuration.
public enum UNet2DConditionConfigurationError: Error, CustomStringConvertible, Equatable {
    /// A key Diffuse does not read.
    case unsupportedKey(String)
    /// A value of the wrong JSON type.
    case wrongType(key: String, expected: String, found: String)
    /// A choice Diffuse does not implement.
    case unsupportedValue(key: String, value: String, supported: [String])
    /// A value that cannot build a model.
    case invalid(key: String, reason: String)
    /// `_class_name` is not `UNet2DConditionModel`.
    case wrongClassName(String)
    /// The text is not a JSON object.
    case invalidJSON(String)

    /// The same error, from the `UNet2DModel` key reader.
    init(_ error: UNet2DConfigurationError) {
        switch error {
        case .unsupportedKey(let key): self = .unsupportedKey(key)
        case .wrongType(let key, let expected, let found): self = .wrongType(key: key, expected: expected, found: found)
        case .unsupportedValue(let key, let value, let supported): self = .unsupportedValue(key: key, value: value, supported: supported)
        case .invalid(let key, let reason): self = .invalid(key: key, reason: reason)
        case .wrongClassName(let name): self = .wrongClassName(name)
        case .invalidJSON(let reason): self = .invalidJSON(reason)
        }
    }

    public var description: String {
        switch self {
        case .unsupportedKey(let key):
            return "UNet2DConditionModel configuration key \"\(key)\" is not supported by Diffuse"
        case .wrongType(let key, let expected, let found):
            return "UNet2DConditionModel configuration key \"\(key)\" must be \(expected), found \(found)"
        case .unsupportedValue(let key, let value, let supported):
            return "UNet2DConditionModel configuration key \"\(key)\" has value \(value), which Diffuse does not support; supported: "
                + supported.joined(separator: ", ")
        case .invalid(let key, let reason):
            return "UNet2DConditionModel configuration key \"\(key)\": \(reason)"
        case .wrongClassName(let name):
            return "the configuration is for \"\(name)\", not UNet2DConditionModel (_class_name)"
        case .invalidJSON(let reason):
            return "the UNet2DConditionModel configuration is not a JSON object: \(reason)"
        }
    }
}
