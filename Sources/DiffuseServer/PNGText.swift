/// Writes `tEXt` chunks into PNG files, so a downloaded image carries its parameters
/// (A1111 writes them under the key `parameters`; readers such as `exiftool` and Pillow show them).
enum PNGText {
    /// `png` with a `tEXt` chunk per entry inserted after the header chunk (unchanged when it is not a PNG).
    static func adding(_ entries: [(key: String, value: String)], to png: [UInt8]) -> [UInt8] {
        // Signature (8) + IHDR (4 length + 4 type + 13 data + 4 CRC).
        let headerEnd = 8 + 25
        guard png.count > headerEnd, Array(png[12..<16]) == Array("IHDR".utf8) else { return png }
        var chunks: [UInt8] = []
        for (key, value) in entries {
            let keyword = Array(key.unicodeScalars.filter { $0.value >= 32 && $0.value < 127 }.prefix(79).map { UInt8($0.value) })
            guard !keyword.isEmpty else { continue }
            // tEXt is Latin-1: other characters become '?'.
            let text = value.unicodeScalars.map { $0.value < 256 ? UInt8($0.value) : UInt8(ascii: "?") }
            let data = keyword + [0] + text
            let typed = Array("tEXt".utf8) + data
            chunks += bigEndian(UInt32(data.count)) + typed + bigEndian(crc32(typed))
        }
        return Array(png[..<headerEnd]) + chunks + Array(png[headerEnd...])
    }

    /// The `tEXt` entries of a PNG (for tests and readers).
    static func entries(of png: [UInt8]) -> [String: String] {
        var result: [String: String] = [:]
        var offset = 8
        while offset + 12 <= png.count {
            let length = Int(png[offset]) << 24 | Int(png[offset + 1]) << 16 | Int(png[offset + 2]) << 8 | Int(png[offset + 3])
            guard offset + 12 + length <= png.count else { break }
            let type = String(decoding: png[(offset + 4)..<(offset + 8)], as: UTF8.self)
            if type == "tEXt" {
                let data = Array(png[(offset + 8)..<(offset + 8 + length)])
                if let zero = data.firstIndex(of: 0) {
                    let key = String(decoding: data[..<zero], as: UTF8.self)
                    result[key] = String(data[(zero + 1)...].map { Character(Unicode.Scalar($0)) })
                }
            }
            offset += 12 + length
        }
        return result
    }

    private static func bigEndian(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
    }

    private static let table: [UInt32] = (0..<256).map { index in
        var value = UInt32(index)
        for _ in 0..<8 { value = value & 1 == 1 ? 0xEDB8_8320 ^ (value >> 1) : value >> 1 }
        return value
    }

    /// The CRC-32 of PNG chunks (ISO 3309, as zlib's `crc32`).
    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }
}
