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

/// Typed access to a diffusers configuration object, with errors naming the key.
struct AutoencoderKeyReader {
    let model: String
    let members: [String: JSONValue]

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

    /// Throws for a key outside `keys` and the private keys, and for another `_class_name`.
    func checkKeys(_ keys: Set<String>) throws {
        for key in members.keys.sorted() where !keys.contains(key) && !Self.privateKeys.contains(key) {
            throw AutoencoderConfigurationError.unsupportedKey(model: model, key: key)
        }
        if let name = try string("_class_name"), name != model {
            throw AutoencoderConfigurationError.wrongClassName(model: model, found: name)
        }
    }

    private func wrongType(_ key: String, _ expected: String, _ value: JSONValue) -> AutoencoderConfigurationError {
        .wrongType(model: model, key: key, expected: expected, found: value == .null ? "null" : "\(value.typeName) \(value)")
    }

    func integer(_ key: String) throws -> Int? {
        guard let value = members[key] else { return nil }
        if case .int(let number) = value { return number }
        throw wrongType(key, "an integer", value)
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
        guard let result = T(rawValue: text) else {
            throw AutoencoderConfigurationError.unsupportedValue(model: model, key: key, value: text, supported: T.allCases.map(\.rawValue))
        }
        return result
    }

    func choice<T: RawRepresentable & CaseIterable>(_ key: String) throws -> T? where T.RawValue == String {
        guard let text = try string(key) else { return nil }
        return try parse(key, text)
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
