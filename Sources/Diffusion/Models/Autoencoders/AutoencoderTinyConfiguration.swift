import Foundation
import NN

/// The configuration of an `AutoencoderTiny` (TAESD): every argument of
/// diffusers' `AutoencoderTiny.__init__`, read from and written to
/// `config.json` under diffusers' keys. The defaults are TAESD's (Stable
/// Diffusion 1.x / 2.x latents); reading is strict, as for `AutoencoderKLConfiguration`.
public struct AutoencoderTinyConfiguration: Equatable, Sendable {
    /// `upsample_fn`: the decoder's upsampling (`nn.Upsample` mode).
    public enum UpsamplingMode: String, Sendable, CaseIterable {
        case nearest
    }

    /// `in_channels`.
    public var inChannels = 3
    /// `out_channels`.
    public var outChannels = 3
    /// `encoder_block_out_channels` (diffusers' encoder needs them all equal).
    public var encoderBlockOutChannels = [64, 64, 64, 64]
    /// `decoder_block_out_channels` (all equal, likewise); diffusers also writes them as `block_out_channels`.
    public var decoderBlockOutChannels = [64, 64, 64, 64]
    /// `act_fn`.
    public var activationFunction = UNet2DConfiguration.ActivationFunction.relu
    /// `upsample_fn`.
    public var upsamplingMode = UpsamplingMode.nearest
    /// `latent_channels`.
    public var latentChannels = 4
    /// `upsampling_scaling_factor`.
    public var upsamplingScalingFactor = 2
    /// `num_encoder_blocks`: `AutoencoderTinyBlock`s after each encoder convolution.
    public var encoderBlockCounts = [1, 3, 3, 3]
    /// `num_decoder_blocks`.
    public var decoderBlockCounts = [3, 3, 3, 1]
    /// `latent_magnitude`: latents in [−magnitude, magnitude] map to [0, 1] when stored as bytes.
    public var latentMagnitude: Double = 3
    /// `latent_shift`.
    public var latentShift: Double = 0.5
    /// `force_upcast` (diffusers always writes false).
    public var forceUpcast = false
    /// `scaling_factor`.
    public var scalingFactor: Double = 1
    /// `shift_factor`.
    public var shiftFactor: Double = 0
    /// `_name_or_path`, kept when read so it is written back.
    public var nameOrPath: String? = nil

    /// TAESD's configuration (diffusers' defaults).
    public init() {}

    /// diffusers' class name.
    public static let className = "AutoencoderTiny"

    /// Checks that the configuration builds a model, naming the key at fault.
    public func validate() throws {
        func require(_ condition: Bool, _ key: String, _ reason: @autoclosure () -> String) throws {
            if !condition { throw AutoencoderConfigurationError.invalid(model: Self.className, key: key, reason: reason()) }
        }
        for (key, channels) in [("encoder_block_out_channels", encoderBlockOutChannels), ("decoder_block_out_channels", decoderBlockOutChannels)] {
            try require(!channels.isEmpty && channels.allSatisfy { $0 > 0 }, key, "must be a non-empty list of positive sizes, got \(channels)")
            // diffusers builds block i's convolution and tiny blocks from block i's width alone,
            // so a model with different widths fails in its first forward pass.
            try require(Set(channels).count == 1, key, "must all be equal (diffusers' EncoderTiny/DecoderTiny do not change width), got \(channels)")
        }
        try require(encoderBlockCounts.count == encoderBlockOutChannels.count, "num_encoder_blocks",
                    "has \(encoderBlockCounts.count) entries but encoder_block_out_channels has \(encoderBlockOutChannels.count)")
        try require(decoderBlockCounts.count == decoderBlockOutChannels.count, "num_decoder_blocks",
                    "has \(decoderBlockCounts.count) entries but decoder_block_out_channels has \(decoderBlockOutChannels.count)")
        try require(encoderBlockCounts.allSatisfy { $0 >= 0 }, "num_encoder_blocks", "must not be negative")
        try require(decoderBlockCounts.allSatisfy { $0 >= 0 }, "num_decoder_blocks", "must not be negative")
        try require(inChannels > 0, "in_channels", "must be positive, got \(inChannels)")
        try require(outChannels > 0, "out_channels", "must be positive, got \(outChannels)")
        try require(latentChannels > 0, "latent_channels", "must be positive, got \(latentChannels)")
        try require(upsamplingScalingFactor > 0, "upsampling_scaling_factor", "must be positive, got \(upsamplingScalingFactor)")
        try require(latentMagnitude > 0, "latent_magnitude", "must be positive, got \(latentMagnitude)")
    }
}

extension AutoencoderTinyConfiguration: Codable {
    public init(from decoder: Decoder) throws {
        let value = try decoder.singleValueContainer().decode(CodableJSONValue.self).value
        guard case .object(let members) = value else {
            throw AutoencoderConfigurationError.invalidJSON(model: Self.className, reason: "found a \(value.typeName)")
        }
        try self.init(jsonObject: members)
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(CodableJSONValue(.object(jsonObject)))
    }

    /// Reads the text of a `config.json`.
    public init(jsonText: String) throws {
        try self.init(jsonObject: try AutoencoderKeyReader.object(model: Self.className, jsonText: jsonText))
    }

    /// Reads `config.json` (or the `config.json` in a directory).
    public static func load(contentsOf url: URL) throws -> AutoencoderTinyConfiguration {
        try AutoencoderTinyConfiguration(jsonText: String(contentsOf: autoencoderConfigurationFile(url), encoding: .utf8))
    }

    /// Every diffusers key `AutoencoderTiny` writes, which Diffuse reads and writes.
    public static let keys: Set<String> = [
        "in_channels", "out_channels", "encoder_block_out_channels", "decoder_block_out_channels", "block_out_channels",
        "act_fn", "upsample_fn", "latent_channels", "upsampling_scaling_factor", "num_encoder_blocks", "num_decoder_blocks",
        "latent_magnitude", "latent_shift", "force_upcast", "scaling_factor", "shift_factor",
    ]

    /// Builds the configuration from diffusers' keys; absent keys take diffusers' defaults.
    public init(jsonObject members: [String: JSONValue]) throws {
        self.init()
        let reader = AutoencoderKeyReader.reader(model: Self.className, members: members)
        try AutoencoderKeyReader.checkKeys(Self.keys, in: reader, model: Self.className)
        nameOrPath = try reader.string("_name_or_path")
        if let value = try reader.integer("in_channels") { inChannels = value }
        if let value = try reader.integer("out_channels") { outChannels = value }
        if let value = try reader.integers("encoder_block_out_channels") { encoderBlockOutChannels = value }
        if let value = try reader.integers("decoder_block_out_channels") { decoderBlockOutChannels = value }
        if let value = try reader.integers("block_out_channels"), value != decoderBlockOutChannels {
            throw AutoencoderConfigurationError.invalid(model: Self.className, key: "block_out_channels",
                                                        reason: "\(value) differs from decoder_block_out_channels \(decoderBlockOutChannels) (diffusers writes the decoder's)")
        }
        if let value: UNet2DConfiguration.ActivationFunction = try reader.choice("act_fn") { activationFunction = value }
        if let value: UpsamplingMode = try reader.choice("upsample_fn") { upsamplingMode = value }
        if let value = try reader.integer("latent_channels") { latentChannels = value }
        if let value = try reader.integer("upsampling_scaling_factor") { upsamplingScalingFactor = value }
        if let value = try reader.integers("num_encoder_blocks") { encoderBlockCounts = value }
        if let value = try reader.integers("num_decoder_blocks") { decoderBlockCounts = value }
        if let value = try reader.number("latent_magnitude") { latentMagnitude = value }
        if let value = try reader.number("latent_shift") { latentShift = value }
        if let value = try reader.flag("force_upcast") { forceUpcast = value }
        if let value = try reader.number("scaling_factor") { scalingFactor = value }
        if let value = try reader.number("shift_factor") { shiftFactor = value }
    }

    /// All keys as diffusers' `save_config` writes them (with `block_out_channels`
    /// repeating the decoder's, as diffusers registers it).
    public var jsonObject: [String: JSONValue] {
        func integers(_ values: [Int]) -> JSONValue { .array(values.map { .int($0) }) }
        var object: [String: JSONValue] = [
            "_class_name": .string(Self.className),
            "_diffusers_version": .string(SchedulerConfiguration.diffusersVersion),
            "in_channels": .int(inChannels), "out_channels": .int(outChannels),
            "encoder_block_out_channels": integers(encoderBlockOutChannels),
            "decoder_block_out_channels": integers(decoderBlockOutChannels),
            "block_out_channels": integers(decoderBlockOutChannels),
            "act_fn": .string(activationFunction.rawValue),
            "upsample_fn": .string(upsamplingMode.rawValue),
            "latent_channels": .int(latentChannels),
            "upsampling_scaling_factor": .int(upsamplingScalingFactor),
            "num_encoder_blocks": integers(encoderBlockCounts),
            "num_decoder_blocks": integers(decoderBlockCounts),
            "latent_magnitude": latentMagnitude.rounded() == latentMagnitude ? .int(Int(latentMagnitude)) : .double(latentMagnitude),
            "latent_shift": .double(latentShift),
            "force_upcast": .bool(forceUpcast),
            "scaling_factor": .double(scalingFactor),
            "shift_factor": .double(shiftFactor),
        ]
        if let nameOrPath { object["_name_or_path"] = .string(nameOrPath) }
        return object
    }

    /// The `config.json` text diffusers writes.
    public var jsonText: String { JSONText.write(.object(jsonObject), indent: 2) + "\n" }

    /// Writes `config.json` at `url` (a file, or a directory to put it in).
    public func save(to url: URL) throws {
        try jsonText.write(to: autoencoderConfigurationFile(url), atomically: true, encoding: .utf8)
    }
}
