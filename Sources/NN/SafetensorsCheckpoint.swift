import Foundation
import Tensors

/// A safetensors checkpoint: one `.safetensors` file, or a sharded set
/// described by a `*.safetensors.index.json`
/// (`{"metadata": {...}, "weight_map": {"name": "shard.safetensors"}}`).
///
/// Every file is memory-mapped and validated when the checkpoint is opened,
/// and the index is checked against the shards (each listed tensor is in its
/// shard, each shard tensor is listed, no name is in two shards). Tensors are
/// materialised on access, one at a time.
public final class SafetensorsCheckpoint {
    /// The file or index the checkpoint was opened from.
    public let path: String
    /// The files, in shard order (one for an unsharded checkpoint).
    public let files: [SafetensorsFile]
    /// The index's `metadata` (non-string values as compact JSON, e.g.
    /// `total_size`), or the single file's `__metadata__`.
    public let metadata: [String: String]
    /// True when opened from an index.
    public let isSharded: Bool

    private let fileByName: [String: SafetensorsFile]

    /// Opens `path`: a `.safetensors` file, a `*.safetensors.index.json`, or a
    /// directory holding exactly one of either (an index is preferred).
    public init(path: String) throws {
        var resolved = path
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            resolved = try SafetensorsCheckpoint.weightsFile(inDirectory: path)
        }
        self.path = resolved
        if resolved.hasSuffix(".json") {
            let index = try SafetensorsIndex(path: resolved)
            var files: [SafetensorsFile] = []
            var fileByShard: [String: SafetensorsFile] = [:]
            for shard in index.shardNames {
                let file = try SafetensorsFile(path: URL(fileURLWithPath: resolved).deletingLastPathComponent().appendingPathComponent(shard).path)
                files.append(file)
                fileByShard[shard] = file
            }
            var fileByName: [String: SafetensorsFile] = [:]
            for (name, shard) in index.weightMap {
                guard let file = fileByShard[shard], file.contains(name) else {
                    throw SafetensorsError.invalidIndex(path: resolved, reason: "weight_map puts tensor \"\(name)\" in \(shard), which does not contain it")
                }
                fileByName[name] = file
            }
            for (shard, file) in zip(index.shardNames, files) {
                for name in file.names where fileByName[name] !== file {
                    if let other = fileByName[name] {
                        throw SafetensorsError.invalidIndex(path: resolved, reason: "tensor \"\(name)\" is in both \(shard) and \(URL(fileURLWithPath: other.path).lastPathComponent)")
                    }
                    throw SafetensorsError.invalidIndex(path: resolved, reason: "shard \(shard) holds tensor \"\(name)\", which weight_map does not list")
                }
            }
            self.files = files
            self.fileByName = fileByName
            self.metadata = index.metadata
            self.isSharded = true
        } else {
            let file = try SafetensorsFile(path: resolved)
            files = [file]
            fileByName = Dictionary(file.names.map { ($0, file) }, uniquingKeysWith: { first, _ in first })
            metadata = file.metadata
            isSharded = false
        }
    }

    /// Tensor names, sorted.
    public var names: [String] { fileByName.keys.sorted() }

    /// True when the checkpoint has a tensor called `name`.
    public func contains(_ name: String) -> Bool { fileByName[name] != nil }

    /// The file holding tensor `name`.
    public func file(containing name: String) throws -> SafetensorsFile {
        guard let file = fileByName[name] else { throw SafetensorsError.tensorNotFound(path: path, name: name) }
        return file
    }

    /// The header entry of tensor `name` (dtype as stored, shape, offsets).
    public func info(_ name: String) throws -> SafetensorsTensorInfo {
        try file(containing: name).info(name)
    }

    /// Tensor `name`; see `SafetensorsFile.tensor(_:as:)` for `dataType`.
    public func tensor(_ name: String, as dataType: DataType? = nil) throws -> Tensor {
        try file(containing: name).tensor(name, as: dataType)
    }

    /// Tensor `name`'s memory borrowed from its file's mapping (see `SafetensorsFile.mappedStorage`).
    public func mappedStorage(_ name: String, dataType: DataType) throws -> Storage? {
        try file(containing: name).mappedStorage(name, dataType: dataType)
    }

    /// Every tensor, materialised.
    public func tensors(as dataType: DataType? = nil) throws -> [String: Tensor] {
        var result: [String: Tensor] = [:]
        for name in names { result[name] = try tensor(name, as: dataType) }
        return result
    }

    /// Total number of elements.
    public var parameterCount: Int { files.reduce(0) { $0 + $1.tensorInfos.reduce(0) { $0 + $1.elementCount } } }

    /// Total number of tensor bytes (headers excluded).
    public var tensorBytes: Int { files.reduce(0) { $0 + $1.tensorInfos.reduce(0) { $0 + $1.byteCount } } }

    /// The weights file in a directory: the single `*.safetensors.index.json`,
    /// else the single `*.safetensors`. A directory holding only pickle
    /// checkpoints throws `pickleCheckpoint`.
    static func weightsFile(inDirectory directory: String) throws -> String {
        let contents: [String]
        do {
            contents = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        } catch {
            throw SafetensorsError.cannotOpen(path: directory, reason: "\(error)")
        }
        let indexes = contents.filter { $0.hasSuffix(".safetensors.index.json") }
        let singles = contents.filter { $0.hasSuffix(".safetensors") }
        let url = URL(fileURLWithPath: directory)
        if indexes.count == 1 { return url.appendingPathComponent(indexes[0]).path }
        if indexes.isEmpty && singles.count == 1 { return url.appendingPathComponent(singles[0]).path }
        if indexes.isEmpty && singles.isEmpty, let pickle = contents.first(where: SafetensorsFile.isPickleCheckpointName) {
            throw SafetensorsError.pickleCheckpoint(path: url.appendingPathComponent(pickle).path)
        }
        let found = indexes + (indexes.isEmpty ? singles : [])
        throw SafetensorsError.cannotOpen(path: directory, reason: found.isEmpty
            ? "the directory holds no .safetensors file"
            : "the directory holds several candidate weight files (\(found.joined(separator: ", "))); pass one")
    }
}

/// A parsed `*.safetensors.index.json`.
public struct SafetensorsIndex {
    /// The `metadata` object, non-string values rendered as compact JSON.
    public let metadata: [String: String]
    /// Tensor name → shard file name (relative to the index's directory).
    public let weightMap: [String: String]
    /// The distinct shard file names, sorted.
    public let shardNames: [String]

    /// Reads and checks the index at `path`.
    public init(path: String) throws {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw SafetensorsError.cannotOpen(path: path, reason: "\(error)")
        }
        func invalid(_ reason: String) -> SafetensorsError { .invalidIndex(path: path, reason: reason) }
        let json: JSONValue
        do {
            json = try JSONParser.parse(data)
        } catch let failure as JSONParser.Failure {
            throw invalid("bad JSON at byte \(failure.offset): \(failure.reason)")
        }
        guard case let .object(members) = json else { throw invalid("not a JSON object") }
        var metadata: [String: String] = [:]
        var weightMap: [String: String]?
        var sawMetadata = false
        for (key, value) in members {
            switch key {
            case "metadata":
                guard !sawMetadata else { throw invalid("\"metadata\" appears more than once") }
                sawMetadata = true
                guard case let .object(entries) = value else { throw invalid("\"metadata\" is not an object") }
                for (name, entry) in entries {
                    guard metadata.updateValue(entry.stringValue ?? entry.compactText, forKey: name) == nil else {
                        throw invalid("metadata key \"\(name)\" appears more than once")
                    }
                }
            case "weight_map":
                guard weightMap == nil else { throw invalid("\"weight_map\" appears more than once") }
                guard case let .object(entries) = value else { throw invalid("\"weight_map\" is not an object") }
                var map: [String: String] = [:]
                for (name, entry) in entries {
                    guard let file = entry.stringValue else { throw invalid("weight_map[\"\(name)\"] is not a file name: \(entry.compactText.prefix(80))") }
                    guard !file.isEmpty, !file.hasPrefix("/"), !file.split(separator: "/").contains("..") else {
                        throw invalid("weight_map[\"\(name)\"] = \"\(file)\" is not a file name inside the index's directory")
                    }
                    guard map.updateValue(file, forKey: name) == nil else { throw SafetensorsError.duplicateName(path: path, name: name) }
                }
                weightMap = map
            default:
                continue
            }
        }
        guard let weightMap else { throw invalid("no \"weight_map\"") }
        self.metadata = metadata
        self.weightMap = weightMap
        shardNames = Set(weightMap.values).sorted()
    }
}
