/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum that
/// TFRecord files use for their length and data fields.
///
/// Computed a byte at a time from a 256-entry table; fast enough for log
/// records, which are at most a few hundred kilobytes.
public enum CRC32C {
    /// The reflected Castagnoli polynomial.
    public static let polynomial: UInt32 = 0x82F6_3B78

    /// The 256-entry lookup table for ``polynomial``.
    static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 {
            value = (value & 1) != 0 ? (value >> 1) ^ polynomial : value >> 1
        }
        return value
    }

    /// The CRC-32C of `bytes`, continuing from `crc` (the checksum of the
    /// bytes before them; 0 to start).
    public static func checksum<Bytes: Sequence>(_ bytes: Bytes, continuing crc: UInt32 = 0) -> UInt32
    where Bytes.Element == UInt8 {
        var value = ~crc
        table.withUnsafeBufferPointer { table in
            for byte in bytes {
                value = table[Int((value ^ UInt32(byte)) & 0xFF)] ^ (value >> 8)
            }
        }
        return ~value
    }

    /// The CRC-32C of `bytes` masked as TFRecord stores it:
    /// `((crc >> 15) | (crc << 17)) &+ 0xA282EAD8`.
    public static func maskedChecksum<Bytes: Sequence>(_ bytes: Bytes) -> UInt32 where Bytes.Element == UInt8 {
        mask(checksum(bytes))
    }

    /// Masks a CRC as TFRecord does, so that a CRC of data that itself
    /// contains CRCs is not degenerate.
    public static func mask(_ crc: UInt32) -> UInt32 {
        ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }

    /// Undoes ``mask(_:)``.
    public static func unmask(_ masked: UInt32) -> UInt32 {
        let rotated = masked &- 0xA282_EAD8
        return (rotated >> 17) | (rotated << 15)
    }
}
