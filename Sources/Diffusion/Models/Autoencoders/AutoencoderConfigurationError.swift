import Foundation
import NN

/// Errors reading or using an `AutoencoderKL` or `AutoencoderTiny` configuration;
/// each names the `config.json` key at fault.
public enum AutoencoderConfigurationError: Error, CustomStringConvertible, Equatable {
    /// A key Diffuse does not read.
    case unsupportedKey(model: String, key: String)
    /// A value of the wrong JSON type.
    case wrongType(model: String, key: String, expected: String, found: String)
    /// A string choice Diffuse does not implement.
    case unsupportedValue(model: String, key: String, value: String, supported: [String])
    /// A value that cannot build a model.
    case invalid(model: String, key: String, reason: String)
    /// `_class_name` names another model.
    case wrongClassName(model: String, found: String)
    /// The text is not a JSON object.
    case invalidJSON(model: String, reason: String)

    public var description: String {
        switch self {
        case .unsupportedKey(let model, let key):
            return "\(model) configuration key \"\(key)\" is not supported by Diffuse"
        case .wrongType(let model, let key, let expected, let found):
            return "\(model) configuration key \"\(key)\" must be \(expected), found \(found)"
        case .unsupportedValue(let model, let key, let value, let supported):
            return "\(model) configuration key \"\(key)\" has value \"\(value)\", which Diffuse does not support; supported: "
                + supported.map { "\"\($0)\"" }.joined(separator: ", ")
        case .invalid(let model, let key, let reason):
            return "\(model) configuration key \"\(key)\": \(reason)"
        case .wrongClassName(let model, let found):
            return "the configuration is for \"\(found)\", not \(model) (_class_name)"
        case .invalidJSON(let model, let reason):
            return "the \(model) configuration is not a JSON object: \(reason)"
        }
    }
}

/// How the autoencoders read their `config.json`: the shared `KeyReader`, with errors that name
/// the model, plus the check of the keys it does not read.
enum AutoencoderKeyReader {
    /// diffusers' private keys, accepted and not used.
    static let privateKeys: Set<String> = ["_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"]

    /// Parses `jsonText` into an object.
    static func object(model: String, jsonText: String) throws -> [String: JSONValue] {
        let root: JSONValue
        do {
            root = try JSONText.parse(jsonText)
        } catch let error as JSONSyntaxError {
            throw AutoencoderConfigurationError.invalidJSON(model: model, reason: error.description)
        }
        guard case .object(let members) = root else {
            throw AutoencoderConfigurationError.invalidJSON(model: model, reason: "found a \(root.typeName)")
        }
        return members
    }

    /// A reader of `members` whose errors are `AutoencoderConfigurationError`s naming `model`.
    static func reader(model: String, members: [String: JSONValue]) -> KeyReader {
        KeyReader(members: members, failures: KeyReaderFailures(
            wrongType: { .wrongType(model: model, key: $0, expected: $1, found: $2) as AutoencoderConfigurationError },
            unsupportedValue: { .unsupportedValue(model: model, key: $0, value: $1, supported: $2) as AutoencoderConfigurationError }))
    }

    /// Throws for a key outside `keys` and the private keys, and for another `_class_name`.
    static func checkKeys(_ keys: Set<String>, in reader: KeyReader, model: String) throws {
        for key in reader.members.keys.sorted() where !keys.contains(key) && !privateKeys.contains(key) {
            throw AutoencoderConfigurationError.unsupportedKey(model: model, key: key)
        }
        if let name = try reader.string("_class_name"), name != model {
            throw AutoencoderConfigurationError.wrongClassName(model: model, found: name)
        }
    }
}
