import Diffusion
import XCTest

/// CRC-32C and TFRecord framing, checked against values computed by the Python
/// `tensorboard` package (`pywrap_tensorflow.crc32c`, `RecordWriter`).
final class LoggingCRC32CTests: XCTestCase {
    func testKnownVectors() {
        // RFC 3720 (iSCSI) appendix B.4 vectors and the common check value.
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8]()), 0)
        XCTAssertEqual(CRC32C.checksum(Array("a".utf8)), 0xC1D0_4330)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        XCTAssertEqual(CRC32C.checksum((0..<32).map { UInt8($0) }), 0x46DD_794E)
        XCTAssertEqual(CRC32C.checksum((0..<32).reversed().map { UInt8($0) }), 0x113F_DB5C)
    }

    func testContinuationEqualsOneShot() {
        let bytes = Array("The quick brown fox jumps over the lazy dog".utf8)
        let first = CRC32C.checksum(bytes[..<17])
        XCTAssertEqual(CRC32C.checksum(bytes[17...], continuing: first), CRC32C.checksum(bytes))
    }

    func testMask() {
        XCTAssertEqual(CRC32C.maskedChecksum(Array("123456789".utf8)), 0xC78A_B0E5)
        XCTAssertEqual(CRC32C.maskedChecksum([UInt8]()), 0xA282_EAD8)
        XCTAssertEqual(CRC32C.maskedChecksum([UInt8](repeating: 0xFF, count: 32)), 0xF909_B029)
        for crc: UInt32 in [0, 1, 0xE306_9283, 0xFFFF_FFFF, 0x8000_0000] {
            XCTAssertEqual(CRC32C.unmask(CRC32C.mask(crc)), crc)
        }
    }

    /// `RecordWriter(buffer).write(Event(wall_time=1700000000.0, file_version="brain.Event:2").SerializeToString())`.
    static let fileVersionRecord: [UInt8] = [
        0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xA3, 0x7F, 0x4B, 0x22, 0x09, 0x00, 0x00, 0x00,
        0x40, 0xFC, 0x54, 0xD9, 0x41, 0x1A, 0x0D, 0x62, 0x72, 0x61, 0x69, 0x6E, 0x2E, 0x45, 0x76, 0x65,
        0x6E, 0x74, 0x3A, 0x32, 0xEC, 0xED, 0x8F, 0x9D,
    ]

    func testFramingMatchesTensorBoardsRecordWriter() throws {
        let data = Array(Self.fileVersionRecord[12..<(Self.fileVersionRecord.count - 4)])
        XCTAssertEqual(TFRecord.frame(data), Self.fileVersionRecord)
        XCTAssertEqual(try TFRecord.records(in: Self.fileVersionRecord), [data])
        XCTAssertEqual(try TFRecord.records(in: Self.fileVersionRecord + TFRecord.frame([]) + TFRecord.frame([7])),
                       [data, [], [7]])
    }

    func testParsingRejectsCorruption() {
        let record = Self.fileVersionRecord
        var badLength = record
        badLength[0] ^= 1
        XCTAssertThrowsError(try TFRecord.records(in: badLength)) {
            XCTAssertEqual($0 as? TFRecord.ParseError, .lengthChecksumMismatch(offset: 0))
        }
        var badData = record
        badData[20] ^= 0x40
        XCTAssertThrowsError(try TFRecord.records(in: record + badData)) {
            XCTAssertEqual($0 as? TFRecord.ParseError, .dataChecksumMismatch(offset: record.count))
        }
        for cut in [1, 11, 12, 20, record.count - 1] {
            XCTAssertThrowsError(try TFRecord.records(in: Array(record.prefix(cut)))) {
                XCTAssertEqual($0 as? TFRecord.ParseError, .truncated(offset: 0), "cut at \(cut)")
            }
        }
    }
}
