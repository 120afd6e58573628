import Foundation
import NN

// Reading and writing an AutoencoderKL `config.json`: diffusers' keys at the
// edge, Swift enums inside.

extension AutoencoderKLConfiguration: Codable {
    /// Decodes a JSON object with diffusers' keys, as `init(jsonObject:)`.
    public init(from decoder: Decoder) throws {
        let value = try decoder.singleValueContainer().decode(CodableJSONValue.self).value
        guard case .object(let members) = value else {
            throw AutoencoderConfigurationError.invalidJSON(model: Self.className, reason: "found a \(value.typeName)")
        }
        try self.init(jsonObject: members)
    }

    /// Encodes every key of `jsonObject`.
    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(CodableJSONValue(.object(jsonObject)))
    }

    /// Reads the text of a `config.json`.
    public init(jsonText: String) throws {
        try self.init(jsonObject: try AutoencoderKeyReader.object(model: Self.className, jsonText: jsonText))
    }

    /// Reads `config.json` (or the `config.json` in a directory).
    public static func load(contentsOf url: URL) throws -> AutoencoderKLConfiguration {
        try AutoencoderKLConfiguration(jsonText: String(contentsOf: autoencoderConfigurationFile(url), encoding: .utf8))
    }

    /// Every diffusers key `AutoencoderKL.__init__` takes, which Diffuse reads and writes.
    public static let keys: Set<String> = [
        "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels", "layers_per_block",
        "act_fn", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor", "shift_factor", "latents_mean",
        "latents_std", "force_upcast", "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention",
    ]

    /// Builds the configuration from diffusers' keys; absent keys take diffusers' defaults.
    public init(jsonObject members: [String: JSONValue]) throws {
        self.init()
        let reader = AutoencoderKeyReader.reader(model: Self.className, members: members)
        try AutoencoderKeyReader.checkKeys(Self.keys, in: reader, model: Self.className)
        nameOrPath = try reader.string("_name_or_path")
        if let value = try reader.integer("in_channels") { inChannels = value }
        if let value = try reader.integer("out_channels") { outChannels = value }
        if let value: [DownBlockType] = try reader.choices("down_block_types") { downBlockTypes = value }
        if let value: [UpBlockType] = try reader.choices("up_block_types") { upBlockTypes = value }
        if let value = try reader.integers("block_out_channels") { blockOutChannels = value }
        if let value = try reader.integer("layers_per_block") { layersPerBlock = value }
        if let value: UNet2DConfiguration.ActivationFunction = try reader.choice("act_fn") { activationFunction = value }
        if let value = try reader.integer("latent_channels") { latentChannels = value }
        if let value = try reader.integer("norm_num_groups") { normGroupCount = value }
        if let value = members["sample_size"] {
            if case .int(let size) = value {
                sampleSize = .square(size)
            } else if case .array(let items) = value, items.count == 2, case .int(let height) = items[0], case .int(let width) = items[1] {
                sampleSize = .rectangle(height: height, width: width)
            } else {
                throw AutoencoderConfigurationError.wrongType(model: Self.className, key: "sample_size",
                                                              expected: "an integer or [height, width]", found: value.description)
            }
        }
        if let value = try reader.number("scaling_factor") { scalingFactor = value }
        if let value = try reader.nullableNumber("shift_factor") { shiftFactor = value }
        if let value = try reader.nullableNumbers("latents_mean") { latentsMean = value }
        if let value = try reader.nullableNumbers("latents_std") { latentsStandardDeviation = value }
        if let value = try reader.flag("force_upcast") { forceUpcast = value }
        if let value = try reader.flag("use_quant_conv") { useQuantConvolution = value }
        if let value = try reader.flag("use_post_quant_conv") { usePostQuantConvolution = value }
        if let value = try reader.flag("mid_block_add_attention") { midBlockAddAttention = value }
    }

    /// All keys with their values, plus `_class_name` and `_diffusers_version`,
    /// as diffusers' `save_config` writes them.
    public var jsonObject: [String: JSONValue] {
        func numbers(_ values: [Double]?) -> JSONValue { values.map { .array($0.map { .double($0) }) } ?? .null }
        var object: [String: JSONValue] = [
            "_class_name": .string(Self.className),
            "_diffusers_version": .string(SchedulerConfiguration.diffusersVersion),
            "in_channels": .int(inChannels), "out_channels": .int(outChannels),
            "down_block_types": .array(downBlockTypes.map { .string($0.rawValue) }),
            "up_block_types": .array(upBlockTypes.map { .string($0.rawValue) }),
            "block_out_channels": .array(blockOutChannels.map { .int($0) }),
            "layers_per_block": .int(layersPerBlock),
            "act_fn": .string(activationFunction.rawValue),
            "latent_channels": .int(latentChannels),
            "norm_num_groups": .int(normGroupCount),
            "scaling_factor": .double(scalingFactor),
            "shift_factor": shiftFactor.map { .double($0) } ?? .null,
            "latents_mean": numbers(latentsMean),
            "latents_std": numbers(latentsStandardDeviation),
            "force_upcast": .bool(forceUpcast),
            "use_quant_conv": .bool(useQuantConvolution),
            "use_post_quant_conv": .bool(usePostQuantConvolution),
            "mid_block_add_attention": .bool(midBlockAddAttention),
        ]
        switch sampleSize {
        case .square(let size): object["sample_size"] = .int(size)
        case .rectangle(let height, let width): object["sample_size"] = .array([.int(height), .int(width)])
        }
        if let nameOrPath { object["_name_or_path"] = .string(nameOrPath) }
        return object
    }

    /// The `config.json` text diffusers writes: `json.dumps(config, indent=2, sort_keys=True)` and a newline.
    public var jsonText: String { JSONText.write(.object(jsonObject), indent: 2) + "\n" }

    /// Writes `config.json` at `url` (a file, or a directory to put it in).
    public func save(to url: URL) throws {
        try jsonText.write(to: autoencoderConfigurationFile(url), atomically: true, encoding: .utf8)
    }
}

/// `url`, or its `config.json` when it is a directory.
func autoencoderConfigurationFile(_ url: URL) -> URL {
    var isDirectory: ObjCBool = false
    if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue {
        return url.appendingPathComponent(ModelFolder.configurationName)
    }
    return url
}
