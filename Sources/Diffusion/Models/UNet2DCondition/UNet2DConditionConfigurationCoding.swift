import Foundation
import NN

// Reading and writing `config.json`: diffusers' keys and JSON conventions at
// the edge, Swift enums inside.

extension UNet2DConditionConfiguration: Codable, ModelConfigurationFile {
    /// Decodes a JSON object with diffusers' keys, as `init(jsonObject:)`.
    public init(from decoder: Decoder) throws {
        try self.init(jsonValue: try decoder.singleValueContainer().decode(CodableJSONValue.self).value)
    }

    /// Encodes every key of `jsonObject`.
    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(CodableJSONValue(.object(jsonObject)))
    }

    /// The error for a `config.json` that is not a JSON object.
    public static func invalidJSON(_ reason: String) -> Error { UNet2DConditionConfigurationError.invalidJSON(reason) }

    /// Builds the configuration from diffusers' keys; absent keys take diffusers' defaults.
    public init(jsonObject members: [String: JSONValue]) throws {
        do {
            try self.init(reading: members)
        } catch let error as UNet2DConfigurationError {
            throw UNet2DConditionConfigurationError(error)
        }
    }

    private init(reading members: [String: JSONValue]) throws {
        self.init()
        typealias Failure = UNet2DConditionConfigurationError
        let reader = KeyReader(members: members)
        let ignoredPrivateKeys: Set<String> = ["_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"]
        for key in members.keys.sorted() where !Self.keys.contains(key) && !ignoredPrivateKeys.contains(key) {
            throw Failure.unsupportedKey(key)
        }
        if let name = try reader.string("_class_name"), name != Self.className { throw Failure.wrongClassName(name) }
        nameOrPath = try reader.string("_name_or_path")

        // Keys whose other values select parts Diffuse does not build.
        func requireDefault(_ key: String, _ expected: JSONValue, _ supported: String) throws {
            guard let value = members[key], value != expected else { return }
            throw Failure.unsupportedValue(key: key, value: value.description, supported: [supported])
        }
        try requireDefault("dual_cross_attention", .bool(false), "false")
        try requireDefault("addition_embed_type", .null, "null")
        try requireDefault("encoder_hid_dim", .null, "null")
        try requireDefault("encoder_hid_dim_type", .null, "null")
        try requireDefault("time_embedding_type", .string("positional"), "\"positional\"")
        try requireDefault("timestep_post_act", .null, "null")
        try requireDefault("attention_type", .string("default"), "\"default\"")
        try requireDefault("reverse_transformer_layers_per_block", .null, "null")

        if let value = members["sample_size"] {
            switch value {
            case .null: sampleSize = nil
            case .int(let size): sampleSize = .square(size)
            case .array(let items) where items.count == 2 && items.allSatisfy({ if case .int = $0 { true } else { false } }):
                if case .int(let height) = items[0], case .int(let width) = items[1] {
                    sampleSize = .rectangle(height: height, width: width)
                }
            default:
                throw Failure.wrongType(key: "sample_size", expected: "an integer, [height, width] or null", found: value.description)
            }
        }
        if let value = try reader.integer("in_channels") { inChannels = value }
        if let value = try reader.integer("out_channels") { outChannels = value }
        if let value = try reader.flag("center_input_sample") { centerInputSample = value }
        if let value = try reader.flag("flip_sin_to_cos") { flipSinToCos = value }
        if let value = try reader.number("freq_shift") { frequencyShift = value }
        if let value: [DownBlockType] = try reader.choices("down_block_types") { downBlockTypes = value }
        if let value: MidBlockType? = try reader.nullableChoice("mid_block_type") { midBlockType = value }
        if let value: [UpBlockType] = try reader.choices("up_block_types") { upBlockTypes = value }
        if let value = try Self.perBlockFlag(members, "only_cross_attention") { onlyCrossAttention = value }
        if let value = try reader.integers("block_out_channels") { blockOutChannels = value }
        if let value = try Self.perBlockInteger(members, "layers_per_block") { layersPerBlock = value }
        if let value = try reader.integer("downsample_padding") { downsamplePadding = value }
        if let value = try reader.number("mid_block_scale_factor") { midBlockScaleFactor = value }
        if let value = try reader.number("dropout") { dropout = value }
        if let value: UNet2DConfiguration.ActivationFunction = try reader.choice("act_fn") { activationFunction = value }
        if let value = members["norm_num_groups"] {
            guard case .int(let groups) = value else {
                throw Failure.unsupportedValue(key: "norm_num_groups", value: value.description, supported: ["a positive integer"])
            }
            normGroupCount = groups
        }
        if let value = try reader.number("norm_eps") { normEpsilon = value }
        if let value = try Self.perBlockInteger(members, "cross_attention_dim") { crossAttentionDimension = value }
        if let value = try Self.perBlockInteger(members, "transformer_layers_per_block") { transformerLayersPerBlock = value }
        if let value = try Self.perBlockInteger(members, "attention_head_dim") { attentionHeadDimension = value }
        if members["num_attention_heads"] != nil, members["num_attention_heads"] != .null {
            attentionHeadCount = try Self.perBlockInteger(members, "num_attention_heads")
        }
        if let value = try reader.flag("use_linear_projection") { useLinearProjection = value }
        if let value = try reader.flag("upcast_attention") { upcastAttention = value }
        if let value: ResnetBlock2D.TimeEmbeddingNorm = try reader.choice("resnet_time_scale_shift") { resnetTimeScaleShift = value }
        if let value: ClassEmbeddingType? = try reader.nullableChoice("class_embed_type") { classEmbeddingType = value }
        if let value = try reader.nullableInteger("num_class_embeds") { classEmbeddingCount = value }
        if let value = try reader.nullableInteger("projection_class_embeddings_input_dim") { projectionClassEmbeddingInputDimension = value }
        if let value = try reader.flag("class_embeddings_concat") { classEmbeddingsConcatenated = value }
        if let value = try reader.nullableInteger("time_embedding_dim") { timeEmbeddingDimension = value }
        if let value: UNet2DConfiguration.ActivationFunction? = try reader.nullableChoice("time_embedding_act_fn") {
            timeEmbeddingActivation = value
        }
        if let value = try reader.nullableInteger("time_cond_proj_dim") { timeConditionProjectionDimension = value }
        if let value = try reader.integer("conv_in_kernel") { convInKernel = value }
        if let value = try reader.integer("conv_out_kernel") { convOutKernel = value }
        for key in Self.inertDefaults.keys { if let value = members[key] { inertKeys[key] = value } }
    }

    /// An integer or a list of integers.
    private static func perBlockInteger(_ members: [String: JSONValue], _ key: String) throws -> PerBlock<Int>? {
        guard let value = members[key] else { return nil }
        switch value {
        case .int(let number): return .uniform(number)
        case .array(let items):
            return .list(try items.map { item in
                guard case .int(let number) = item else {
                    throw UNet2DConditionConfigurationError.wrongType(key: key, expected: "an integer or a list of integers", found: value.description)
                }
                return number
            })
        default:
            throw UNet2DConditionConfigurationError.wrongType(key: key, expected: "an integer or a list of integers", found: value.description)
        }
    }

    /// A boolean or a list of booleans.
    private static func perBlockFlag(_ members: [String: JSONValue], _ key: String) throws -> PerBlock<Bool>? {
        guard let value = members[key] else { return nil }
        switch value {
        case .bool(let flag): return .uniform(flag)
        case .array(let items):
            return .list(try items.map { item in
                guard case .bool(let flag) = item else {
                    throw UNet2DConditionConfigurationError.wrongType(key: key, expected: "true, false or a list of them", found: value.description)
                }
                return flag
            })
        default:
            throw UNet2DConditionConfigurationError.wrongType(key: key, expected: "true, false or a list of them", found: value.description)
        }
    }

    /// The keys that only configure blocks Diffuse does not build, with diffusers' defaults.
    public static let inertDefaults: [String: JSONValue] = [
        "resnet_skip_time_act": .bool(false), "resnet_out_scale_factor": .double(1.0), "mid_block_only_cross_attention": .null,
        "cross_attention_norm": .null, "addition_embed_type_num_heads": .int(64), "addition_time_embed_dim": .null,
    ]

    /// Every diffusers key `UNet2DConditionModel.__init__` takes.
    public static let keys: Set<String> = Set(inertDefaults.keys).union([
        "sample_size", "in_channels", "out_channels", "center_input_sample", "flip_sin_to_cos", "freq_shift", "down_block_types",
        "mid_block_type", "up_block_types", "only_cross_attention", "block_out_channels", "layers_per_block", "downsample_padding",
        "mid_block_scale_factor", "dropout", "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim",
        "transformer_layers_per_block", "reverse_transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type",
        "attention_head_dim", "num_attention_heads", "dual_cross_attention", "use_linear_projection", "class_embed_type",
        "addition_embed_type", "num_class_embeds", "upcast_attention", "resnet_time_scale_shift", "time_embedding_type",
        "time_embedding_dim", "time_embedding_act_fn", "timestep_post_act", "time_cond_proj_dim", "conv_in_kernel",
        "conv_out_kernel", "projection_class_embeddings_input_dim", "attention_type", "class_embeddings_concat",
    ])

    /// All keys with their values, plus `_class_name` and `_diffusers_version`, as diffusers' `save_config` writes them.
    public var jsonObject: [String: JSONValue] {
        func optional(_ value: Int?) -> JSONValue { value.map { .int($0) } ?? .null }
        func number(_ value: Double) -> JSONValue {
            value.rounded() == value && Swift.abs(value) < 1e15 ? .int(Int(value)) : .double(value)
        }
        func integers(_ value: PerBlock<Int>) -> JSONValue {
            switch value {
            case .uniform(let number): return .int(number)
            case .list(let numbers): return .array(numbers.map { .int($0) })
            }
        }
        func flags(_ value: PerBlock<Bool>) -> JSONValue {
            switch value {
            case .uniform(let flag): return .bool(flag)
            case .list(let flags): return .array(flags.map { .bool($0) })
            }
        }
        var object: [String: JSONValue] = inertKeys
        let members: [String: JSONValue] = [
            "_class_name": .string(Self.className),
            "_diffusers_version": .string(SchedulerConfiguration.diffusersVersion),
            "in_channels": .int(inChannels), "out_channels": .int(outChannels),
            "center_input_sample": .bool(centerInputSample), "flip_sin_to_cos": .bool(flipSinToCos),
            "freq_shift": number(frequencyShift),
            "down_block_types": .array(downBlockTypes.map { .string($0.rawValue) }),
            "mid_block_type": midBlockType.map { .string($0.rawValue) } ?? .null,
            "up_block_types": .array(upBlockTypes.map { .string($0.rawValue) }),
            "only_cross_attention": flags(onlyCrossAttention),
            "block_out_channels": .array(blockOutChannels.map { .int($0) }),
            "layers_per_block": integers(layersPerBlock), "downsample_padding": .int(downsamplePadding),
            "mid_block_scale_factor": number(midBlockScaleFactor), "dropout": .double(dropout),
            "act_fn": .string(activationFunction.rawValue), "norm_num_groups": .int(normGroupCount), "norm_eps": .double(normEpsilon),
            "cross_attention_dim": integers(crossAttentionDimension),
            "transformer_layers_per_block": integers(transformerLayersPerBlock),
            "reverse_transformer_layers_per_block": .null, "encoder_hid_dim": .null, "encoder_hid_dim_type": .null,
            "attention_head_dim": integers(attentionHeadDimension),
            "num_attention_heads": attentionHeadCount.map(integers) ?? .null,
            "dual_cross_attention": .bool(false), "use_linear_projection": .bool(useLinearProjection),
            "class_embed_type": classEmbeddingType.map { .string($0.rawValue) } ?? .null,
            "addition_embed_type": .null, "num_class_embeds": optional(classEmbeddingCount),
            "upcast_attention": .bool(upcastAttention), "resnet_time_scale_shift": .string(resnetTimeScaleShift.rawValue),
            "time_embedding_type": .string("positional"), "time_embedding_dim": optional(timeEmbeddingDimension),
            "time_embedding_act_fn": timeEmbeddingActivation.map { .string($0.rawValue) } ?? .null,
            "timestep_post_act": .null, "time_cond_proj_dim": optional(timeConditionProjectionDimension),
            "conv_in_kernel": .int(convInKernel), "conv_out_kernel": .int(convOutKernel),
            "projection_class_embeddings_input_dim": optional(projectionClassEmbeddingInputDimension),
            "attention_type": .string("default"), "class_embeddings_concat": .bool(classEmbeddingsConcatenated),
        ]
        object.merge(members) { _, new in new }
        switch sampleSize {
        case nil: object["sample_size"] = .null
        case .square(let size)?: object["sample_size"] = .int(size)
        case .rectangle(let height, let width)?: object["sample_size"] = .array([.int(height), .int(width)])
        }
        if let nameOrPath { object["_name_or_path"] = .string(nameOrPath) }
        return object
    }
}
