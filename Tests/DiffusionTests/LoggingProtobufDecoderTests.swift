import Diffusion
import XCTest

/// A tiny protocol-buffers reader for the tests: enough of the wire format to
/// decode the `Event` records ``TensorBoardWriter`` writes, independently of
/// the encoder.
enum TestEventDecoder {
    enum Field: Equatable {
        case varint(UInt64)
        case fixed64(UInt64)
        case lengthDelimited([UInt8])
        case fixed32(UInt32)
    }

    struct DecodingError: Error, CustomStringConvertible {
        var description: String
    }

    /// Every `(field number, value)` of a message, in order.
    static func fields(_ bytes: [UInt8]) throws -> [(Int, Field)] {
        var offset = 0
        func varint() throws -> UInt64 {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while true {
                guard offset < bytes.count, shift < 64 else { throw DecodingError(description: "bad varint") }
                let byte = bytes[offset]
                offset += 1
                value |= UInt64(byte & 0x7F) << shift
                if byte < 0x80 { return value }
                shift += 7
            }
        }
        func take(_ count: Int) throws -> [UInt8] {
            guard count >= 0, count <= bytes.count - offset else { throw DecodingError(description: "truncated") }
            defer { offset += count }
            return Array(bytes[offset..<(offset + count)])
        }
        func littleEndian(_ bytes: [UInt8]) -> UInt64 {
            bytes.reversed().reduce(0) { $0 << 8 | UInt64($1) }
        }
        var result: [(Int, Field)] = []
        while offset < bytes.count {
            let key = try varint()
            let number = Int(key >> 3)
            switch key & 7 {
            case 0: result.append((number, .varint(try varint())))
            case 1: result.append((number, .fixed64(littleEndian(try take(8)))))
            case 2: result.append((number, .lengthDelimited(try take(Int(try varint())))))
            case 5: result.append((number, .fixed32(UInt32(littleEndian(try take(4))))))
            default: throw DecodingError(description: "wire type \(key & 7)")
            }
        }
        return result
    }

    /// Decodes an `Event` with a file version or a summary of scalars and images.
    static func event(_ bytes: [UInt8]) throws -> TensorBoardEvent {
        var wallTime = 0.0
        var step: Int64 = 0
        var payload: TensorBoardEvent.Payload?
        for (number, field) in try fields(bytes) {
            switch (number, field) {
            case (1, .fixed64(let bits)): wallTime = Double(bitPattern: bits)
            case (2, .varint(let value)): step = Int64(bitPattern: value)
            case (3, .lengthDelimited(let text)): payload = .fileVersion(String(decoding: text, as: UTF8.self))
            case (5, .lengthDelimited(let summary)): payload = .summary(try values(summary))
            default: throw DecodingError(description: "unexpected Event field \(number) \(field)")
            }
        }
        guard let payload else { throw DecodingError(description: "Event without payload") }
        return TensorBoardEvent(wallTime: wallTime, step: step, payload: payload)
    }

    private static func values(_ summary: [UInt8]) throws -> [TensorBoardEvent.Value] {
        try fields(summary).map { number, field in
            guard number == 1, case .lengthDelimited(let bytes) = field else {
                throw DecodingError(description: "unexpected Summary field \(number)")
            }
            var tag = ""
            var content: TensorBoardEvent.Content?
            for (number, field) in try fields(bytes) {
                switch (number, field) {
                case (1, .lengthDelimited(let text)): tag = String(decoding: text, as: UTF8.self)
                case (2, .fixed32(let bits)): content = .scalar(Float(bitPattern: bits))
                case (4, .lengthDelimited(let image)): content = .image(try self.image(image))
                default: throw DecodingError(description: "unexpected Value field \(number)")
                }
            }
            guard let content else { throw DecodingError(description: "Value without content") }
            return TensorBoardEvent.Value(tag: tag, content: content)
        }
    }

    private static func image(_ bytes: [UInt8]) throws -> TensorBoardEvent.Image {
        var image = TensorBoardEvent.Image(height: 0, width: 0, colorspace: 0, encodedImage: [])
        for (number, field) in try fields(bytes) {
            switch (number, field) {
            case (1, .varint(let value)): image.height = Int(value)
            case (2, .varint(let value)): image.width = Int(value)
            case (3, .varint(let value)): image.colorspace = Int(value)
            case (4, .lengthDelimited(let data)): image.encodedImage = data
            default: throw DecodingError(description: "unexpected Image field \(number)")
            }
        }
        return image
    }

    /// Every event of an event file, with the record checksums verified.
    static func events(inFile path: String) throws -> [TensorBoardEvent] {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        return try TFRecord.records(in: bytes).map(event)
    }
}

final class LoggingProtobufDecoderTests: XCTestCase {
    func testDecoderReadsVarintsOfEverySize() throws {
        // Field 2 varints: 1, 300 (0xAC 0x02), -1 (ten bytes).
        let bytes: [UInt8] = [0x10, 0x01, 0x10, 0xAC, 0x02, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]
        let values = try TestEventDecoder.fields(bytes).map(\.1)
        XCTAssertEqual(values, [.varint(1), .varint(300), .varint(UInt64.max)])
        XCTAssertThrowsError(try TestEventDecoder.fields([0x10, 0x80]))
        XCTAssertThrowsError(try TestEventDecoder.fields([0x0A, 0x05, 0x01]))
    }
}
