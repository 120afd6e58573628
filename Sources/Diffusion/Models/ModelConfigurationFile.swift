import Foundation
import NN

/// A diffusers model configuration kept in a `config.json` under diffusers' keys
/// (`UNet2DConfiguration`, `UNet2DConditionConfiguration`): reading the text or
/// the file, and writing it as diffusers' `save_config` does.
public protocol ModelConfigurationFile {
    /// Builds the configuration from diffusers' keys; absent keys take diffusers' defaults.
    init(jsonObject: [String: JSONValue]) throws
    /// All keys with their values, plus `_class_name` and `_diffusers_version`.
    var jsonObject: [String: JSONValue] { get }
    /// The error for text that is not a JSON object.
    static func invalidJSON(_ reason: String) -> Error
}

extension ModelConfigurationFile {
    /// Reads the text of a `config.json`.
    public init(jsonText: String) throws {
        let root: JSONValue
        do {
            root = try JSONText.parse(jsonText)
        } catch let error as JSONSyntaxError {
            throw Self.invalidJSON(error.description)
        }
        try self.init(jsonValue: root)
    }

    /// Reads a JSON object (anything else is `invalidJSON`).
    init(jsonValue: JSONValue) throws {
        guard case .object(let members) = jsonValue else { throw Self.invalidJSON("found a \(jsonValue.typeName)") }
        try self.init(jsonObject: members)
    }

    /// Reads `config.json` (or the `config.json` in a directory).
    public static func load(contentsOf url: URL) throws -> Self {
        try Self(jsonText: String(contentsOf: configurationFile(url), encoding: .utf8))
    }

    /// The `config.json` text diffusers writes: `json.dumps(config, indent=2, sort_keys=True)` and a newline.
    public var jsonText: String { JSONText.write(.object(jsonObject), indent: 2) + "\n" }

    /// Writes `config.json` at `url` (a file, or a directory to put it in).
    public func save(to url: URL) throws {
        try jsonText.write(to: Self.configurationFile(url), atomically: true, encoding: .utf8)
    }

    /// `url`, or `url/config.json` when `url` is a directory.
    private static func configurationFile(_ url: URL) -> URL {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue {
            return url.appendingPathComponent(ModelFolder.configurationName)
        }
        return url
    }
}
