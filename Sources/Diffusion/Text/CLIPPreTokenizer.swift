/// CLIP's pre-tokenizer: the words that
/// `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
/// finds (`regex.findall` with `IGNORECASE`), as a hand-written scanner over UTF-8.
///
/// At each position the first alternative that matches wins, as in the regular expression:
/// the two special-token literals and the contractions (case-insensitively: `S` and `ſ`
/// U+017F match `s`, as in the `regex` module), a run of letters (`L*`), a single number
/// character (`N*`), or a run of anything that is neither whitespace (`regex`'s `\s`), a letter
/// nor a number. Whitespace is skipped, and so is U+0345 COMBINING GREEK YPOGEGRAMMENI,
/// which no alternative matches under `IGNORECASE` (it folds to the letter ι).
enum CLIPPreTokenizer {
    /// What a character is to the pattern.
    enum CharacterClass: UInt8 {
        case letter, number, whitespace, other, unmatched
    }

    /// The class of each ASCII byte.
    private static let asciiClasses: [CharacterClass] = (0..<128).map { byte -> CharacterClass in
        switch byte {
        case 0x41...0x5A, 0x61...0x7A: return .letter
        case 0x30...0x39: return .number
        case 0x09...0x0D, 0x20: return .whitespace
        default: return .other
        }
    }

    @inline(__always) static func characterClass(_ value: UInt32) -> CharacterClass {
        if value < 0x80 { return asciiClasses[Int(value)] }
        guard let scalar = Unicode.Scalar(value) else { return .other }
        if PythonUnicode.isRegexSpace(scalar) { return .whitespace }
        if value == 0x345 { return .unmatched }
        switch scalar.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }

    /// Decodes the scalar at `index` of valid UTF-8, returning its value and length.
    @inline(__always) static func decode(_ bytes: UnsafeBufferPointer<UInt8>, _ index: Int) -> (UInt32, Int) {
        let lead = UInt32(bytes[index])
        if lead < 0x80 { return (lead, 1) }
        if lead < 0xE0 { return ((lead & 0x1F) << 6 | UInt32(bytes[index + 1] & 0x3F), 2) }
        if lead < 0xF0 {
            return ((lead & 0x0F) << 12 | UInt32(bytes[index + 1] & 0x3F) << 6 | UInt32(bytes[index + 2] & 0x3F), 3)
        }
        return ((lead & 0x07) << 18 | UInt32(bytes[index + 1] & 0x3F) << 12 | UInt32(bytes[index + 2] & 0x3F) << 6
                | UInt32(bytes[index + 3] & 0x3F), 4)
    }

    /// The scalar at `index` folded for the case-insensitive literals: ASCII upper case to
    /// lower, `ſ` to `s`; with its length, or nil at the end.
    @inline(__always) private static func folded(_ bytes: UnsafeBufferPointer<UInt8>, _ index: Int) -> (UInt8, Int)? {
        guard index < bytes.count else { return nil }
        let (value, length) = decode(bytes, index)
        if value >= 0x41 && value <= 0x5A { return (UInt8(value + 32), 1) }
        if value < 0x80 { return (UInt8(value), 1) }
        if value == 0x17F { return (UInt8(ascii: "s"), length) }
        return (0, length)
    }

    /// The end of `literal` (lower-case ASCII) matched case-insensitively at `start`, or nil.
    private static func match(_ literal: StaticString, _ bytes: UnsafeBufferPointer<UInt8>, at start: Int) -> Int? {
        var index = start
        for offset in 0..<literal.utf8CodeUnitCount {
            guard let (byte, length) = folded(bytes, index), byte == literal.utf8Start[offset] else { return nil }
            index += length
        }
        return index
    }

    /// The end of a contraction (`'s 't 're 've 'm 'll 'd`) at `start` (an apostrophe), or nil.
    private static func contractionEnd(_ bytes: UnsafeBufferPointer<UInt8>, at start: Int) -> Int? {
        guard let (first, firstLength) = folded(bytes, start + 1) else { return nil }
        let afterFirst = start + 1 + firstLength
        switch first {
        case UInt8(ascii: "s"), UInt8(ascii: "t"), UInt8(ascii: "m"), UInt8(ascii: "d"):
            return afterFirst
        case UInt8(ascii: "r"), UInt8(ascii: "v"), UInt8(ascii: "l"):
            let expected = first == UInt8(ascii: "l") ? UInt8(ascii: "l") : UInt8(ascii: "e")
            guard let (second, secondLength) = folded(bytes, afterFirst), second == expected else { return nil }
            return afterFirst + secondLength
        default:
            return nil
        }
    }

    /// Calls `body` with the byte range of each word of `bytes` (valid UTF-8), in order.
    @inline(__always)
    static func forEachWord(in bytes: UnsafeBufferPointer<UInt8>, _ body: (Range<Int>) -> Void) {
        var index = 0
        let count = bytes.count
        while index < count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "<") {
                if let end = match("<|startoftext|>", bytes, at: index) ?? match("<|endoftext|>", bytes, at: index) {
                    body(index..<end)
                    index = end
                    continue
                }
            } else if byte == UInt8(ascii: "'") {
                if let end = contractionEnd(bytes, at: index) {
                    body(index..<end)
                    index = end
                    continue
                }
            }
            let (value, length) = decode(bytes, index)
            let kind = characterClass(value)
            switch kind {
            case .whitespace, .unmatched:
                index += length
            case .number:
                body(index..<(index + length))
                index += length
            case .letter, .other:
                let start = index
                index += length
                while index < count {
                    let next = bytes[index]
                    if next < 0x80 {
                        if asciiClasses[Int(next)] != kind { break }
                        index += 1
                    } else {
                        let (nextValue, nextLength) = decode(bytes, index)
                        if characterClass(nextValue) != kind { break }
                        index += nextLength
                    }
                }
                body(start..<index)
            }
        }
    }
}
