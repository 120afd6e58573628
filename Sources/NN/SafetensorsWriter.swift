import Foundation
import Tensors
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Serialises tensors in the layout of the Python `safetensors` package:
/// tensors sorted by descending dtype alignment then by name (byte order), the
/// header compact JSON with `__metadata__` first, padded with spaces to a
/// multiple of 8 bytes. Files are written atomically.
enum SafetensorsWriter {
    /// A tensor ready to write: its final type, shape and place in the buffer.
    struct Entry {
        let name: String
        let tensor: Tensor
        let dataType: SafetensorsDataType
        let shape: [Int]
        let byteCount: Int
    }

    /// Checks names and picks each tensor's stored type, in file order.
    static func entries(_ tensors: [String: Tensor], dataType: DataType?) throws -> [Entry] {
        var entries: [Entry] = []
        for (name, tensor) in tensors {
            guard name != "__metadata__" else {
                throw SafetensorsError.invalidTensorForWriting(name: name, reason: "\"__metadata__\" is reserved for the metadata block")
            }
            let target = SafetensorsDataType(dataType ?? tensor.dataType)
            entries.append(Entry(name: name, tensor: tensor, dataType: target, shape: tensor.shape, byteCount: tensor.count * target.byteSize))
        }
        entries.sort { left, right in
            if left.dataType != right.dataType { return left.dataType > right.dataType }
            return Array(left.name.utf8).lexicographicallyPrecedes(Array(right.name.utf8))
        }
        return entries
    }

    /// The header bytes (without the 8-byte length), padded to a multiple of 8.
    static func header(_ entries: [Entry], metadata: [String: String]) -> [UInt8] {
        var members: [(key: String, value: JSONValue)] = []
        if !metadata.isEmpty {
            let sortedKeys = metadata.keys.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
            members.append(("__metadata__", .object(sortedKeys.map { ($0, JSONValue.string(metadata[$0] ?? "")) })))
        }
        var offset = 0
        for entry in entries {
            members.append((entry.name, .object([
                ("dtype", .string(entry.dataType.rawValue)),
                ("shape", .array(entry.shape.map { .number(String($0)) })),
                ("data_offsets", .array([.number(String(offset)), .number(String(offset + entry.byteCount))])),
            ])))
            offset += entry.byteCount
        }
        var bytes = Array(JSONWriter.render(.object(members)).utf8)
        bytes.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - bytes.count % 8) % 8))
        return bytes
    }

    /// Writes the entries as one safetensors file at `path`, atomically.
    static func write(_ entries: [Entry], metadata: [String: String], to path: String) throws {
        let header = header(entries, metadata: metadata)
        try AtomicFile.write(to: path) { sink in
            var length = UInt64(header.count).littleEndian
            try withUnsafeBytes(of: &length) { try sink($0) }
            try header.withUnsafeBytes { try sink($0) }
            for entry in entries where entry.byteCount > 0 {
                let data = storedData(entry)
                let pointer: UnsafeRawPointer = entry.dataType == .float32
                    ? UnsafeRawPointer(data.floatPointer)
                    : UnsafeRawPointer(data.storage.halfWords + data.offset)
                try sink(UnsafeRawBufferPointer(start: pointer, count: entry.byteCount))
                withExtendedLifetime(data) {}
            }
        }
    }

    /// The tensor as contiguous memory of the entry's type (the tensor itself
    /// when it already is), outside the autograd graph.
    static func storedData(_ entry: Entry) -> Tensor {
        let source = entry.tensor.detach()
        guard let target = entry.dataType.engineDataType else { fatalError("SafetensorsWriter: unsupported write type \(entry.dataType)") }
        if source.dataType == target && source.isContiguous { return source }
        let floats = source.contiguousData()
        return target == .float32 ? floats : floats.converted(to: target)
    }
}

/// Writes a file through a temporary file in the same directory, `fsync`s it
/// and renames it over the destination, so readers see either the old file or
/// the complete new one.
enum AtomicFile {
    typealias Sink = (UnsafeRawBufferPointer) throws -> Void

    static func write(to path: String, _ body: (Sink) throws -> Void) throws {
        let url = URL(fileURLWithPath: path)
        let directory = url.deletingLastPathComponent().path
        var template = Array((directory + "/." + url.lastPathComponent + ".tmp-XXXXXX").utf8CString)
        let descriptor = template.withUnsafeMutableBufferPointer { buffer -> Int32 in
            guard let base = buffer.baseAddress else { return -1 }
            return mkstemp(base)
        }
        guard descriptor >= 0 else {
            throw SafetensorsError.writeFailed(path: path, reason: "cannot create a temporary file in \(directory): \(String(cString: strerror(errno)))")
        }
        let temporaryPath = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var isOpen = true
        var renamed = false
        defer {
            if isOpen { close(descriptor) }
            if !renamed { unlink(temporaryPath) }
        }
        func failure(_ what: String) -> SafetensorsError {
            .writeFailed(path: path, reason: "\(what) \(temporaryPath): \(String(cString: strerror(errno)))")
        }
        fchmod(descriptor, 0o644)
        try body { buffer in
            guard var pointer = buffer.baseAddress else { return }
            var remaining = buffer.count
            while remaining > 0 {
                let written = systemWrite(descriptor, pointer, Swift.min(remaining, 1 << 30))
                if written < 0 && errno == EINTR { continue }
                guard written > 0 else { throw failure("write to") }
                pointer += written
                remaining -= written
            }
        }
        guard fsync(descriptor) == 0 else { throw failure("fsync of") }
        isOpen = false
        guard close(descriptor) == 0 else { throw failure("close of") }
        guard rename(temporaryPath, path) == 0 else { throw failure("rename of") }
        renamed = true
        // Make the rename itself durable.
        let directoryDescriptor = open(directory, O_RDONLY | O_CLOEXEC)
        if directoryDescriptor >= 0 {
            fsync(directoryDescriptor)
            close(directoryDescriptor)
        }
    }

    /// Writes `bytes` atomically to `path`.
    static func write(_ bytes: [UInt8], to path: String) throws {
        try write(to: path) { sink in try bytes.withUnsafeBytes { try sink($0) } }
    }
}

/// `write(2)`, named apart from the Swift functions called `write`.
private func systemWrite(_ descriptor: Int32, _ pointer: UnsafeRawPointer, _ count: Int) -> Int {
    #if canImport(Glibc)
    return Glibc.write(descriptor, pointer, count)
    #else
    return Darwin.write(descriptor, pointer, count)
    #endif
}
