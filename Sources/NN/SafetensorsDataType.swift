import Foundation
import Tensors

/// The element types of the safetensors format, named as in the file header.
///
/// The cases are declared in the format's alignment order (Rust's `Dtype`
/// enum), which is also the order the writer uses: tensors of a later case come
/// first in the data buffer.
public enum SafetensorsDataType: String, CaseIterable, Sendable, Comparable {
    case bool = "BOOL"
    case uint8 = "U8"
    case int8 = "I8"
    case float8E5M2 = "F8_E5M2"
    case float8E4M3 = "F8_E4M3"
    case int16 = "I16"
    case uint16 = "U16"
    case float16 = "F16"
    case bfloat16 = "BF16"
    case int32 = "I32"
    case uint32 = "U32"
    case float32 = "F32"
    case float64 = "F64"
    case int64 = "I64"
    case uint64 = "U64"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .bool, .uint8, .int8, .float8E5M2, .float8E4M3: return 1
        case .int16, .uint16, .float16, .bfloat16: return 2
        case .int32, .uint32, .float32: return 4
        case .float64, .int64, .uint64: return 8
        }
    }

    /// Position in the format's alignment order.
    var alignmentRank: Int { SafetensorsDataType.allCases.firstIndex(of: self) ?? 0 }

    public static func < (lhs: SafetensorsDataType, rhs: SafetensorsDataType) -> Bool {
        lhs.alignmentRank < rhs.alignmentRank
    }

    /// The engine storage type holding this type without loss, if any
    /// (`F32`, `F16`, `BF16`); other types are converted to `float32` on load.
    public var engineDataType: DataType? {
        switch self {
        case .float32: return .float32
        case .float16: return .float16
        case .bfloat16: return .bfloat16
        default: return nil
        }
    }

    /// The safetensors type that stores an engine tensor.
    public init(_ dataType: DataType) {
        switch dataType {
        case .float32: self = .float32
        case .float16: self = .float16
        case .bfloat16: self = .bfloat16
        }
    }

    /// Decodes `count` little-endian elements at `source` (any alignment) into floats.
    func decode(_ source: UnsafeRawPointer, count: Int, into destination: UnsafeMutablePointer<Float>) {
        switch self {
        case .bool:
            for index in 0..<count { destination[index] = source.load(fromByteOffset: index, as: UInt8.self) != 0 ? 1 : 0 }
        case .uint8:
            for index in 0..<count { destination[index] = Float(source.load(fromByteOffset: index, as: UInt8.self)) }
        case .int8:
            for index in 0..<count { destination[index] = Float(source.load(fromByteOffset: index, as: Int8.self)) }
        case .float8E5M2:
            for index in 0..<count {
                let bits = UInt16(source.load(fromByteOffset: index, as: UInt8.self)) << 8
                destination[index] = HalfPrecision.float(fromFloat16: bits)
            }
        case .float8E4M3:
            for index in 0..<count { destination[index] = Self.float(fromFloat8E4M3: source.load(fromByteOffset: index, as: UInt8.self)) }
        case .int16:
            for index in 0..<count { destination[index] = Float(Int16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * index, as: Int16.self))) }
        case .uint16:
            for index in 0..<count { destination[index] = Float(UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * index, as: UInt16.self))) }
        case .float16, .bfloat16:
            let isBFloat = self == .bfloat16
            for index in 0..<count {
                let bits = UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * index, as: UInt16.self))
                destination[index] = isBFloat ? HalfPrecision.float(fromBFloat16: bits) : HalfPrecision.float(fromFloat16: bits)
            }
        case .int32:
            for index in 0..<count { destination[index] = Float(Int32(littleEndian: source.loadUnaligned(fromByteOffset: 4 * index, as: Int32.self))) }
        case .uint32:
            for index in 0..<count { destination[index] = Float(UInt32(littleEndian: source.loadUnaligned(fromByteOffset: 4 * index, as: UInt32.self))) }
        case .float32:
            for index in 0..<count {
                destination[index] = Float(bitPattern: UInt32(littleEndian: source.loadUnaligned(fromByteOffset: 4 * index, as: UInt32.self)))
            }
        case .float64:
            for index in 0..<count {
                destination[index] = Float(Double(bitPattern: UInt64(littleEndian: source.loadUnaligned(fromByteOffset: 8 * index, as: UInt64.self))))
            }
        case .int64:
            for index in 0..<count { destination[index] = Float(Int64(littleEndian: source.loadUnaligned(fromByteOffset: 8 * index, as: Int64.self))) }
        case .uint64:
            for index in 0..<count { destination[index] = Float(UInt64(littleEndian: source.loadUnaligned(fromByteOffset: 8 * index, as: UInt64.self))) }
        }
    }

    /// PyTorch's `float8_e4m3fn`: bias 7, no infinities, `S.1111.111` is NaN.
    static func float(fromFloat8E4M3 bits: UInt8) -> Float {
        let sign: Float = bits & 0x80 != 0 ? -1 : 1
        let exponent = Int((bits >> 3) & 0x0F)
        let mantissa = Float(bits & 0x07)
        if exponent == 0x0F && bits & 0x07 == 0x07 { return .nan }
        if exponent == 0 { return sign * mantissa / 8 * Float(sign: .plus, exponent: -6, significand: 1) }
        return sign * (1 + mantissa / 8) * Float(sign: .plus, exponent: exponent - 7, significand: 1)
    }
}

/// What the header says about one tensor.
public struct SafetensorsTensorInfo: Equatable, Sendable {
    /// The tensor's name in the file.
    public let name: String
    /// The element type stored in the file (kept even when loading converts it).
    public let dataType: SafetensorsDataType
    /// The shape (row-major).
    public let shape: [Int]
    /// Byte range within the data buffer (after the header), as in the header.
    public let dataOffsets: Range<Int>

    /// Number of elements.
    public var elementCount: Int { shape.reduce(1, *) }
    /// Number of bytes in the file.
    public var byteCount: Int { dataOffsets.count }
}
