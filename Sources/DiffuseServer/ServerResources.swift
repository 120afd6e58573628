import Diffusion
import Foundation

/// Files the server was started with that requests may name (`diffuse serve --lora`, `--clip-model`, `--classifier`):
/// a request names one by its name, never by a path, so no request reaches a file the server was not given.
public struct ServerResources: Sendable {
    /// LoRA `.safetensors` files by name (the file name without its extension).
    public var loras: [String: String] = [:]
    /// transformers `CLIPModel` folders by name (the folder's name): Stable Diffusion CLIP guidance, and pixel
    /// models' `clip=` guides (those need the tokenizer files in the folder).
    public var clipModels: [String: String] = [:]
    /// `diffuse train-classifier` folders by name (the folder's name): classifier guidance of pixel models.
    public var classifiers: [String: String] = [:]

    public init() {}

    /// The name a request uses for `path`: its last component without the extension.
    public static func name(of path: String) -> String {
        URL(fileURLWithPath: path).standardizedFileURL.deletingPathExtension().lastPathComponent
    }

    /// Adds files or folders under their names; throws on a missing path or a name given twice.
    public static func named(_ paths: [String], kind: String) throws -> [String: String] {
        var result: [String: String] = [:]
        for path in paths {
            guard FileManager.default.fileExists(atPath: path) else { throw APIError.badRequest("the \(kind) \(path) does not exist") }
            let name = self.name(of: path)
            guard result[name] == nil else { throw APIError.badRequest("two \(kind)s are named \(name); rename one") }
            result[name] = path
        }
        return result
    }

    /// The path of the resource `name` in `table`, or a 400 naming the ones there are.
    static func path(_ name: String, in table: [String: String], kind: String, option: String) throws -> String {
        if let path = table[name] { return path }
        let known = table.keys.sorted()
        throw APIError.badRequest("unknown \(kind) \"\(name.prefix(80))\"; "
                                  + (known.isEmpty ? "this server was started without \(option)" : "this server has \(known.joined(separator: ", "))"))
    }
}
