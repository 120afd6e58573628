/// GPT-2's reversible map between bytes and printable characters (`bytes_to_unicode()` in
/// openai/CLIP and transformers), which lets a BPE vocabulary of strings cover every byte
/// sequence: text in any script is UTF-8 encoded and each byte becomes one character.
///
/// The printable bytes `!`…`~`, `¡`…`¬` and `®`…`ÿ` stand for themselves; the other 68 bytes
/// (controls, space, DEL, NBSP, soft hyphen) map in byte order to U+0100, U+0101, ….
public enum ByteLevelEncoding {
    /// The bytes in `bytes_to_unicode()` order: the 188 printable ones first, then the rest.
    /// A CLIP vocabulary built from the merges file starts with these characters in this order.
    public static let byteOrder: [UInt8] = {
        var printable = Array(UInt8(ascii: "!")...UInt8(ascii: "~")) + Array(UInt8(0xA1)...UInt8(0xAC)) + Array(UInt8(0xAE)...UInt8(0xFF))
        let printableSet = Set(printable)
        for byte in UInt8(0)...UInt8(255) where !printableSet.contains(byte) { printable.append(byte) }
        return printable
    }()

    /// The character standing for each byte, indexed by the byte.
    public static let scalarForByte: [Unicode.Scalar] = {
        var scalars = [Unicode.Scalar](repeating: "\0", count: 256)
        var next: UInt32 = 256
        for byte in 0...255 {
            let printable = (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte) || (0xAE...0xFF).contains(byte)
            if printable {
                scalars[byte] = Unicode.Scalar(UInt8(byte))
            } else {
                scalars[byte] = Unicode.Scalar(next)!
                next += 1
            }
        }
        return scalars
    }()

    /// The byte a character stands for, or nil when the character is not one of the 256.
    public static func byte(for scalar: Unicode.Scalar) -> UInt8? {
        let value = scalar.value
        if (0x21...0x7E).contains(value) || (0xA1...0xAC).contains(value) || (0xAE...0xFF).contains(value) {
            return UInt8(value)
        }
        if value >= 256 && value < 256 + 68 { return nonPrintableBytes[Int(value - 256)] }
        return nil
    }

    /// The string of characters standing for `bytes`.
    public static func encode<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        var text = String.UnicodeScalarView()
        for byte in bytes { text.append(scalarForByte[Int(byte)]) }
        return String(text)
    }

    /// The bytes a byte-level string stands for; characters outside the map are kept as
    /// their own UTF-8 (so that special tokens such as `<|endoftext|>`, all printable, and
    /// any stray text decode to themselves).
    public static func decode(_ text: String) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            if let byte = byte(for: scalar) { bytes.append(byte) } else { bytes.append(contentsOf: Array(String(scalar).utf8)) }
        }
        return bytes
    }

    /// The 68 bytes that do not stand for themselves, in byte order (U+0100 + i stands for the i-th).
    private static let nonPrintableBytes: [UInt8] = (0...255).compactMap { byte in
        let printable = (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte) || (0xAE...0xFF).contains(byte)
        return printable ? nil : UInt8(byte)
    }
}
