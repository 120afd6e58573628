import Foundation
import Tensors

/// One PyTorch golden written by `Scripts/make-goldens`: the op's inputs,
/// `output`, `upstream` and `grad_<input>` tensors, and the op parameters.
public struct GoldenCase {
    public let tensors: [String: Tensor]
    public let metadata: [String: String]

    public init(tensors: [String: Tensor], metadata: [String: String]) {
        self.tensors = tensors
        self.metadata = metadata
    }

    /// Loads `Tests/Fixtures/tensors/<name>.safetensors`.
    public static func load(_ name: String) throws -> GoldenCase {
        try SafetensorsFixture.load(name)
    }

    /// The tensor called `name`; throws when the file has none.
    public func tensor(_ name: String) throws -> Tensor {
        guard let tensor = tensors[name] else {
            throw SafetensorsFixtureError.missing("tensor \"\(name)\" (the file has \(tensors.keys.sorted()))")
        }
        return tensor
    }

    /// A fresh copy of tensor `name` with `requiresGrad = true`, for use as a leaf.
    public func leaf(_ name: String) throws -> Tensor {
        let copy = try tensor(name).contiguousCopy()
        copy.requiresGrad = true
        return copy
    }

    /// Metadata value `key`; throws when absent.
    public func string(_ key: String) throws -> String {
        guard let value = metadata[key] else { throw SafetensorsFixtureError.missing("metadata \"\(key)\"") }
        return value
    }

    public func int(_ key: String) throws -> Int {
        let text = try string(key)
        guard let value = Int(text) else { throw SafetensorsFixtureError.badMetadata(key, text) }
        return value
    }

    public func float(_ key: String) throws -> Float {
        let text = try string(key)
        guard let value = Float(text) else { throw SafetensorsFixtureError.badMetadata(key, text) }
        return value
    }

    /// `"true"` or `"false"`.
    public func bool(_ key: String) throws -> Bool {
        switch try string(key) {
        case "true": return true
        case "false": return false
        case let text: throw SafetensorsFixtureError.badMetadata(key, text)
        }
    }

    /// A comma-separated list of integers (`"1,2"`); empty string is `[]`.
    public func ints(_ key: String) throws -> [Int] {
        let text = try string(key)
        if text.isEmpty { return [] }
        return try text.split(separator: ",", omittingEmptySubsequences: false).map {
            guard let value = Int($0.trimmingCharacters(in: .whitespaces)) else { throw SafetensorsFixtureError.badMetadata(key, text) }
            return value
        }
    }
}

public enum SafetensorsFixtureError: Error, CustomStringConvertible {
    case unreadable(String, String)
    case malformed(String)
    case missing(String)
    case badMetadata(String, String)

    public var description: String {
        switch self {
        case let .unreadable(path, reason): return "cannot read golden \(path): \(reason)"
        case let .malformed(reason): return "malformed safetensors golden: \(reason)"
        case let .missing(what): return "golden has no \(what)"
        case let .badMetadata(key, value): return "golden metadata \"\(key)\" has unexpected value \"\(value)\""
        }
    }
}

/// A strict reader of the float32-only safetensors files under `Tests/Fixtures/tensors`.
///
/// Layout: 8-byte little-endian header length `n`, `n` bytes of JSON
/// `{"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, …,
/// "__metadata__": {"key": "value"}}`, then the data buffer. Anything else —
/// another dtype, unknown keys, offsets that overlap, leave gaps or do not match
/// the shape, trailing bytes — is an error.
public enum SafetensorsFixture {
    /// `Tests/Fixtures/tensors`, found from this source file's location.
    public static var directory: URL {
        URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent() // TestSupport
            .deletingLastPathComponent() // Tests
            .appendingPathComponent("Fixtures")
            .appendingPathComponent("tensors")
    }

    public static func load(_ name: String) throws -> GoldenCase {
        try load(name, from: directory)
    }

    /// Loads `<name>.safetensors` from `Tests/Fixtures/<subdirectory>`.
    public static func load(_ name: String, subdirectory: String) throws -> GoldenCase {
        try load(name, from: directory.deletingLastPathComponent().appendingPathComponent(subdirectory))
    }

    static func load(_ name: String, from directory: URL) throws -> GoldenCase {
        let url = directory.appendingPathComponent(name + ".safetensors")
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw SafetensorsFixtureError.unreadable(url.path, "\(error) (regenerate with Scripts/make-goldens)")
        }
        return try parse(data)
    }

    public static func parse(_ data: Data) throws -> GoldenCase {
        let bytes = [UInt8](data)
        guard bytes.count >= 8 else { throw SafetensorsFixtureError.malformed("file is \(bytes.count) bytes, shorter than the 8-byte header length") }
        var headerLength: UInt64 = 0
        for index in 0..<8 { headerLength |= UInt64(bytes[index]) << (8 * UInt64(index)) }
        guard headerLength <= UInt64(bytes.count - 8) else {
            throw SafetensorsFixtureError.malformed("header length \(headerLength) exceeds the \(bytes.count - 8) bytes after it")
        }
        let headerEnd = 8 + Int(headerLength)
        let headerObject: Any
        do {
            headerObject = try JSONSerialization.jsonObject(with: Data(bytes[8..<headerEnd]), options: [])
        } catch {
            throw SafetensorsFixtureError.malformed("header is not JSON: \(error)")
        }
        guard let header = headerObject as? [String: Any] else { throw SafetensorsFixtureError.malformed("header is not a JSON object") }
        let bufferLength = bytes.count - headerEnd

        var metadata: [String: String] = [:]
        if let rawMetadata = header["__metadata__"] {
            guard let dictionary = rawMetadata as? [String: Any] else { throw SafetensorsFixtureError.malformed("__metadata__ is not an object") }
            for (key, value) in dictionary {
                guard let text = value as? String else { throw SafetensorsFixtureError.malformed("__metadata__[\(key)] is not a string") }
                metadata[key] = text
            }
        }

        var entries: [(name: String, shape: [Int], begin: Int, end: Int)] = []
        for (name, rawEntry) in header where name != "__metadata__" {
            guard let entry = rawEntry as? [String: Any] else { throw SafetensorsFixtureError.malformed("entry \(name) is not an object") }
            let unknown = Set(entry.keys).subtracting(["dtype", "shape", "data_offsets"])
            guard unknown.isEmpty else { throw SafetensorsFixtureError.malformed("entry \(name) has unknown keys \(unknown.sorted())") }
            guard let dtype = entry["dtype"] as? String else { throw SafetensorsFixtureError.malformed("entry \(name) has no dtype") }
            guard dtype == "F32" else { throw SafetensorsFixtureError.malformed("entry \(name) has dtype \(dtype); only F32 is supported") }
            guard let rawShape = entry["shape"] as? [Any], let shape = integers(rawShape), shape.allSatisfy({ $0 >= 0 }) else {
                throw SafetensorsFixtureError.malformed("entry \(name) has a bad shape")
            }
            guard let rawOffsets = entry["data_offsets"] as? [Any], let offsets = integers(rawOffsets), offsets.count == 2 else {
                throw SafetensorsFixtureError.malformed("entry \(name) has bad data_offsets")
            }
            let (begin, end) = (offsets[0], offsets[1])
            guard begin >= 0, begin <= end, end <= bufferLength else {
                throw SafetensorsFixtureError.malformed("entry \(name) offsets [\(begin), \(end)] fall outside the \(bufferLength)-byte buffer")
            }
            let count = shape.reduce(1, *)
            guard end - begin == count * 4 else {
                throw SafetensorsFixtureError.malformed("entry \(name) holds \(end - begin) bytes but shape \(shape) needs \(count * 4)")
            }
            entries.append((name, shape, begin, end))
        }

        // The entries must tile the buffer exactly: no overlap, no gap, nothing after.
        entries.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        var position = 0
        for entry in entries {
            guard entry.begin == position else {
                throw SafetensorsFixtureError.malformed("entry \(entry.name) starts at \(entry.begin), expected \(position) (overlap or gap)")
            }
            position = entry.end
        }
        guard position == bufferLength else {
            throw SafetensorsFixtureError.malformed("tensors cover \(position) bytes of a \(bufferLength)-byte buffer")
        }

        var tensors: [String: Tensor] = [:]
        for entry in entries {
            let count = (entry.end - entry.begin) / 4
            var values = [Float](repeating: 0, count: count)
            let base = headerEnd + entry.begin
            for index in 0..<count {
                let at = base + 4 * index
                let bits = UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
                values[index] = Float(bitPattern: bits)
            }
            tensors[entry.name] = Tensor(values, shape: entry.shape)
        }
        return GoldenCase(tensors: tensors, metadata: metadata)
    }

    /// JSON numbers as exact integers, or nil.
    private static func integers(_ values: [Any]) -> [Int]? {
        var result: [Int] = []
        for value in values {
            if let number = value as? NSNumber {
                let double = number.doubleValue
                guard double.rounded() == double, Swift.abs(double) < 9.0e15 else { return nil }
                result.append(number.intValue)
            } else if let integer = value as? Int {
                result.append(integer)
            } else {
                return nil
            }
        }
        return result
    }
}
