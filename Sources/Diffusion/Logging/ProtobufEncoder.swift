/// A minimal protocol-buffers wire-format encoder: just the field kinds that
/// TensorBoard's `Event` and `Summary` messages need.
///
/// Fields follow proto3 rules: a scalar equal to its default (0, empty) is
/// not written unless it belongs to a `oneof`, exactly as the reference
/// implementation serialises it.
struct ProtobufEncoder {
    /// Wire types of the protocol-buffers encoding.
    enum WireType: UInt8 {
        case varint = 0
        case fixed64 = 1
        case lengthDelimited = 2
        case fixed32 = 5
    }

    private(set) var bytes: [UInt8] = []

    mutating func appendVarint(_ value: UInt64) {
        var remaining = value
        while remaining >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: remaining) | 0x80)
            remaining >>= 7
        }
        bytes.append(UInt8(remaining))
    }

    mutating func appendKey(field: Int, wireType: WireType) {
        appendVarint(UInt64(field) << 3 | UInt64(wireType.rawValue))
    }

    /// A `double` field (wire type fixed64).
    mutating func appendDouble(field: Int, _ value: Double) {
        guard value.bitPattern != 0 else { return }
        appendKey(field: field, wireType: .fixed64)
        bytes.append(contentsOf: TFRecord.littleEndianBytes(value.bitPattern))
    }

    /// A `float` field (wire type fixed32); a member of a `oneof` is written even when zero.
    mutating func appendFloat(field: Int, _ value: Float, evenIfZero: Bool = false) {
        guard evenIfZero || value.bitPattern != 0 else { return }
        appendKey(field: field, wireType: .fixed32)
        bytes.append(contentsOf: TFRecord.littleEndianBytes(value.bitPattern))
    }

    /// An `int32` or `int64` field (wire type varint; negative values take ten bytes).
    mutating func appendInteger(field: Int, _ value: Int64) {
        guard value != 0 else { return }
        appendKey(field: field, wireType: .varint)
        appendVarint(UInt64(bitPattern: value))
    }

    /// A `bytes` field, or an embedded message written even when empty.
    mutating func appendBytes(field: Int, _ value: [UInt8], evenIfEmpty: Bool = false) {
        guard evenIfEmpty || !value.isEmpty else { return }
        appendKey(field: field, wireType: .lengthDelimited)
        appendVarint(UInt64(value.count))
        bytes.append(contentsOf: value)
    }

    /// A `string` field, UTF-8 encoded.
    mutating func appendString(field: Int, _ value: String, evenIfEmpty: Bool = false) {
        appendBytes(field: field, Array(value.utf8), evenIfEmpty: evenIfEmpty)
    }
}
