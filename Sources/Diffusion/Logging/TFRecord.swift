/// The TFRecord container format that TensorBoard event files use.
///
/// Each record is framed as
///
///     uint64 length (little-endian)
///     uint32 masked CRC-32C of the 8 length bytes
///     byte   data[length]
///     uint32 masked CRC-32C of the data
public enum TFRecord {
    /// An error found while parsing TFRecord bytes.
    public enum ParseError: Error, Equatable, CustomStringConvertible {
        /// The bytes end inside the record that starts at `offset`.
        case truncated(offset: Int)
        /// The length field's checksum at `offset` does not match.
        case lengthChecksumMismatch(offset: Int)
        /// The data checksum of the record at `offset` does not match.
        case dataChecksumMismatch(offset: Int)

        public var description: String {
            switch self {
            case .truncated(let offset): return "TFRecord truncated in the record at byte \(offset)"
            case .lengthChecksumMismatch(let offset): return "TFRecord length checksum mismatch at byte \(offset)"
            case .dataChecksumMismatch(let offset): return "TFRecord data checksum mismatch in the record at byte \(offset)"
            }
        }
    }

    /// The framed bytes of one record holding `data`.
    public static func frame(_ data: [UInt8]) -> [UInt8] {
        var record: [UInt8] = []
        record.reserveCapacity(data.count + 16)
        let length = littleEndianBytes(UInt64(data.count))
        record.append(contentsOf: length)
        record.append(contentsOf: littleEndianBytes(CRC32C.maskedChecksum(length)))
        record.append(contentsOf: data)
        record.append(contentsOf: littleEndianBytes(CRC32C.maskedChecksum(data)))
        return record
    }

    /// The data of every record in `bytes`, with both checksums of each verified.
    public static func records(in bytes: [UInt8]) throws -> [[UInt8]] {
        var records: [[UInt8]] = []
        var offset = 0
        while offset < bytes.count {
            guard bytes.count - offset >= 12 else { throw ParseError.truncated(offset: offset) }
            let lengthBytes = bytes[offset..<(offset + 8)]
            guard readUInt32(bytes, at: offset + 8) == CRC32C.maskedChecksum(lengthBytes) else {
                throw ParseError.lengthChecksumMismatch(offset: offset)
            }
            let length = lengthBytes.reversed().reduce(UInt64(0)) { ($0 << 8) | UInt64($1) }
            let dataStart = offset + 12
            guard length <= UInt64(bytes.count - dataStart), bytes.count - dataStart - Int(length) >= 4 else {
                throw ParseError.truncated(offset: offset)
            }
            let dataEnd = dataStart + Int(length)
            let data = Array(bytes[dataStart..<dataEnd])
            guard readUInt32(bytes, at: dataEnd) == CRC32C.maskedChecksum(data) else {
                throw ParseError.dataChecksumMismatch(offset: offset)
            }
            records.append(data)
            offset = dataEnd + 4
        }
        return records
    }

    static func littleEndianBytes<Integer: FixedWidthInteger>(_ value: Integer) -> [UInt8] {
        (0..<(Integer.bitWidth / 8)).map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) }
    }

    private static func readUInt32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | (UInt32(bytes[offset + $1]) << ($1 * 8)) }
    }
}
