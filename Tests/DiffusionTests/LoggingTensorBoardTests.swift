import Diffusion
import Foundation
import XCTest

final class LoggingTensorBoardTests: XCTestCase {
    /// Framed records written by the Python `tensorboard` package's protobuf
    /// classes and `RecordWriter` for the events beside them.
    func testEventBytesMatchTensorBoardsOwnSerialisation() {
        // Event(wall_time=1700000001.5, step=10, summary=Summary(value=[Value(tag="loss", simple_value=0.25)]))
        let scalar: [UInt8] = [
            0x1A, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x12, 0x9B, 0xD8, 0x2D, 0x09, 0x00, 0x00, 0x60,
            0x40, 0xFC, 0x54, 0xD9, 0x41, 0x10, 0x0A, 0x2A, 0x0D, 0x0A, 0x0B, 0x0A, 0x04, 0x6C, 0x6F, 0x73,
            0x73, 0x15, 0x00, 0x00, 0x80, 0x3E, 0x14, 0xC9, 0x74, 0xA3,
        ]
        // Event(wall_time=1700000002.25, step=300, summary=Summary(value=[Value(tag="samples",
        //       image=Image(height=3, width=2, colorspace=1, encoded_image_string=b"\x01\x02\x03"))]))
        let image: [UInt8] = [
            0x26, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x73, 0x4F, 0xE3, 0x00, 0x09, 0x00, 0x00, 0x90,
            0x40, 0xFC, 0x54, 0xD9, 0x41, 0x10, 0xAC, 0x02, 0x2A, 0x18, 0x0A, 0x16, 0x0A, 0x07, 0x73, 0x61,
            0x6D, 0x70, 0x6C, 0x65, 0x73, 0x22, 0x0B, 0x08, 0x03, 0x10, 0x02, 0x18, 0x01, 0x22, 0x03, 0x01,
            0x02, 0x03, 0xBD, 0xB6, 0x38, 0x5F,
        ]
        // Event(wall_time=1700000003.0, step=-1, summary=Summary(value=[Value(tag="a", simple_value=-1.5),
        //       Value(tag="b", simple_value=0.0)]))  -- a zero simple_value is still written (it is in a oneof).
        let twoScalars: [UInt8] = [
            0x2A, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xAE, 0x8D, 0x91, 0xF5, 0x09, 0x00, 0x00, 0xC0,
            0x40, 0xFC, 0x54, 0xD9, 0x41, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01,
            0x2A, 0x14, 0x0A, 0x08, 0x0A, 0x01, 0x61, 0x15, 0x00, 0x00, 0xC0, 0xBF, 0x0A, 0x08, 0x0A, 0x01,
            0x62, 0x15, 0x00, 0x00, 0x00, 0x00, 0xEC, 0xBC, 0x27, 0x69,
        ]
        let header = TensorBoardEvent(wallTime: 1_700_000_000, payload: .fileVersion("brain.Event:2"))
        XCTAssertEqual(TFRecord.frame(header.encoded()), LoggingCRC32CTests.fileVersionRecord)
        let loss = TensorBoardEvent(wallTime: 1_700_000_001.5, step: 10,
                                    payload: .summary([.init(tag: "loss", content: .scalar(0.25))]))
        XCTAssertEqual(TFRecord.frame(loss.encoded()), scalar)
        let picture = TensorBoardEvent.Image(height: 3, width: 2, colorspace: 1, encodedImage: [1, 2, 3])
        let samples = TensorBoardEvent(wallTime: 1_700_000_002.25, step: 300,
                                       payload: .summary([.init(tag: "samples", content: .image(picture))]))
        XCTAssertEqual(TFRecord.frame(samples.encoded()), image)
        let pair = TensorBoardEvent(wallTime: 1_700_000_003, step: -1,
                                    payload: .summary([.init(tag: "a", content: .scalar(-1.5)), .init(tag: "b", content: .scalar(0))]))
        XCTAssertEqual(TFRecord.frame(pair.encoded()), twoScalars)
    }

    private func makeLogDirectory() -> String {
        let path = NSTemporaryDirectory() + "tensorboard-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func testScalarsAndImagesRoundTripThroughTheFile() throws {
        let directory = makeLogDirectory() + "/run"
        let writer = try TensorBoardWriter(directory: directory, creationTime: 1_700_000_000.75, hostname: "testhost",
                                           clock: { 1_700_000_100 })
        XCTAssertEqual(writer.path, directory + "/events.out.tfevents.1700000000.testhost")
        try writer.addScalar(tag: "train/loss", value: 0.125, step: 1, wallTime: 1_700_000_001)
        try writer.addScalars([("train/lr", 1e-4), ("train/grad_norm", 0)], step: 2)
        let png = try MinimalPNG.encode(pixels: [0, 128, 255, 64], width: 2, height: 2, channels: 1)
        try writer.addImage(tag: "samples", pngData: png, width: 2, height: 2, channels: 1, step: 1_000_000)
        // Nothing is buffered: the records are in the file before flush or close.
        let events = try TestEventDecoder.events(inFile: writer.path)
        try writer.close()

        XCTAssertEqual(events, [
            TensorBoardEvent(wallTime: 1_700_000_000.75, payload: .fileVersion("brain.Event:2")),
            TensorBoardEvent(wallTime: 1_700_000_001, step: 1, payload: .summary([.init(tag: "train/loss", content: .scalar(0.125))])),
            TensorBoardEvent(wallTime: 1_700_000_100, step: 2, payload: .summary([
                .init(tag: "train/lr", content: .scalar(1e-4)), .init(tag: "train/grad_norm", content: .scalar(0)),
            ])),
            TensorBoardEvent(wallTime: 1_700_000_100, step: 1_000_000, payload: .summary([
                .init(tag: "samples", content: .image(.init(height: 2, width: 2, colorspace: 1, encodedImage: png))),
            ])),
        ])
        XCTAssertThrowsError(try writer.addScalar(tag: "late", value: 1, step: 3))
        XCTAssertNoThrow(try writer.close())
    }

    func testReopeningAppendsWithoutASecondHeader() throws {
        let directory = makeLogDirectory()
        for step in 0..<3 {
            let writer = try TensorBoardWriter(directory: directory, creationTime: 1_700_000_000, hostname: "h")
            try writer.addScalar(tag: "loss", value: Float(step), step: step, wallTime: 1_700_000_000 + Double(step))
            try writer.flush()
            try writer.close()
        }
        let events = try TestEventDecoder.events(inFile: directory + "/events.out.tfevents.1700000000.h")
        XCTAssertEqual(events.count, 4)
        XCTAssertEqual(events[0].payload, .fileVersion("brain.Event:2"))
        XCTAssertEqual(events.dropFirst().map(\.step), [0, 1, 2])
    }

    func testConcurrentWritersNeverInterleaveRecords() throws {
        let writer = try TensorBoardWriter(directory: makeLogDirectory(), creationTime: 1_700_000_000, hostname: "h")
        DispatchQueue.concurrentPerform(iterations: 8) { thread in
            for index in 0..<100 {
                try? writer.addScalar(tag: "thread\(thread)", value: Float(index), step: index)
            }
        }
        try writer.close()
        let events = try TestEventDecoder.events(inFile: writer.path)
        XCTAssertEqual(events.count, 801)
        for thread in 0..<8 {
            let steps = events.filter {
                if case .summary(let values) = $0.payload { return values.first?.tag == "thread\(thread)" }
                return false
            }.map(\.step)
            XCTAssertEqual(steps, (0..<100).map(Int64.init))
        }
    }

    func testRejectsInvalidImagesAndUnwritableDirectories() throws {
        let writer = try TensorBoardWriter(directory: makeLogDirectory(), hostname: "h")
        XCTAssertThrowsError(try writer.addImage(tag: "x", pngData: [], width: 0, height: 1, channels: 1, step: 0))
        XCTAssertThrowsError(try writer.addImage(tag: "x", pngData: [], width: 1, height: 1, channels: 5, step: 0))
        XCTAssertThrowsError(try TensorBoardWriter(directory: "/proc/diffuse-cannot-write-here"))
    }

    // MARK: - The fixture read by TensorBoard itself

    static let fixtureDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").appendingPathComponent("tensorboard").path

    /// Writes the events that `Scripts/check-tensorboard-events` reads with TensorBoard's
    /// `EventAccumulator` (its output is `reader-output.txt` beside them).
    static func writeFixtureEvents(to directory: String) throws -> String {
        let start = 1_700_000_000.0
        let writer = try TensorBoardWriter(directory: directory, creationTime: start, hostname: "diffuse-fixture")
        let losses: [Float] = [0.9812, 0.5127, 0.2203, 0.1406, 0.1131]
        for (step, loss) in losses.enumerated() {
            let wallTime = start + Double(step + 1) * 0.5
            try writer.addScalar(tag: "train/loss", value: loss, step: step * 100, wallTime: wallTime)
            try writer.addScalars([
                ("train/lr", 1e-4 * Float(min(step + 1, 3)) / 3),
                ("train/grad_norm", 2.5 / Float(step + 1)),
                ("train/images_per_second", 412.5 + Float(step)),
            ], step: step * 100, wallTime: wallTime)
        }
        // Level 0 (stored) deflate makes the PNG bytes independent of the zlib version.
        let gray: [UInt8] = (0..<(8 * 6)).map { (index: Int) -> UInt8 in UInt8((index % 8) * 32 + (index / 8) * 4) }
        let grayPNG = try MinimalPNG.encode(pixels: gray, width: 8, height: 6, channels: 1, compressionLevel: 0)
        let rgb: [UInt8] = (0..<(4 * 3 * 3)).map { (index: Int) -> UInt8 in UInt8((index * 37) % 256) }
        let rgbPNG = try MinimalPNG.encode(pixels: rgb, width: 4, height: 3, channels: 3, compressionLevel: 0)
        for step in [200, 400] {
            try writer.addImage(tag: "samples/grid", pngData: grayPNG, width: 8, height: 6, channels: 1,
                                step: step, wallTime: start + Double(step) / 100)
        }
        try writer.addImage(tag: "samples/rgb", pngData: rgbPNG, width: 4, height: 3, channels: 3,
                            step: 400, wallTime: start + 4.5)
        try writer.close()
        return writer.path
    }

    func testCommittedFixtureIsWhatTheWriterWritesNow() throws {
        if ProcessInfo.processInfo.environment["DIFFUSE_WRITE_FIXTURES"] == "1" {
            try? FileManager.default.removeItem(atPath: Self.fixtureDirectory + "/events.out.tfevents.1700000000.diffuse-fixture")
            _ = try Self.writeFixtureEvents(to: Self.fixtureDirectory)
        }
        let written = try Self.writeFixtureEvents(to: makeLogDirectory())
        let committed = Self.fixtureDirectory + "/" + (written as NSString).lastPathComponent
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: written)), try Data(contentsOf: URL(fileURLWithPath: committed)),
                       "regenerate with DIFFUSE_WRITE_FIXTURES=1 and rerun Scripts/check-tensorboard-events")
        let events = try TestEventDecoder.events(inFile: committed)
        XCTAssertEqual(events.count, 1 + 10 + 3)
    }
}
