import Foundation
import Tensors
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

#if _endian(big)
#error("the safetensors reader and writer assume a little-endian machine")
#endif

/// Read-only bytes of a safetensors file: a memory mapping of the file, or a
/// copy of bytes held in memory (for tests and fuzzing).
final class SafetensorsBytes: @unchecked Sendable {
    let base: UnsafeRawPointer?
    let count: Int
    /// True for a file mapping (false for bytes copied into memory).
    let isMapped: Bool

    /// Maps the file at `path` read-only.
    init(mapping path: String) throws {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw SafetensorsError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw SafetensorsError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        guard (status.st_mode & S_IFMT) == S_IFREG else { throw SafetensorsError.cannotOpen(path: path, reason: "not a regular file") }
        count = Int(status.st_size)
        isMapped = count > 0
        guard count > 0 else { base = nil; return }
        // Private and copy-on-write: tensors mapped into a model (16-bit weights kept as stored)
        // may be written by their owner without touching the file.
        guard let mapping = mmap(nil, count, PROT_READ | PROT_WRITE, MAP_PRIVATE, descriptor, 0), mapping != MAP_FAILED else {
            throw SafetensorsError.cannotOpen(path: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(mapping)
    }

    /// Copies `bytes` into memory owned by this object.
    init(copying bytes: some Collection<UInt8>) {
        count = bytes.count
        isMapped = false
        let memory = UnsafeMutableRawPointer.allocate(byteCount: Swift.max(count, 1), alignment: 64)
        UnsafeMutableRawBufferPointer(start: memory, count: count).copyBytes(from: bytes)
        base = UnsafeRawPointer(memory)
    }

    deinit {
        guard let base else { return }
        if isMapped {
            munmap(UnsafeMutableRawPointer(mutating: base), count)
        } else {
            UnsafeMutableRawPointer(mutating: base).deallocate()
        }
    }

    /// The bytes in `range`, which the caller has checked lies within `0..<count`.
    func buffer(_ range: Range<Int>) -> UnsafeRawBufferPointer {
        guard let base, !range.isEmpty else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + range.lowerBound, count: range.count)
    }
}

/// One `.safetensors` file, memory-mapped and validated when opened; tensors
/// are materialised one at a time by `tensor(_:as:)`.
///
/// The header is checked completely before any tensor byte is read: every
/// entry's dtype, shape and offsets, no duplicate names, and tensors that tile
/// the data buffer exactly (no overlap, no gap, nothing after the last one).
/// Any problem throws a `SafetensorsError` naming the file, the tensor and the offsets.
///
/// The mapping is private and read-only; the file must not be truncated while
/// it is open (as with any memory-mapped reader, the OS would then fault on
/// access). `Safetensors.save` replaces files by rename, which is safe.
public final class SafetensorsFile {
    /// The largest header accepted, as in the reference implementation.
    public static let maximumHeaderBytes = 100_000_000

    /// The path the file was opened from (or the label given to in-memory bytes).
    public let path: String
    /// The `__metadata__` block (empty when the file has none).
    public let metadata: [String: String]
    /// Every tensor's header entry, in data-offset order.
    public let tensorInfos: [SafetensorsTensorInfo]
    /// Size of the whole file in bytes.
    public var fileSize: Int { bytes.count }
    /// Byte offset in the file where the data buffer starts (8 + header length).
    public let dataStart: Int

    private let bytes: SafetensorsBytes
    private let infoByName: [String: SafetensorsTensorInfo]

    /// Maps and validates the file at `path`.
    ///
    /// - Throws: `SafetensorsError.pickleCheckpoint` for `.bin`/`.pt`/`.pth`/`.ckpt`
    ///   files, and the matching `SafetensorsError` for any malformed header.
    public convenience init(path: String) throws {
        if SafetensorsFile.isPickleCheckpointName(path) { throw SafetensorsError.pickleCheckpoint(path: path) }
        try self.init(bytes: SafetensorsBytes(mapping: path), path: path)
    }

    /// Validates a safetensors file held in memory; `path` labels errors.
    public convenience init(bytes: some Collection<UInt8>, path: String = "<memory>") throws {
        try self.init(bytes: SafetensorsBytes(copying: bytes), path: path)
    }

    init(bytes: SafetensorsBytes, path: String) throws {
        self.bytes = bytes
        self.path = path
        let header = try SafetensorsFile.parseHeader(bytes, path: path)
        metadata = header.metadata
        tensorInfos = header.tensors
        dataStart = header.dataStart
        infoByName = Dictionary(header.tensors.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    }

    /// Tensor names, sorted.
    public var names: [String] { infoByName.keys.sorted() }

    /// True when the file has a tensor called `name`.
    public func contains(_ name: String) -> Bool { infoByName[name] != nil }

    /// The header entry of tensor `name`.
    public func info(_ name: String) throws -> SafetensorsTensorInfo {
        guard let info = infoByName[name] else { throw SafetensorsError.tensorNotFound(path: path, name: name) }
        return info
    }

    /// The raw little-endian bytes of tensor `name`, valid while this object lives.
    public func withRawBytes<Result>(of name: String, _ body: (UnsafeRawBufferPointer) throws -> Result) throws -> Result {
        let info = try info(name)
        return try withExtendedLifetime(bytes) {
            try body(bytes.buffer((dataStart + info.dataOffsets.lowerBound)..<(dataStart + info.dataOffsets.upperBound)))
        }
    }

    /// Tensor `name`'s memory as a storage of `dataType` that borrows the file's mapping
    /// (no copy: pages are read from the file when first touched, and copied only if written),
    /// or nil when the file holds it in another type, it is empty, its bytes are not aligned
    /// to the type, or the bytes are not a file mapping. The storage keeps the mapping alive.
    public func mappedStorage(_ name: String, dataType: DataType) throws -> Storage? {
        let info = try info(name)
        guard bytes.isMapped, info.dataType.engineDataType == dataType, info.elementCount > 0 else { return nil }
        let raw = bytes.buffer((dataStart + info.dataOffsets.lowerBound)..<(dataStart + info.dataOffsets.upperBound))
        guard let base = raw.baseAddress, Int(bitPattern: base) % dataType.byteSize == 0 else { return nil }
        return Storage(borrowing: UnsafeMutableRawPointer(mutating: base), count: info.elementCount, dataType: dataType, owner: bytes)
    }

    /// Tensor `name` copied out of the mapping.
    ///
    /// - Parameter dataType: the storage type of the result. `nil` keeps the
    ///   file's type when the engine has it (`F32`, `F16`, `BF16`) and converts
    ///   every other type (`F64`, integers, `BOOL`…) to `float32`. Asking for
    ///   `.float32` converts half precision; asking for `.float16`/`.bfloat16`
    ///   rounds.
    public func tensor(_ name: String, as dataType: DataType? = nil) throws -> Tensor {
        let info = try info(name)
        let target = dataType ?? info.dataType.engineDataType ?? .float32
        if info.elementCount == 0 { return SafetensorsFile.emptyTensor(shape: info.shape, dataType: target) }
        return try withRawBytes(of: name) { raw in
            if info.dataType.engineDataType == target && target != .float32 {
                // Half precision kept as is: copy the 16-bit words.
                let result = Tensor.zeros(info.shape).converted(to: target)
                if let source = raw.baseAddress {
                    UnsafeMutableRawPointer(result.storage.bytes).copyMemory(from: source, byteCount: raw.count)
                }
                return result
            }
            let floats = Tensor.zeros(info.shape)
            if let source = raw.baseAddress {
                if info.dataType == .float32 {
                    UnsafeMutableRawPointer(floats.floatPointer).copyMemory(from: source, byteCount: raw.count)
                } else {
                    info.dataType.decode(source, count: info.elementCount, into: floats.floatPointer)
                }
            }
            return target == .float32 ? floats : floats.converted(to: target)
        }
    }

    /// A tensor with no elements. When the engine does not consider the shape
    /// contiguous (a zero after a larger size, e.g. `[2, 0]`), converting it
    /// would divide by zero in the engine's strided loop, so it is built from a
    /// shape of ones and one zero and expanded.
    static func emptyTensor(shape: [Int], dataType: DataType) -> Tensor {
        let zeros = Tensor.zeros(shape)
        guard !zeros.isContiguous, let zeroAxis = shape.firstIndex(of: 0) else { return zeros.converted(to: dataType) }
        var seed = [Int](repeating: 1, count: shape.count)
        seed[zeroAxis] = 0
        return Tensor.zeros(seed).converted(to: dataType).expanded(shape)
    }

    /// Every tensor, materialised (see `tensor(_:as:)` for `dataType`).
    public func tensors(as dataType: DataType? = nil) throws -> [String: Tensor] {
        var result: [String: Tensor] = [:]
        for info in tensorInfos { result[info.name] = try tensor(info.name, as: dataType) }
        return result
    }

    /// True for file names PyTorch pickle checkpoints use.
    static func isPickleCheckpointName(_ path: String) -> Bool {
        let lowered = path.lowercased()
        return [".bin", ".pt", ".pth", ".ckpt", ".pkl"].contains { lowered.hasSuffix($0) }
    }

    // MARK: - Header validation

    struct Header {
        var metadata: [String: String]
        var tensors: [SafetensorsTensorInfo]
        var dataStart: Int
    }

    static func parseHeader(_ bytes: SafetensorsBytes, path: String) throws -> Header {
        guard bytes.count >= 8 else { throw SafetensorsError.truncated(path: path, fileSize: bytes.count) }
        let prefix = bytes.buffer(0..<8)
        var headerLength: UInt64 = 0
        for index in 0..<8 { headerLength |= UInt64(prefix[index]) << (8 * UInt64(index)) }
        let available = bytes.count - 8
        if headerLength > UInt64(maximumHeaderBytes) || headerLength > UInt64(available) {
            // A zip (torch.save) or a raw pickle read as a length gives nonsense: say what the file is.
            if (prefix[0] == 0x50 && prefix[1] == 0x4B && prefix[2] == 0x03 && prefix[3] == 0x04)
                || (prefix[0] == 0x80 && (2...5).contains(prefix[1])) {
                throw SafetensorsError.pickleCheckpoint(path: path)
            }
            if headerLength > UInt64(maximumHeaderBytes) {
                throw SafetensorsError.headerTooLarge(path: path, headerLength: headerLength, limit: maximumHeaderBytes)
            }
            throw SafetensorsError.headerExceedsFile(path: path, headerLength: headerLength, available: available)
        }
        let dataStart = 8 + Int(headerLength)
        let dataSize = bytes.count - dataStart

        let json: JSONValue
        do {
            json = try JSONParser.parse(bytes.buffer(8..<dataStart))
        } catch let failure as JSONParser.Failure {
            throw SafetensorsError.invalidHeader(path: path, offset: 8 + failure.offset, reason: failure.reason)
        }
        guard case let .object(members) = json else {
            throw SafetensorsError.invalidHeader(path: path, offset: 8, reason: "the header is not a JSON object")
        }

        var metadata: [String: String] = [:]
        var tensors: [SafetensorsTensorInfo] = []
        var seen = Set<String>()
        for (name, value) in members {
            guard seen.insert(name).inserted else { throw SafetensorsError.duplicateName(path: path, name: name) }
            if name == "__metadata__" {
                metadata = try parseMetadata(value, path: path)
            } else {
                tensors.append(try parseEntry(name: name, value, dataSize: dataSize, path: path))
            }
        }

        // The tensors must tile the data buffer: sorted by offset, each starts where the previous ended.
        tensors.sort { ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound, $0.name) < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound, $1.name) }
        var position = 0
        var previous: SafetensorsTensorInfo?
        for info in tensors {
            let begin = info.dataOffsets.lowerBound
            if begin < position, let previous {
                throw SafetensorsError.overlappingTensors(path: path, tensor: info.name, offsets: info.dataOffsets,
                                                          other: previous.name, otherOffsets: previous.dataOffsets)
            }
            if begin > position {
                throw SafetensorsError.gapInData(path: path, tensor: info.name, begin: begin, expected: position)
            }
            position = info.dataOffsets.upperBound
            previous = info
        }
        guard position == dataSize else { throw SafetensorsError.trailingData(path: path, covered: position, dataSize: dataSize) }
        return Header(metadata: metadata, tensors: tensors, dataStart: dataStart)
    }

    private static func parseMetadata(_ value: JSONValue, path: String) throws -> [String: String] {
        guard case let .object(members) = value else {
            throw SafetensorsError.invalidMetadata(path: path, key: nil, reason: "expected an object of strings, found \(value.compactText.prefix(80))")
        }
        var metadata: [String: String] = [:]
        for (key, entry) in members {
            guard case let .string(text) = entry else {
                throw SafetensorsError.invalidMetadata(path: path, key: key, reason: "value \(entry.compactText.prefix(80)) is not a string")
            }
            guard metadata.updateValue(text, forKey: key) == nil else {
                throw SafetensorsError.invalidMetadata(path: path, key: key, reason: "key appears more than once")
            }
        }
        return metadata
    }

    private static func parseEntry(name: String, _ value: JSONValue, dataSize: Int, path: String) throws -> SafetensorsTensorInfo {
        func invalid(_ reason: String) -> SafetensorsError { .invalidTensorEntry(path: path, tensor: name, reason: reason) }
        guard case let .object(fields) = value else { throw invalid("entry is not an object: \(value.compactText.prefix(80))") }
        var dtypeValue: JSONValue?, shapeValue: JSONValue?, offsetsValue: JSONValue?
        for (key, field) in fields {
            switch key {
            case "dtype": guard dtypeValue == nil else { throw invalid("field \"dtype\" appears twice") }; dtypeValue = field
            case "shape": guard shapeValue == nil else { throw invalid("field \"shape\" appears twice") }; shapeValue = field
            case "data_offsets": guard offsetsValue == nil else { throw invalid("field \"data_offsets\" appears twice") }; offsetsValue = field
            default: throw invalid("unknown field \"\(key)\" (expected dtype, shape, data_offsets)")
            }
        }
        guard let dtypeValue else { throw invalid("missing \"dtype\"") }
        guard let shapeValue else { throw invalid("missing \"shape\"") }
        guard let offsetsValue else { throw invalid("missing \"data_offsets\"") }
        guard case let .string(dtypeName) = dtypeValue else { throw invalid("\"dtype\" is not a string: \(dtypeValue.compactText.prefix(80))") }
        guard let dataType = SafetensorsDataType(rawValue: dtypeName) else {
            throw SafetensorsError.unknownDataType(path: path, tensor: name, dataType: dtypeName)
        }
        guard case let .array(shapeElements) = shapeValue else { throw invalid("\"shape\" is not an array: \(shapeValue.compactText.prefix(80))") }
        var shape: [Int] = []
        for element in shapeElements {
            guard let size = element.exactNonNegativeInteger else { throw invalid("\"shape\" \(shapeValue.compactText.prefix(80)) has \(element.compactText.prefix(40)), not a non-negative integer") }
            shape.append(size)
        }
        guard case let .array(offsetElements) = offsetsValue, offsetElements.count == 2 else {
            throw invalid("\"data_offsets\" is not a pair [begin, end]: \(offsetsValue.compactText.prefix(80))")
        }
        guard let begin = offsetElements[0].exactNonNegativeInteger, let end = offsetElements[1].exactNonNegativeInteger else {
            throw invalid("\"data_offsets\" \(offsetsValue.compactText.prefix(80)) are not non-negative integers")
        }
        guard begin <= end, end <= dataSize else {
            throw SafetensorsError.offsetsOutOfBounds(path: path, tensor: name, begin: begin, end: end, dataSize: dataSize)
        }
        // Products of the non-zero sizes must not overflow in any order (strides are computed from the end).
        var magnitude = 1
        for size in shape where size > 0 {
            let (product, overflow) = magnitude.multipliedReportingOverflow(by: size)
            guard !overflow else { throw SafetensorsError.shapeOverflow(path: path, tensor: name, shape: shape) }
            magnitude = product
        }
        let elementCount = shape.contains(0) ? 0 : magnitude
        let (expectedBytes, overflow) = elementCount.multipliedReportingOverflow(by: dataType.byteSize)
        guard !overflow else { throw SafetensorsError.shapeOverflow(path: path, tensor: name, shape: shape) }
        guard expectedBytes == end - begin else {
            throw SafetensorsError.shapeMismatch(path: path, tensor: name, dataType: dataType.rawValue, shape: shape,
                                                 expectedBytes: expectedBytes, offsets: begin..<end)
        }
        return SafetensorsTensorInfo(name: name, dataType: dataType, shape: shape, dataOffsets: begin..<end)
    }
}
