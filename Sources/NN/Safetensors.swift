import Foundation
import Tensors

/// Reading and writing checkpoints in the safetensors format
/// (https://github.com/huggingface/safetensors), compatible with the Python
/// `safetensors` package and with diffusers/transformers sharded checkpoints.
///
/// - Reading: `F32`, `F16`, `BF16` as engine tensors of that type (or any type
///   you ask for); `F64`, the integer types and `BOOL` converted to `float32`
///   (the stored type stays visible in `SafetensorsTensorInfo.dataType`).
///   Files are memory-mapped; use `SafetensorsFile` or `SafetensorsCheckpoint`
///   to materialise tensors one at a time.
/// - Writing: `F32`, `F16`, `BF16`; atomic (temporary file, `fsync`, rename).
/// - PyTorch pickle checkpoints (`.bin`, `.pt`, `.pth`, `.ckpt`) are refused
///   with an error that shows how to convert them.
public enum Safetensors {
    /// Loads every tensor of a `.safetensors` file, a `*.safetensors.index.json`
    /// sharded checkpoint, or a directory holding one of them.
    ///
    /// - Parameter dataType: the storage type of the results; `nil` keeps
    ///   `F32`/`F16`/`BF16` as stored and converts other types to `float32`.
    public static func load(path: String, as dataType: DataType? = nil) throws -> [String: Tensor] {
        try SafetensorsCheckpoint(path: path).tensors(as: dataType)
    }

    /// The `__metadata__` of a file, or the `metadata` of a sharded index.
    public static func metadata(path: String) throws -> [String: String] {
        try SafetensorsCheckpoint(path: path).metadata
    }

    /// Writes `tensors` to one `.safetensors` file, atomically.
    ///
    /// - Parameters:
    ///   - metadata: the `__metadata__` block (omitted when empty). PyTorch
    ///     loaders in transformers/diffusers expect `["format": "pt"]`.
    ///   - dataType: store every tensor as this type (`nil`: each tensor's own type).
    public static func save(_ tensors: [String: Tensor], to path: String, metadata: [String: String] = [:], dataType: DataType? = nil) throws {
        let entries = try SafetensorsWriter.entries(tensors, dataType: dataType)
        try SafetensorsWriter.write(entries, metadata: metadata, to: path)
    }

    /// The exact bytes `save` would write (for comparisons and in-memory use).
    public static func serialize(_ tensors: [String: Tensor], metadata: [String: String] = [:], dataType: DataType? = nil) throws -> [UInt8] {
        let entries = try SafetensorsWriter.entries(tensors, dataType: dataType)
        let header = SafetensorsWriter.header(entries, metadata: metadata)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8 + header.count + entries.reduce(0) { $0 + $1.byteCount })
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: header)
        for entry in entries where entry.byteCount > 0 {
            let data = SafetensorsWriter.storedData(entry)
            let pointer: UnsafeRawPointer = entry.dataType == .float32
                ? UnsafeRawPointer(data.floatPointer)
                : UnsafeRawPointer(data.storage.halfWords + data.offset)
            bytes.append(contentsOf: UnsafeRawBufferPointer(start: pointer, count: entry.byteCount))
            withExtendedLifetime(data) {}
        }
        return bytes
    }

    /// Writes `tensors` as shards of at most `maximumShardBytes` tensor bytes
    /// each (a larger tensor gets a shard of its own) plus an index, the way
    /// transformers and diffusers do:
    /// `<baseName>-00001-of-0000N.safetensors` … and
    /// `<baseName>.safetensors.index.json` with
    /// `{"metadata": {"total_size": …}, "weight_map": {name: shard}}`.
    ///
    /// Tensors are assigned to shards in name order. Each shard and then the
    /// index are written atomically; the index is written last.
    ///
    /// - Returns: the path of the index.
    @discardableResult
    public static func saveSharded(_ tensors: [String: Tensor], to directory: String, baseName: String = "model",
                                   maximumShardBytes: Int, metadata: [String: String] = [:], dataType: DataType? = nil) throws -> String {
        guard maximumShardBytes > 0 else {
            throw SafetensorsError.writeFailed(path: directory, reason: "maximumShardBytes must be positive, got \(maximumShardBytes)")
        }
        let entries = try SafetensorsWriter.entries(tensors, dataType: dataType)
            .sorted { Array($0.name.utf8).lexicographicallyPrecedes(Array($1.name.utf8)) }
        var shards: [[SafetensorsWriter.Entry]] = []
        var currentBytes = 0
        for entry in entries {
            if shards.isEmpty || (currentBytes > 0 && currentBytes + entry.byteCount > maximumShardBytes) {
                shards.append([])
                currentBytes = 0
            }
            shards[shards.count - 1].append(entry)
            currentBytes += entry.byteCount
        }
        if shards.isEmpty { shards = [[]] }
        let directoryURL = URL(fileURLWithPath: directory)
        var weightMap: [(String, String)] = []
        for (index, shard) in shards.enumerated() {
            let shardName = String(format: "%@-%05d-of-%05d.safetensors", baseName, index + 1, shards.count)
            let ordered = try SafetensorsWriter.entries(Dictionary(shard.map { ($0.name, $0.tensor) }, uniquingKeysWith: { first, _ in first }), dataType: dataType)
            try SafetensorsWriter.write(ordered, metadata: metadata, to: directoryURL.appendingPathComponent(shardName).path)
            weightMap.append(contentsOf: shard.map { ($0.name, shardName) })
        }
        var indexMetadata: [(key: String, value: JSONValue)] = [("total_size", .number(String(entries.reduce(0) { $0 + $1.byteCount })))]
        for key in metadata.keys.sorted() where key != "total_size" {
            indexMetadata.append((key, .string(metadata[key] ?? "")))
        }
        let index = JSONValue.object([
            ("metadata", .object(indexMetadata.sorted { $0.key < $1.key })),
            ("weight_map", .object(weightMap.map { ($0.0, JSONValue.string($0.1)) })),
        ])
        let indexPath = directoryURL.appendingPathComponent(baseName + ".safetensors.index.json").path
        try AtomicFile.write(Array((prettyJSON(index) + "\n").utf8), to: indexPath)
        return indexPath
    }

    /// Two-space indented JSON, as Python's `json.dumps(indent=2)` writes it.
    static func prettyJSON(_ value: JSONValue, indent: String = "") -> String {
        let inner = indent + "  "
        switch value {
        case let .object(members) where !members.isEmpty:
            let lines = members.map { inner + JSONWriter.quoted($0.key) + ": " + prettyJSON($0.value, indent: inner) }
            return "{\n" + lines.joined(separator: ",\n") + "\n" + indent + "}"
        case let .array(elements) where !elements.isEmpty:
            return "[\n" + elements.map { inner + prettyJSON($0, indent: inner) }.joined(separator: ",\n") + "\n" + indent + "]"
        default:
            return JSONWriter.render(value)
        }
    }
}

extension Module {
    /// Loads parameters from a safetensors file, sharded index or directory,
    /// converting half precision and other stored types to the parameters' `float32`.
    ///
    /// - Parameter strict: as in `load(stateDict:strict:)`: any missing,
    ///   unexpected or mis-shaped entry throws a `StateDictReport` and changes nothing.
    ///   - precision: how the loaded parameters are held (float32 by default; see ``WeightPrecision``).
    @discardableResult
    public func loadSafetensors(path: String, strict: Bool = true, precision: WeightPrecision = .float32) throws -> StateDictReport {
        let checkpoint = try SafetensorsCheckpoint(path: path)
        let parameters = namedParameters()
        var report = StateDictReport()
        let known = Set(parameters.map(\.name))
        for (name, parameter) in parameters {
            guard checkpoint.contains(name) else { report.missing.append(name); continue }
            let shape = try checkpoint.info(name).shape
            if shape != parameter.shape { report.mismatched.append(.init(name: name, expected: parameter.shape, found: shape)) }
        }
        report.unexpected = checkpoint.names.filter { !known.contains($0) }
        if strict && !report.isClean { throw report }
        // One tensor at a time, so peak memory is the model plus one tensor.
        let mismatched = Set(report.mismatched.map(\.name))
        for (name, parameter) in parameters where checkpoint.contains(name) && !mismatched.contains(name) {
            try checkpoint.load(name, into: parameter, precision: precision)
        }
        return report
    }

    /// Saves the parameters (state-dict names) to one safetensors file,
    /// atomically, with `["format": "pt"]` metadata so PyTorch tools accept it.
    public func saveSafetensors(path: String, metadata: [String: String] = ["format": "pt"], dataType: DataType? = nil) throws {
        try Safetensors.save(stateDict(), to: path, metadata: metadata, dataType: dataType)
    }
}

/// How a model's parameters are held in memory. All arithmetic stays float32 (or bfloat16 in
/// ``ComputePrecision/bfloat16`` mode): 16-bit parameters are widened one layer at a time as
/// ops read them, so a model needs about half the memory, at 16-bit rounding of its weights.
/// 16-bit parameters are for inference: they are frozen (`requiresGrad` false) when loaded.
public enum WeightPrecision: String, Sendable, CaseIterable {
    /// Everything widened to float32 (the default; what training needs).
    case float32
    /// As the file stores them: 16-bit tensors stay 16-bit, mapped from the file rather than
    /// copied; float32 tensors stay float32.
    case asStored
    /// Every parameter in bfloat16 (16-bit files mapped when they are bfloat16, converted otherwise).
    case bfloat16
    /// Every parameter in float16.
    case float16

    /// The type a parameter stored as `stored` is held in.
    func held(stored: DataType?) -> DataType {
        switch self {
        case .float32: return .float32
        case .asStored: return stored ?? .float32
        case .bfloat16: return .bfloat16
        case .float16: return .float16
        }
    }
}

extension SafetensorsCheckpoint {
    /// Puts tensor `name` into `parameter` (same element count), held as `precision` says:
    /// copied into float32, or its storage replaced by 16-bit memory (borrowed from the file's
    /// mapping when the file stores that type; the parameter is then frozen).
    public func load(_ name: String, into parameter: Tensor, precision: WeightPrecision = .float32) throws {
        switch precision.held(stored: try info(name).dataType.engineDataType) {
        case .float32:
            if parameter.dataType != .float32 { parameter.replaceStorage(with: Storage(count: parameter.count)) }
            let tensor = try self.tensor(name)
            parameter.copyValues(from: tensor.shape == parameter.shape ? tensor : tensor.reshaped(parameter.shape))
        case let sixteenBit:
            parameter.requiresGrad = false
            if let mapped = try mappedStorage(name, dataType: sixteenBit) {
                parameter.replaceStorage(with: mapped)
            } else {
                parameter.replaceStorage(with: try self.tensor(name, as: sixteenBit).storage)
            }
        }
    }
}

extension Module {
    /// Holds every parameter in `precision` from now on (``WeightPrecision/asStored`` keeps
    /// them as they are). 16-bit parameters are frozen.
    public func convertParameters(to precision: WeightPrecision) {
        for parameter in parameters() {
            let target = precision.held(stored: parameter.dataType)
            guard target != parameter.dataType else { continue }
            if target != .float32 { parameter.requiresGrad = false }
            parameter.convertStorage(to: target)
        }
    }

    /// Bytes the parameters occupy (16-bit ones at 2 bytes each, mapped or not).
    public var parameterBytes: Int { parameters().reduce(0) { $0 + $1.count * $1.dataType.byteSize } }
}
