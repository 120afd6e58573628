import Diffusion
import XCTest

final class LoggingMinimalPNGTests: XCTestCase {
    /// The bitwise CRC-32 PNG uses (ISO 3309), independent of zlib's.
    private func crc32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
        }
        return ~crc
    }

    private func bigEndian(_ bytes: ArraySlice<UInt8>) -> Int {
        bytes.reduce(0) { $0 << 8 | Int($1) }
    }

    /// The chunks of a PNG file, with every CRC checked.
    private func chunks(_ png: [UInt8]) -> [(String, [UInt8])] {
        XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        var result: [(String, [UInt8])] = []
        var offset = 8
        while offset + 12 <= png.count {
            let length = bigEndian(png[offset..<(offset + 4)])
            let typeAndData = png[(offset + 4)..<(offset + 8 + length)]
            XCTAssertEqual(UInt32(bigEndian(png[(offset + 8 + length)..<(offset + 12 + length)])), crc32(typeAndData))
            result.append((String(decoding: typeAndData.prefix(4), as: UTF8.self), Array(typeAndData.dropFirst(4))))
            offset += 12 + length
        }
        XCTAssertEqual(offset, png.count)
        return result
    }

    func testStoredPNGHasTheRowsVerbatim() throws {
        let pixels: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
        let png = try MinimalPNG.encode(pixels: pixels, width: 2, height: 2, channels: 3, compressionLevel: 0)
        let parts = chunks(png)
        XCTAssertEqual(parts.map(\.0), ["IHDR", "IDAT", "IEND"])
        XCTAssertEqual(parts[0].1, [0, 0, 0, 2, 0, 0, 0, 2, 8, 2, 0, 0, 0])
        // zlib header, one final stored block (length 14 and its complement), rows with filter 0, Adler-32.
        let idat = parts[1].1
        XCTAssertEqual(Array(idat.prefix(2)), [0x78, 0x01])
        XCTAssertEqual(Array(idat[2..<7]), [0x01, 14, 0, 0xF1, 0xFF])
        XCTAssertEqual(Array(idat[7..<21]), [0, 1, 2, 3, 4, 5, 6, 0, 7, 8, 9, 10, 11, 12])
        XCTAssertEqual(idat.count, 25)
    }

    func testColorTypesAndErrors() throws {
        for (channels, colorType) in [(1, 0), (2, 4), (3, 2), (4, 6)] {
            let png = try MinimalPNG.encode(pixels: [UInt8](repeating: 9, count: 3 * 5 * channels),
                                            width: 3, height: 5, channels: channels)
            XCTAssertEqual(chunks(png)[0].1[9], UInt8(colorType))
        }
        XCTAssertThrowsError(try MinimalPNG.encode(pixels: [1, 2, 3], width: 2, height: 2, channels: 1))
        XCTAssertThrowsError(try MinimalPNG.encode(pixels: [], width: 0, height: 0, channels: 1))
        XCTAssertThrowsError(try MinimalPNG.encode(pixels: [1], width: 1, height: 1, channels: 5))
    }
}
