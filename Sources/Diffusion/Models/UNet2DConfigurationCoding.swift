import Foundation
import NN

// Reading and writing `config.json`: diffusers' keys and JSON conventions at
// the edge, Swift enums inside.

extension UNet2DConfiguration: Codable, ModelConfigurationFile {
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
    public static func invalidJSON(_ reason: String) -> Error { UNet2DConfigurationError.invalidJSON(reason) }

    /// Builds the configuration from diffusers' keys; absent keys take diffusers' defaults.
    public init(jsonObject members: [String: JSONValue]) throws {
        self.init()
        let reader = KeyReader(members: members)
        let ignoredPrivateKeys: Set<String> = ["_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"]
        for key in members.keys.sorted() where !UNet2DConfiguration.keys.contains(key) && !ignoredPrivateKeys.contains(key) {
            throw UNet2DConfigurationError.unsupportedKey(key)
        }
        if let name = try reader.string("_class_name"), name != UNet2DConfiguration.className {
            throw UNet2DConfigurationError.wrongClassName(name)
        }
        nameOrPath = try reader.string("_name_or_path")
        if let value = members["sample_size"] {
            switch value {
            case .null: sampleSize = nil
            case .int(let size): sampleSize = .square(size)
            case .array(let items) where items.count == 2 && items.allSatisfy({ if case .int = $0 { true } else { false } }):
                if case .int(let height) = items[0], case .int(let width) = items[1] {
                    sampleSize = .rectangle(height: height, width: width)
                }
            default:
                throw UNet2DConfigurationError.wrongType(key: "sample_size", expected: "an integer, [height, width] or null", found: value.description)
            }
        }
        if let value = try reader.integer("in_channels") { inChannels = value }
        if let value = try reader.integer("out_channels") { outChannels = value }
        if let value = try reader.flag("center_input_sample") { centerInputSample = value }
        if let value: TimeEmbeddingType = try reader.choice("time_embedding_type") { timeEmbeddingType = value }
        if let value = try reader.nullableInteger("time_embedding_dim") { timeEmbeddingDimension = value }
        if let value = try reader.number("freq_shift") { frequencyShift = value }
        if let value = try reader.flag("flip_sin_to_cos") { flipSinToCos = value }
        if let value: [DownBlockType] = try reader.choices("down_block_types") { downBlockTypes = value }
        if let value: MidBlockType? = try reader.nullableChoice("mid_block_type") { midBlockType = value }
        if let value: [UpBlockType] = try reader.choices("up_block_types") { upBlockTypes = value }
        if let value = try reader.integers("block_out_channels") { blockOutChannels = value }
        if let value = try reader.integer("layers_per_block") { layersPerBlock = value }
        if let value = try reader.number("mid_block_scale_factor") { midBlockScaleFactor = value }
        if let value = try reader.integer("downsample_padding") { downsamplePadding = value }
        if let value: ResamplingType = try reader.choice("downsample_type") { downsampleType = value }
        if let value: ResamplingType = try reader.choice("upsample_type") { upsampleType = value }
        if let value = try reader.number("dropout") { dropout = value }
        if let value: ActivationFunction = try reader.choice("act_fn") { activationFunction = value }
        if let value = try reader.nullableInteger("attention_head_dim") { attentionHeadDimension = value }
        if let value = try reader.integer("norm_num_groups") { normGroupCount = value }
        if let value = try reader.nullableInteger("attn_norm_num_groups") { attentionNormGroupCount = value }
        if let value = try reader.number("norm_eps") { normEpsilon = value }
        if let value: ResnetBlock2D.TimeEmbeddingNorm = try reader.choice("resnet_time_scale_shift") { resnetTimeScaleShift = value }
        if let value = try reader.flag("add_attention") { addAttention = value }
        if let value: ClassEmbeddingType? = try reader.nullableChoice("class_embed_type") { classEmbeddingType = value }
        if let value = try reader.nullableInteger("num_class_embeds") { classEmbeddingCount = value }
        if let value = try reader.nullableInteger("num_train_timesteps") { trainTimesteps = value }
    }

    /// Every diffusers key `UNet2DModel.__init__` takes, which Diffuse reads and writes.
    public static let keys: Set<String> = [
        "sample_size", "in_channels", "out_channels", "center_input_sample", "time_embedding_type", "time_embedding_dim",
        "freq_shift", "flip_sin_to_cos", "down_block_types", "mid_block_type", "up_block_types", "block_out_channels",
        "layers_per_block", "mid_block_scale_factor", "downsample_padding", "downsample_type", "upsample_type", "dropout",
        "act_fn", "attention_head_dim", "norm_num_groups", "attn_norm_num_groups", "norm_eps", "resnet_time_scale_shift",
        "add_attention", "class_embed_type", "num_class_embeds", "num_train_timesteps",
    ]

    /// All keys with their values, plus `_class_name` and `_diffusers_version`,
    /// as diffusers' `save_config` writes them.
    public var jsonObject: [String: JSONValue] {
        func optional(_ value: Int?) -> JSONValue { value.map { .int($0) } ?? .null }
        /// Python writes an `int` default as `1`, a float as `1.0`; integral values are written as integers.
        func number(_ value: Double) -> JSONValue {
            value.rounded() == value && Swift.abs(value) < 1e15 ? .int(Int(value)) : .double(value)
        }
        var object: [String: JSONValue] = [
            "_class_name": .string(UNet2DConfiguration.className),
            "_diffusers_version": .string(SchedulerConfiguration.diffusersVersion),
            "in_channels": .int(inChannels), "out_channels": .int(outChannels),
            "center_input_sample": .bool(centerInputSample),
            "time_embedding_type": .string(timeEmbeddingType.rawValue),
            "time_embedding_dim": optional(timeEmbeddingDimension),
            "freq_shift": number(frequencyShift), "flip_sin_to_cos": .bool(flipSinToCos),
            "down_block_types": .array(downBlockTypes.map { .string($0.rawValue) }),
            "mid_block_type": midBlockType.map { .string($0.rawValue) } ?? .null,
            "up_block_types": .array(upBlockTypes.map { .string($0.rawValue) }),
            "block_out_channels": .array(blockOutChannels.map { .int($0) }),
            "layers_per_block": .int(layersPerBlock),
            "mid_block_scale_factor": number(midBlockScaleFactor),
            "downsample_padding": .int(downsamplePadding),
            "downsample_type": .string(downsampleType.rawValue), "upsample_type": .string(upsampleType.rawValue),
            "dropout": .double(dropout), "act_fn": .string(activationFunction.rawValue),
            "attention_head_dim": optional(attentionHeadDimension),
            "norm_num_groups": .int(normGroupCount), "attn_norm_num_groups": optional(attentionNormGroupCount),
            "norm_eps": .double(normEpsilon),
            "resnet_time_scale_shift": .string(resnetTimeScaleShift.rawValue),
            "add_attention": .bool(addAttention),
            "class_embed_type": classEmbeddingType.map { .string($0.rawValue) } ?? .null,
            "num_class_embeds": optional(classEmbeddingCount),
            "num_train_timesteps": optional(trainTimesteps),
        ]
        switch sampleSize {
        case nil: object["sample_size"] = .null
        case .square(let size)?: object["sample_size"] = .int(size)
        case .rectangle(let height, let width)?: object["sample_size"] = .array([.int(height), .int(width)])
        }
        if let nameOrPath { object["_name_or_path"] = .string(nameOrPath) }
        return object
    }
}

/// The errors a `KeyReader` throws, each naming the key: a model family's own error type.
struct KeyReaderFailures: Sendable {
    let wrongType: @Sendable (_ key: String, _ expected: String, _ found: String) -> Error
    let unsupportedValue: @Sendable (_ key: String, _ value: String, _ supported: [String]) -> Error

    /// `UNet2DConfigurationError` (UNet2DModel and UNet2DConditionModel configurations).
    static let unet2D = KeyReaderFailures(
        wrongType: { UNet2DConfigurationError.wrongType(key: $0, expected: $1, found: $2) },
        unsupportedValue: { UNet2DConfigurationError.unsupportedValue(key: $0, value: $1, supported: $2) })
}

/// Typed access to the members of a configuration object, with errors naming the key.
struct KeyReader {
    let members: [String: JSONValue]
    let failures: KeyReaderFailures

    init(members: [String: JSONValue], failures: KeyReaderFailures = .unet2D) {
        self.members = members
        self.failures = failures
    }

    private func wrongType(_ key: String, _ expected: String, _ value: JSONValue) -> Error {
        failures.wrongType(key, expected, value == .null ? "null" : "\(value.typeName) \(value)")
    }

    func integer(_ key: String) throws -> Int? {
        guard let value = members[key] else { return nil }
        if case .int(let number) = value { return number }
        throw wrongType(key, "an integer", value)
    }

    /// Absent: nil; null: `.some(nil)`.
    func nullableInteger(_ key: String) throws -> Int?? {
        guard let value = members[key] else { return nil }
        if case .null = value { return .some(nil) }
        if case .int(let number) = value { return .some(number) }
        throw wrongType(key, "an integer or null", value)
    }

    func number(_ key: String) throws -> Double? {
        guard let value = members[key] else { return nil }
        if let number = value.numberValue { return number }
        throw wrongType(key, "a number", value)
    }

    /// Absent: nil; null: `.some(nil)`.
    func nullableNumber(_ key: String) throws -> Double?? {
        guard let value = members[key] else { return nil }
        if case .null = value { return .some(nil) }
        if let number = value.numberValue { return .some(number) }
        throw wrongType(key, "a number or null", value)
    }

    func flag(_ key: String) throws -> Bool? {
        guard let value = members[key] else { return nil }
        if case .bool(let flag) = value { return flag }
        throw wrongType(key, "true or false", value)
    }

    func string(_ key: String) throws -> String? {
        guard let value = members[key] else { return nil }
        if case .string(let text) = value { return text }
        throw wrongType(key, "a string", value)
    }

    func integers(_ key: String) throws -> [Int]? {
        guard let value = members[key] else { return nil }
        guard case .array(let items) = value else { throw wrongType(key, "a list of integers", value) }
        return try items.map { item in
            if case .int(let number) = item { return number }
            throw wrongType(key, "a list of integers", value)
        }
    }

    /// Absent: nil; null: `.some(nil)`.
    func nullableNumbers(_ key: String) throws -> [Double]?? {
        guard let value = members[key] else { return nil }
        if case .null = value { return .some(nil) }
        guard case .array(let items) = value else { throw wrongType(key, "a list of numbers or null", value) }
        return .some(try items.map { item in
            guard let number = item.numberValue else { throw wrongType(key, "a list of numbers or null", value) }
            return number
        })
    }

    private func parse<T: RawRepresentable & CaseIterable>(_ key: String, _ text: String) throws -> T where T.RawValue == String {
        guard let result = T(rawValue: text) else { throw failures.unsupportedValue(key, text, T.allCases.map(\.rawValue)) }
        return result
    }

    func choice<T: RawRepresentable & CaseIterable>(_ key: String) throws -> T? where T.RawValue == String {
        guard let text = try string(key) else { return nil }
        return try parse(key, text)
    }

    func nullableChoice<T: RawRepresentable & CaseIterable>(_ key: String) throws -> T?? where T.RawValue == String {
        guard let value = members[key] else { return nil }
        if case .null = value { return .some(nil) }
        guard case .string(let text) = value else { throw wrongType(key, "a string or null", value) }
        return .some(try parse(key, text))
    }

    func choices<T: RawRepresentable & CaseIterable>(_ key: String) throws -> [T]? where T.RawValue == String {
        guard let value = members[key] else { return nil }
        guard case .array(let items) = value else { throw wrongType(key, "a list of strings", value) }
        return try items.map { item in
            guard case .string(let text) = item else { throw wrongType(key, "a list of strings", value) }
            return try parse(key, text)
        }
    }
}

/// `JSONValue` through `Codable`, for `UNet2DConfiguration`'s `Codable` conformance.
struct CodableJSONValue: Codable {
    let value: JSONValue

    init(_ value: JSONValue) { self.value = value }

    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { value = .null; return }
        if let flag = try? container.decode(Bool.self) { value = .bool(flag); return }
        if let number = try? container.decode(Int.self) { value = .int(number); return }
        if let number = try? container.decode(Double.self) { value = .double(number); return }
        if let text = try? container.decode(String.self) { value = .string(text); return }
        if let items = try? container.decode([CodableJSONValue].self) { value = .array(items.map(\.value)); return }
        if let members = try? container.decode([String: CodableJSONValue].self) { value = .object(members.mapValues(\.value)); return }
        throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a JSON value")
    }

    func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch value {
        case .null: try container.encodeNil()
        case .bool(let flag): try container.encode(flag)
        case .int(let number): try container.encode(number)
        case .double(let number): try container.encode(number)
        case .string(let text): try container.encode(text)
        case .array(let items): try container.encode(items.map(CodableJSONValue.init))
        case .object(let members): try container.encode(members.mapValues(CodableJSONValue.init))
        }
    }
}
