import Foundation
import NN

/// The activation of a CLIP encoder's MLP (transformers' `hidden_act`).
public enum CLIPActivation: String, CaseIterable, Sendable {
    /// `x · sigmoid(1.702 x)`: openai's CLIP (Stable Diffusion 1.x).
    case quickGELU = "quick_gelu"
    /// The exact GELU (OpenCLIP, Stable Diffusion 2.x).
    case gelu
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    case geluTanh = "gelu_pytorch_tanh"
    case geluNew = "gelu_new"
}

/// Errors reading a CLIP `config.json`.
public enum CLIPConfigurationError: Error, CustomStringConvertible, Equatable {
    case invalidJSON(String)
    case wrongType(key: String, expected: String, found: String)
    case unsupportedValue(key: String, value: String, supported: [String])
    case inconsistent(String)

    public var description: String {
        switch self {
        case .invalidJSON(let reason): return "CLIP config.json is not a JSON object: \(reason)"
        case .wrongType(let key, let expected, let found): return "CLIP config key \"\(key)\" must be \(expected), found \(found)"
        case .unsupportedValue(let key, let value, let supported):
            return "CLIP config key \"\(key)\" = \"\(value)\" is not supported (supported: \(supported.joined(separator: ", ")))"
        case .inconsistent(let reason): return "CLIP config: \(reason)"
        }
    }
}

/// Reads typed values out of a transformers config object.
struct CLIPKeyReader {
    let members: [String: JSONValue]

    private func wrong(_ key: String, _ expected: String, _ value: JSONValue) -> CLIPConfigurationError {
        .wrongType(key: key, expected: expected, found: "\(value.typeName) \(value)")
    }

    func integer(_ key: String) throws -> Int? {
        guard let value = members[key], value != .null else { return nil }
        if case .int(let number) = value { return number }
        throw wrong(key, "an integer", value)
    }

    func number(_ key: String) throws -> Double? {
        guard let value = members[key], value != .null else { return nil }
        if let number = value.numberValue { return number }
        throw wrong(key, "a number", value)
    }

    func string(_ key: String) throws -> String? {
        guard let value = members[key], value != .null else { return nil }
        if case .string(let text) = value { return text }
        throw wrong(key, "a string", value)
    }

    func activation(_ key: String) throws -> CLIPActivation? {
        guard let text = try string(key) else { return nil }
        guard let activation = CLIPActivation(rawValue: text) else {
            throw CLIPConfigurationError.unsupportedValue(key: key, value: text, supported: CLIPActivation.allCases.map(\.rawValue))
        }
        return activation
    }

    func object(_ key: String) throws -> [String: JSONValue]? {
        guard let value = members[key], value != .null else { return nil }
        if case .object(let object) = value { return object }
        throw wrong(key, "an object", value)
    }
}

/// The sizes of one CLIP transformer tower (the keys both towers share).
public protocol CLIPEncoderConfiguration {
    var hiddenSize: Int { get }
    var intermediateSize: Int { get }
    var hiddenLayerCount: Int { get }
    var attentionHeadCount: Int { get }
    var activation: CLIPActivation { get }
    var layerNormEpsilon: Float { get }
}

/// transformers' `CLIPTextConfig` (`model_type: clip_text_model`), with its
/// keys and defaults. The defaults are openai's ViT-B/32 text tower.
public struct CLIPTextConfiguration: CLIPEncoderConfiguration, Equatable, Sendable {
    public var vocabularySize = 49408
    public var hiddenSize = 512
    public var intermediateSize = 2048
    public var projectionDimension = 512
    public var hiddenLayerCount = 12
    public var attentionHeadCount = 8
    public var maximumPositionEmbeddings = 77
    public var activation = CLIPActivation.quickGELU
    public var layerNormEpsilon: Float = 1e-5
    public var attentionDropout: Double = 0
    public var initializerRange: Double = 0.02
    public var initializerFactor: Double = 1
    public var padTokenID = 1
    public var beginTokenID = 49406
    /// transformers pools at the first `eos_token_id`; a config with 2 (older
    /// checkpoints, Stable Diffusion 1.x's) pools at the largest id instead.
    public var endTokenID = 49407

    public init() {}

    /// Stable Diffusion 1.x's text encoder (openai clip-vit-large-patch14).
    public static var stableDiffusion1: CLIPTextConfiguration {
        var configuration = CLIPTextConfiguration()
        (configuration.hiddenSize, configuration.intermediateSize, configuration.projectionDimension) = (768, 3072, 768)
        (configuration.hiddenLayerCount, configuration.attentionHeadCount) = (12, 12)
        (configuration.padTokenID, configuration.beginTokenID, configuration.endTokenID) = (1, 0, 2)
        return configuration
    }

    /// Stable Diffusion 2.x's text encoder (OpenCLIP ViT-H/14, 23 of its 24 layers).
    public static var stableDiffusion2: CLIPTextConfiguration {
        var configuration = CLIPTextConfiguration()
        (configuration.hiddenSize, configuration.intermediateSize, configuration.projectionDimension) = (1024, 4096, 512)
        (configuration.hiddenLayerCount, configuration.attentionHeadCount) = (23, 16)
        configuration.activation = .gelu
        (configuration.padTokenID, configuration.beginTokenID, configuration.endTokenID) = (1, 0, 2)
        return configuration
    }

    /// Builds the configuration from transformers' keys; absent keys keep the defaults,
    /// keys Diffuse does not use are ignored (transformers keeps many generic ones).
    public init(jsonObject members: [String: JSONValue]) throws {
        let reader = CLIPKeyReader(members: members)
        if let value = try reader.integer("vocab_size") { vocabularySize = value }
        if let value = try reader.integer("hidden_size") { hiddenSize = value }
        if let value = try reader.integer("intermediate_size") { intermediateSize = value }
        if let value = try reader.integer("projection_dim") { projectionDimension = value }
        if let value = try reader.integer("num_hidden_layers") { hiddenLayerCount = value }
        if let value = try reader.integer("num_attention_heads") { attentionHeadCount = value }
        if let value = try reader.integer("max_position_embeddings") { maximumPositionEmbeddings = value }
        if let value = try reader.activation("hidden_act") { activation = value }
        if let value = try reader.number("layer_norm_eps") { layerNormEpsilon = Float(value) }
        if let value = try reader.number("attention_dropout") { attentionDropout = value }
        if let value = try reader.number("initializer_range") { initializerRange = value }
        if let value = try reader.number("initializer_factor") { initializerFactor = value }
        if let value = try reader.integer("pad_token_id") { padTokenID = value }
        if let value = try reader.integer("bos_token_id") { beginTokenID = value }
        if let value = try reader.integer("eos_token_id") { endTokenID = value }
        try validate()
    }

    func validate() throws {
        guard hiddenSize > 0, attentionHeadCount > 0, hiddenSize % attentionHeadCount == 0 else {
            throw CLIPConfigurationError.inconsistent("hidden_size \(hiddenSize) is not a multiple of num_attention_heads \(attentionHeadCount)")
        }
        guard vocabularySize > 0, maximumPositionEmbeddings > 0, hiddenLayerCount >= 0, intermediateSize > 0 else {
            throw CLIPConfigurationError.inconsistent("vocab_size, max_position_embeddings and intermediate_size must be positive")
        }
    }

    /// The keys transformers writes for this configuration.
    public var jsonObject: [String: JSONValue] {
        [
            "model_type": .string("clip_text_model"),
            "vocab_size": .int(vocabularySize), "hidden_size": .int(hiddenSize),
            "intermediate_size": .int(intermediateSize), "projection_dim": .int(projectionDimension),
            "num_hidden_layers": .int(hiddenLayerCount), "num_attention_heads": .int(attentionHeadCount),
            "max_position_embeddings": .int(maximumPositionEmbeddings), "hidden_act": .string(activation.rawValue),
            "layer_norm_eps": .double(Double("\(layerNormEpsilon)") ?? Double(layerNormEpsilon)), "attention_dropout": .double(attentionDropout),
            "initializer_range": .double(initializerRange), "initializer_factor": .double(initializerFactor),
            "pad_token_id": .int(padTokenID), "bos_token_id": .int(beginTokenID), "eos_token_id": .int(endTokenID),
        ]
    }
}

/// transformers' `CLIPVisionConfig` (`model_type: clip_vision_model`). The
/// defaults are openai's ViT-B/32 image tower.
public struct CLIPVisionConfiguration: CLIPEncoderConfiguration, Equatable, Sendable {
    public var hiddenSize = 768
    public var intermediateSize = 3072
    public var projectionDimension = 512
    public var hiddenLayerCount = 12
    public var attentionHeadCount = 12
    public var channelCount = 3
    public var imageSize = 224
    public var patchSize = 32
    public var activation = CLIPActivation.quickGELU
    public var layerNormEpsilon: Float = 1e-5
    public var attentionDropout: Double = 0
    public var initializerRange: Double = 0.02
    public var initializerFactor: Double = 1

    public init() {}

    /// Patches per side.
    public var gridSize: Int { imageSize / patchSize }
    /// Patches plus the class token.
    public var positionCount: Int { gridSize * gridSize + 1 }

    public init(jsonObject members: [String: JSONValue]) throws {
        let reader = CLIPKeyReader(members: members)
        if let value = try reader.integer("hidden_size") { hiddenSize = value }
        if let value = try reader.integer("intermediate_size") { intermediateSize = value }
        if let value = try reader.integer("projection_dim") { projectionDimension = value }
        if let value = try reader.integer("num_hidden_layers") { hiddenLayerCount = value }
        if let value = try reader.integer("num_attention_heads") { attentionHeadCount = value }
        if let value = try reader.integer("num_channels") { channelCount = value }
        if let value = try reader.integer("image_size") { imageSize = value }
        if let value = try reader.integer("patch_size") { patchSize = value }
        if let value = try reader.activation("hidden_act") { activation = value }
        if let value = try reader.number("layer_norm_eps") { layerNormEpsilon = Float(value) }
        if let value = try reader.number("attention_dropout") { attentionDropout = value }
        if let value = try reader.number("initializer_range") { initializerRange = value }
        if let value = try reader.number("initializer_factor") { initializerFactor = value }
        try validate()
    }

    func validate() throws {
        guard hiddenSize > 0, attentionHeadCount > 0, hiddenSize % attentionHeadCount == 0 else {
            throw CLIPConfigurationError.inconsistent("vision hidden_size \(hiddenSize) is not a multiple of num_attention_heads \(attentionHeadCount)")
        }
        guard patchSize > 0, imageSize >= patchSize, imageSize % patchSize == 0 else {
            throw CLIPConfigurationError.inconsistent("image_size \(imageSize) is not a positive multiple of patch_size \(patchSize)")
        }
    }

    public var jsonObject: [String: JSONValue] {
        [
            "model_type": .string("clip_vision_model"),
            "hidden_size": .int(hiddenSize), "intermediate_size": .int(intermediateSize),
            "projection_dim": .int(projectionDimension), "num_hidden_layers": .int(hiddenLayerCount),
            "num_attention_heads": .int(attentionHeadCount), "num_channels": .int(channelCount),
            "image_size": .int(imageSize), "patch_size": .int(patchSize), "hidden_act": .string(activation.rawValue),
            "layer_norm_eps": .double(Double("\(layerNormEpsilon)") ?? Double(layerNormEpsilon)), "attention_dropout": .double(attentionDropout),
            "initializer_range": .double(initializerRange), "initializer_factor": .double(initializerFactor),
        ]
    }
}

/// transformers' `CLIPConfig` (`model_type: clip`): both towers and the shared projection.
public struct CLIPConfiguration: Equatable, Sendable {
    public var text = CLIPTextConfiguration()
    public var vision = CLIPVisionConfiguration()
    public var projectionDimension = 512
    /// ln(1 / 0.07), the initial learnable temperature.
    public var logitScaleInitialValue = 2.6592

    public init(text: CLIPTextConfiguration = .init(), vision: CLIPVisionConfiguration = .init(), projectionDimension: Int = 512) {
        self.text = text
        self.vision = vision
        self.projectionDimension = projectionDimension
    }

    public init(jsonObject members: [String: JSONValue]) throws {
        let reader = CLIPKeyReader(members: members)
        if let object = try reader.object("text_config") { text = try CLIPTextConfiguration(jsonObject: object) }
        if let object = try reader.object("vision_config") { vision = try CLIPVisionConfiguration(jsonObject: object) }
        if let value = try reader.integer("projection_dim") { projectionDimension = value }
        if let value = try reader.number("logit_scale_init_value") { logitScaleInitialValue = value }
    }

    public var jsonObject: [String: JSONValue] {
        [
            "model_type": .string("clip"), "text_config": .object(text.jsonObject), "vision_config": .object(vision.jsonObject),
            "projection_dim": .int(projectionDimension), "logit_scale_init_value": .double(logitScaleInitialValue),
            "initializer_factor": .double(1),
        ]
    }
}
