import CZlib

/// A deliberately minimal PNG encoder (8-bit, unfiltered rows, zlib through
/// CZlib) for tests and as a fallback when no full PNG codec is at hand.
///
/// It writes valid PNG files that every reader accepts, but makes no attempt
/// at good compression; use the project's full PNG codec for real output.
public enum MinimalPNG {
    /// An error from ``encode(pixels:width:height:channels:compressionLevel:)``.
    public enum EncodingError: Error, Equatable {
        /// The pixel count does not match `width × height × channels`, or a size is invalid.
        case invalidSize(String)
        /// zlib's `compress2` failed with this status.
        case compressionFailed(Int32)
    }

    /// Encodes 8-bit interleaved pixels as a PNG file.
    ///
    /// - Parameters:
    ///   - pixels: Row-major bytes, `channels` per pixel (top row first).
    ///   - channels: 1 gray, 2 gray + alpha, 3 RGB or 4 RGBA.
    ///   - compressionLevel: zlib level 0–9. Level 0 stores the rows
    ///     uncompressed, which makes the bytes independent of the zlib version.
    /// - Returns: The complete PNG file.
    public static func encode(pixels: [UInt8], width: Int, height: Int, channels: Int,
                              compressionLevel: Int32 = 6) throws -> [UInt8] {
        let colorTypes: [Int: UInt8] = [1: 0, 2: 4, 3: 2, 4: 6]
        guard let colorType = colorTypes[channels] else { throw EncodingError.invalidSize("\(channels) channels") }
        guard width > 0, height > 0, width < 1 << 31, height < 1 << 31 else {
            throw EncodingError.invalidSize("\(width)×\(height)")
        }
        let rowBytes = width * channels
        guard pixels.count == rowBytes * height else {
            throw EncodingError.invalidSize("\(pixels.count) bytes for \(width)×\(height)×\(channels)")
        }
        var raw: [UInt8] = []
        raw.reserveCapacity((rowBytes + 1) * height)
        for row in 0..<height {
            raw.append(0)  // filter type None
            raw.append(contentsOf: pixels[(row * rowBytes)..<((row + 1) * rowBytes)])
        }
        var header = bigEndian(UInt32(width)) + bigEndian(UInt32(height))
        header += [8, colorType, 0, 0, 0]  // bit depth, colour type, compression, filter, interlace
        var file: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        file += chunk("IHDR", header)
        file += chunk("IDAT", try deflate(raw, level: compressionLevel))
        file += chunk("IEND", [])
        return file
    }

    /// `data` compressed as a zlib stream.
    static func deflate(_ data: [UInt8], level: Int32) throws -> [UInt8] {
        var capacity = compressBound(uLong(data.count))
        var output = [UInt8](repeating: 0, count: Int(capacity))
        let status = data.withUnsafeBufferPointer { input in
            output.withUnsafeMutableBufferPointer { output in
                compress2(output.baseAddress, &capacity, input.baseAddress, uLong(input.count), level)
            }
        }
        guard status == Z_OK else { throw EncodingError.compressionFailed(status) }
        return Array(output.prefix(Int(capacity)))
    }

    /// One PNG chunk: length, type, data and the CRC-32 of type and data.
    static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let typeAndData = Array(type.utf8) + data
        let crc = typeAndData.withUnsafeBufferPointer { crc32(0, $0.baseAddress, uInt($0.count)) }
        return bigEndian(UInt32(data.count)) + typeAndData + bigEndian(UInt32(crc))
    }

    private static func bigEndian(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
    }
}
