import CZlib
import Foundation

/// PNG text chunks (`tEXt`, `iTXt`; `zTXt` read too): where Stable Diffusion tools keep an image's
/// generation parameters (key `parameters`).
extension PNG {
    /// An error in a text chunk to write.
    public struct TextError: Error, CustomStringConvertible, Equatable {
        public let description: String
    }

    /// One text chunk: `tEXt` (key, NUL, value in Latin-1) when the value is Latin-1, as PNG readers
    /// expect; otherwise `iTXt` (uncompressed, no language tag) with the value in UTF-8, as Pillow and
    /// AUTOMATIC1111's web UI write non-Latin-1 text. The key: 1–79 printable Latin-1 characters.
    public static func textChunk(key: String, value: String) throws -> [UInt8] {
        let keyScalars = key.unicodeScalars
        guard (1...79).contains(keyScalars.count),
              keyScalars.allSatisfy({ (0x20...0x7E).contains($0.value) || (0xA1...0xFF).contains($0.value) }),
              !key.hasPrefix(" "), !key.hasSuffix(" "), !key.contains("  ") else {
            throw TextError(description: "a PNG text key must be 1–79 printable Latin-1 characters without leading, "
                            + "trailing or double spaces: \"\(key)\"")
        }
        let keyBytes = keyScalars.map { UInt8($0.value) }
        if value.unicodeScalars.allSatisfy({ $0.value < 0x100 }) {
            return MinimalPNG.chunk("tEXt", keyBytes + [0] + value.unicodeScalars.map { UInt8($0.value) })
        }
        // keyword, NUL, compression flag 0, method 0, empty language tag + NUL, empty translated keyword + NUL, text.
        return MinimalPNG.chunk("iTXt", keyBytes + [0, 0, 0, 0, 0] + Array(value.utf8))
    }

    /// `png` with text chunks for `text` inserted right after the `IHDR` chunk.
    public static func insertingText(_ text: [(key: String, value: String)], into png: [UInt8]) throws -> [UInt8] {
        guard !text.isEmpty else { return png }
        guard hasSignature(png), png.count >= 33, Array(png[12..<16]) == Array("IHDR".utf8) else {
            throw TextError(description: "not a PNG file with an IHDR chunk first")
        }
        let headerEnd = 8 + 12 + Int(bigEndian(png, at: 8))
        var result = Array(png[..<headerEnd])
        for (key, value) in text { result += try textChunk(key: key, value: value) }
        result += png[headerEnd...]
        return result
    }

    /// The text chunks of a PNG file, in file order: `tEXt` (Latin-1), `iTXt` (UTF-8, compressed or not) and
    /// `zTXt` (compressed Latin-1). Chunks that cannot be read are skipped.
    public static func textChunks(_ png: [UInt8]) -> [(key: String, value: String)] {
        guard hasSignature(png) else { return [] }
        var entries: [(key: String, value: String)] = []
        var offset = 8
        while offset + 12 <= png.count {
            let length = Int(bigEndian(png, at: offset))
            let type = String(decoding: png[(offset + 4)..<(offset + 8)], as: UTF8.self)
            let start = offset + 8
            guard length >= 0, start + length + 4 <= png.count else { break }
            let data = Array(png[start..<(start + length)])
            if let entry = textEntry(type: type, data) { entries.append(entry) }
            if type == "IEND" { break }
            offset = start + length + 4
        }
        return entries
    }

    private static func textEntry(type: String, _ data: [UInt8]) -> (key: String, value: String)? {
        guard ["tEXt", "zTXt", "iTXt"].contains(type), let separator = data.firstIndex(of: 0) else { return nil }
        let key = latin1(data[..<separator])
        let rest = Array(data[(separator + 1)...])
        switch type {
        case "tEXt":
            return (key, latin1(rest[...]))
        case "zTXt":
            guard rest.first == 0, let text = inflate(Array(rest.dropFirst())) else { return nil }
            return (key, latin1(text[...]))
        default:
            // compression flag, method, language tag NUL, translated keyword NUL, text
            guard rest.count >= 2, let languageEnd = rest[2...].firstIndex(of: 0),
                  let translatedEnd = rest[(languageEnd + 1)...].firstIndex(of: 0) else { return nil }
            let body = Array(rest[(translatedEnd + 1)...])
            if rest[0] == 0 { return (key, String(decoding: body, as: UTF8.self)) }
            guard rest[1] == 0, let text = inflate(body) else { return nil }
            return (key, String(decoding: text, as: UTF8.self))
        }
    }

    private static func latin1(_ bytes: ArraySlice<UInt8>) -> String {
        String(String.UnicodeScalarView(bytes.map { Unicode.Scalar($0) }))
    }

    private static func bigEndian(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        (UInt32(bytes[offset]) << 24) | (UInt32(bytes[offset + 1]) << 16) | (UInt32(bytes[offset + 2]) << 8) | UInt32(bytes[offset + 3])
    }

    /// A zlib stream inflated (at most 16 MB), or nil.
    private static func inflate(_ data: [UInt8]) -> [UInt8]? {
        var capacity = Swift.max(data.count * 8, 1024)
        while capacity <= 1 << 24 {
            var output = [UInt8](repeating: 0, count: capacity)
            var size = uLongf(capacity)
            let status = data.withUnsafeBufferPointer { input in
                output.withUnsafeMutableBufferPointer { uncompress($0.baseAddress, &size, input.baseAddress, uLong(input.count)) }
            }
            if status == Z_OK { return Array(output.prefix(Int(size))) }
            guard status == Z_BUF_ERROR else { return nil }
            capacity *= 4
        }
        return nil
    }
}
