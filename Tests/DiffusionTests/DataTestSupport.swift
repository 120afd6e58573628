import Diffusion
import Foundation
import Tensors
import XCTest

/// Paths and helpers shared by the Data tests.
enum DataFixtures {
    /// `Tests/Fixtures/images`, found from this source file.
    static let images = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").appendingPathComponent("images").path

    /// The path of fixture `name`.
    static func image(_ name: String) -> String { (images as NSString).appendingPathComponent(name) }

    /// A parsed JSON fixture.
    static func json(_ name: String) throws -> [String: Any] {
        let data = try XCTUnwrap(FileManager.default.contents(atPath: image(name)), "missing fixture \(name)")
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }
}

extension XCTestCase {
    /// Writes `bytes` at `path`, creating folders.
    func writeFile(_ bytes: [UInt8], to path: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// Writes a PNG of one flat colour (8-bit samples) at `path`.
    func writeFlatPNG(to path: String, width: Int = 4, height: Int = 4, color: [UInt8]) throws {
        let samples = (0..<(width * height)).flatMap { _ in color }
        try writeFile(try PNG.encode(PixelImage(width: width, height: height, channels: color.count, samples: samples)), to: path)
    }
}

/// An in-memory dataset whose image `i` is a 1×2×3 image filled with `i`, label `i % 3`.
final class CountingDataset: Dataset {
    let count: Int
    let classNames = ["a", "b", "c"]
    /// Indices that fail to load, as a corrupt file would.
    let failing: Set<Int>
    /// How many times each index was read.
    private(set) var reads: [Int: Int] = [:]
    private let lock = NSLock()

    init(count: Int, failing: Set<Int> = []) {
        self.count = count
        self.failing = failing
    }

    func example(at index: Int) throws -> DatasetExample {
        lock.lock()
        reads[index, default: 0] += 1
        lock.unlock()
        if failing.contains(index) {
            throw DatasetError.malformed(path: "item-\(index).png", reason: "PNG: broken on purpose")
        }
        let values = (0..<6).map { Float(index) + Float($0) / 10 }
        return DatasetExample(image: Tensor(values, shape: [1, 2, 3]), label: index % 3, caption: "number \(index)")
    }

    func source(of index: Int) -> String { "item-\(index).png" }
}
