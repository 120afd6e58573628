import Foundation

/// Why a safetensors file, a sharded index or a write was rejected. Every case
/// names the file and, where there is one, the tensor and the byte offsets.
public enum SafetensorsError: Error, CustomStringConvertible, Equatable {
    /// The file could not be opened, read or mapped.
    case cannotOpen(path: String, reason: String)
    /// A PyTorch pickle checkpoint (`.bin`, `.pt`, `.pth`, `.ckpt`), which is not loaded.
    case pickleCheckpoint(path: String)
    /// The file is shorter than the 8-byte header-length field.
    case truncated(path: String, fileSize: Int)
    /// The header-length field exceeds the 100 MB limit.
    case headerTooLarge(path: String, headerLength: UInt64, limit: Int)
    /// The header-length field exceeds the bytes after it.
    case headerExceedsFile(path: String, headerLength: UInt64, available: Int)
    /// The header is not a UTF-8 JSON object; `offset` is the byte offset in the file.
    case invalidHeader(path: String, offset: Int, reason: String)
    /// A tensor entry's `dtype` is not a safetensors type.
    case unknownDataType(path: String, tensor: String, dataType: String)
    /// A tensor entry is malformed (missing, mistyped or unknown field).
    case invalidTensorEntry(path: String, tensor: String, reason: String)
    /// `__metadata__` is not an object of strings.
    case invalidMetadata(path: String, key: String?, reason: String)
    /// The same name appears twice in a header (or in two shards).
    case duplicateName(path: String, name: String)
    /// The byte count `shape × element size` differs from `data_offsets`.
    case shapeMismatch(path: String, tensor: String, dataType: String, shape: [Int], expectedBytes: Int, offsets: Range<Int>)
    /// `shape × element size` overflows.
    case shapeOverflow(path: String, tensor: String, shape: [Int])
    /// `data_offsets` fall outside the data buffer or end before they begin.
    case offsetsOutOfBounds(path: String, tensor: String, begin: Int, end: Int, dataSize: Int)
    /// Two tensors share bytes.
    case overlappingTensors(path: String, tensor: String, offsets: Range<Int>, other: String, otherOffsets: Range<Int>)
    /// Bytes between two tensors (or before the first) belong to no tensor.
    case gapInData(path: String, tensor: String, begin: Int, expected: Int)
    /// The tensors end before the data buffer does.
    case trailingData(path: String, covered: Int, dataSize: Int)
    /// No tensor of this name.
    case tensorNotFound(path: String, name: String)
    /// A `*.safetensors.index.json` is malformed or disagrees with its shards.
    case invalidIndex(path: String, reason: String)
    /// A tensor cannot be written as asked.
    case invalidTensorForWriting(name: String, reason: String)
    /// Writing failed; nothing was left at the destination.
    case writeFailed(path: String, reason: String)

    /// `model.ckpt` → `model.safetensors`; `pytorch_model.bin` → `model.safetensors`, as transformers names it.
    static func convertedName(_ path: String) -> String {
        let url = URL(fileURLWithPath: path)
        var stem = url.deletingPathExtension().lastPathComponent
        if stem == "pytorch_model" { stem = "model" }
        return url.deletingLastPathComponent().appendingPathComponent(stem + ".safetensors").path
    }

    public var description: String {
        switch self {
        case let .cannotOpen(path, reason):
            return "\(path): cannot open: \(reason)"
        case let .pickleCheckpoint(path):
            return "\(path): this is a PyTorch pickle checkpoint (.bin/.pt/.pth/.ckpt), which diffuse does not load "
                + "(unpickling can run arbitrary code). Convert it to safetensors first, e.g. in Python: "
                + "`from safetensors.torch import save_file; import torch; "
                + "sd = torch.load(\(JSONWriter.quoted(path)), map_location=\"cpu\", weights_only=True); sd = sd.get(\"state_dict\", sd); "
                + "save_file({k: v.contiguous() for k, v in sd.items()}, \(JSONWriter.quoted(Self.convertedName(path))))`"
        case let .truncated(path, fileSize):
            return "\(path): truncated: the file is \(fileSize) bytes, shorter than the 8-byte header length"
        case let .headerTooLarge(path, headerLength, limit):
            return "\(path): header length \(headerLength) bytes exceeds the \(limit)-byte limit"
        case let .headerExceedsFile(path, headerLength, available):
            return "\(path): header length \(headerLength) bytes is larger than the \(available) bytes after the length field (truncated file?)"
        case let .invalidHeader(path, offset, reason):
            return "\(path): invalid header at byte \(offset): \(reason)"
        case let .unknownDataType(path, tensor, dataType):
            let known = SafetensorsDataType.allCases.map(\.rawValue).joined(separator: ", ")
            return "\(path): tensor \"\(tensor)\" has unknown dtype \"\(dataType)\" (known: \(known))"
        case let .invalidTensorEntry(path, tensor, reason):
            return "\(path): tensor \"\(tensor)\": \(reason)"
        case let .invalidMetadata(path, key, reason):
            return "\(path): __metadata__\(key.map { "[\"\($0)\"]" } ?? ""): \(reason)"
        case let .duplicateName(path, name):
            return "\(path): tensor name \"\(name)\" appears more than once"
        case let .shapeMismatch(path, tensor, dataType, shape, expectedBytes, offsets):
            return "\(path): tensor \"\(tensor)\" (\(dataType), shape \(shape)) needs \(expectedBytes) bytes but data_offsets [\(offsets.lowerBound), \(offsets.upperBound)] hold \(offsets.count)"
        case let .shapeOverflow(path, tensor, shape):
            return "\(path): tensor \"\(tensor)\": shape \(shape) overflows the byte count"
        case let .offsetsOutOfBounds(path, tensor, begin, end, dataSize):
            return "\(path): tensor \"\(tensor)\": data_offsets [\(begin), \(end)] fall outside the \(dataSize)-byte data buffer"
        case let .overlappingTensors(path, tensor, offsets, other, otherOffsets):
            return "\(path): tensor \"\(tensor)\" at [\(offsets.lowerBound), \(offsets.upperBound)] overlaps tensor \"\(other)\" at [\(otherOffsets.lowerBound), \(otherOffsets.upperBound)]"
        case let .gapInData(path, tensor, begin, expected):
            return "\(path): tensor \"\(tensor)\" starts at byte \(begin) of the data buffer, leaving bytes [\(expected), \(begin)] unused (tensors must fill the buffer without gaps)"
        case let .trailingData(path, covered, dataSize):
            return "\(path): the tensors cover \(covered) bytes but the data buffer has \(dataSize); bytes [\(covered), \(dataSize)] belong to no tensor"
        case let .tensorNotFound(path, name):
            return "\(path): no tensor named \"\(name)\""
        case let .invalidIndex(path, reason):
            return "\(path): invalid sharded-checkpoint index: \(reason)"
        case let .invalidTensorForWriting(name, reason):
            return "cannot write tensor \"\(name)\": \(reason)"
        case let .writeFailed(path, reason):
            return "\(path): write failed: \(reason)"
        }
    }
}
