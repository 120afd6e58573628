import TestSupport
import Diffusion
import Foundation
import Tensors
import XCTest

final class DataLoaderTests: XCTestCase {
    /// The dataset indices of every batch of `epochs` epochs, one array per epoch.
    private func epochs(_ loader: DataLoader, _ count: Int) throws -> [[[Int]]] {
        try (0..<count).map { _ in try loader.remainingBatches().map(\.indices) }
    }

    /// Everything a batch carries, to compare batches exactly.
    private func fingerprint(_ batch: Batch) -> [String] {
        [batch.images.shape.description, batch.images.toArray().description, batch.labels.description,
         batch.captions.description, batch.indices.description, "\(batch.epoch)"]
    }

    func testSeededShuffleIsReproducibleAndCoversEveryExample() throws {
        let dataset = CountingDataset(count: 23)
        let first = try epochs(DataLoader(dataset: dataset, batchSize: 5, seed: 42), 3)
        let again = try epochs(DataLoader(dataset: dataset, batchSize: 5, seed: 42, prefetchBatches: 0), 3)
        let other = try epochs(DataLoader(dataset: dataset, batchSize: 5, seed: 43), 3)
        XCTAssertEqual(first, again)
        XCTAssertNotEqual(first, other)
        XCTAssertNotEqual(first[0], first[1], "each epoch has its own order")
        for epoch in first {
            XCTAssertEqual(epoch.map(\.count), [5, 5, 5, 5, 3])
            XCTAssertEqual(epoch.flatMap { $0 }.sorted(), Array(0..<23))
        }
        let unshuffled = try epochs(DataLoader(dataset: dataset, batchSize: 10, shuffle: false), 1)
        XCTAssertEqual(unshuffled[0], [Array(0..<10), Array(10..<20), Array(20..<23)])
    }

    func testDropLast() throws {
        let loader = DataLoader(dataset: CountingDataset(count: 23), batchSize: 5, seed: 1, dropLast: true)
        XCTAssertEqual(loader.batchesPerEpoch, 4)
        let result = try epochs(loader, 2)
        XCTAssertEqual(result.map { $0.map(\.count) }, [[5, 5, 5, 5], [5, 5, 5, 5]])
        XCTAssertEqual(loader.position, DataLoaderPosition(epoch: 2, offset: 0))
        XCTAssertEqual(DataLoader(dataset: CountingDataset(count: 23), batchSize: 5).batchesPerEpoch, 5)
    }

    func testBatchContents() throws {
        let loader = DataLoader(dataset: CountingDataset(count: 4), batchSize: 3, shuffle: false)
        let batch = try XCTUnwrap(try loader.nextBatch())
        XCTAssertEqual(batch.images.shape, [3, 1, 2, 3])
        XCTAssertEqual(batch.images[2, 0, 1, 2], 2.5, accuracy: 1e-6)
        XCTAssertEqual(batch.labels, [0, 1, 2])
        XCTAssertEqual(batch.classLabels, [0, 1, 2])
        XCTAssertEqual(batch.captions, ["number 0", "number 1", "number 2"])
        XCTAssertEqual(loader.position, DataLoaderPosition(epoch: 0, offset: 3))
        XCTAssertEqual(try loader.nextBatch()?.indices, [3])
        XCTAssertNil(try loader.nextBatch())
        XCTAssertEqual(loader.position, DataLoaderPosition(epoch: 1, offset: 0))
    }

    func testBackgroundLoadingGivesTheForegroundBatches() throws {
        let dataset = CountingDataset(count: 37)
        let transform = ComposedTransform([RandomHorizontalFlip(), ConvertChannels(3)])
        func run(prefetch: Int) throws -> [[String]] {
            let loader = DataLoader(dataset: dataset, batchSize: 4, seed: 9, transform: transform, prefetchBatches: prefetch)
            return try (0..<3).flatMap { _ in try loader.remainingBatches().map(fingerprint) }
        }
        let foreground = try run(prefetch: 0)
        XCTAssertEqual(try run(prefetch: 1), foreground)
        XCTAssertEqual(try run(prefetch: 3), foreground)
        // The random flip did act: some images are mirrored.
        XCTAssertTrue(foreground.contains { $0[1].hasPrefix("[0.2, 0.1, 0.0") || $0[1].contains(", 0.2, 0.1, 0.0,") })
    }

    func testProducerRunsAheadBoundedly() throws {
        let loader = DataLoader(dataset: CountingDataset(count: 100), batchSize: 2, seed: 0, prefetchBatches: 3)
        _ = try loader.nextBatch()
        let deadline = Date().addingTimeInterval(5)
        while loader.readyBatches < 3 && Date() < deadline { usleep(1000) }
        XCTAssertEqual(loader.readyBatches, 3, "three batches wait, no more")
        usleep(20_000)
        XCTAssertEqual(loader.readyBatches, 3)
        loader.stop()
        XCTAssertEqual(loader.readyBatches, 0)
    }

    func testRestoredPositionContinuesExactly() throws {
        let dataset = CountingDataset(count: 29, failing: [4, 17])
        let transform = RandomHorizontalFlip()
        func makeLoader(prefetch: Int) -> DataLoader {
            DataLoader(dataset: dataset, batchSize: 4, seed: 77, transform: transform, prefetchBatches: prefetch, warn: { _ in })
        }
        // An uninterrupted run over three epochs, with the position before every call.
        let reference = makeLoader(prefetch: 2)
        var stream: [(DataLoaderPosition, [String]?)] = []
        for _ in 0..<3 {
            while true {
                let before = reference.position
                let batch = try reference.nextBatch()
                stream.append((before, batch.map(fingerprint)))
                if batch == nil { break }
            }
        }
        // Restoring at every point, in a fresh loader (as after a crash) or the same one, continues identically.
        for start in stride(from: 0, to: stream.count, by: 3) {
            let saved = try JSONDecoder().decode(DataLoaderPosition.self, from: JSONEncoder().encode(stream[start].0))
            for prefetch in [0, 2] {
                let resumed = makeLoader(prefetch: prefetch)
                _ = try resumed.nextBatch()   // the producer is running from elsewhere
                resumed.restore(saved)
                for expected in stream[start...].prefix(6) {
                    XCTAssertEqual(resumed.position, expected.0)
                    XCTAssertEqual(try resumed.nextBatch().map(fingerprint), expected.1, "from \(saved), prefetch \(prefetch)")
                }
            }
        }
    }

    func testCorruptExamplesAreSkippedWithOneWarningEach() throws {
        let dataset = CountingDataset(count: 10, failing: [2, 3, 7])
        var warnings: [String] = []
        let lock = NSLock()
        let loader = DataLoader(dataset: dataset, batchSize: 3, shuffle: false, prefetchBatches: 2) { message in
            lock.lock(); warnings.append(message); lock.unlock()
        }
        let first = try loader.remainingBatches().map(\.indices)
        XCTAssertEqual(first, [[0, 1, 4], [5, 6, 8], [9]], "each batch is filled with the next good examples")
        XCTAssertEqual(try loader.remainingBatches().map(\.indices), first)
        loader.stop()
        lock.lock()
        XCTAssertEqual(warnings.sorted(), ["warning: skipping item-2.png: PNG: broken on purpose",
                                           "warning: skipping item-3.png: PNG: broken on purpose",
                                           "warning: skipping item-7.png: PNG: broken on purpose"])
        lock.unlock()
        XCTAssertEqual(dataset.reads[2], 1, "a bad file is not read again")
    }

    func testCorruptFileInImageFolderIsSkipped() throws {
        let root = try temporaryFolderPath("data")
        try writeFlatPNG(to: root + "/a/1.png", color: [10])
        try writeFile(Array("broken".utf8), to: root + "/a/2.png")
        try writeFlatPNG(to: root + "/b/3.png", color: [30])
        let png = try PNG.encode(PixelImage(width: 4, height: 4, channels: 1, samples: [UInt8](repeating: 50, count: 16)))
        try writeFile(Array(png.prefix(png.count - 20)), to: root + "/b/4.png")
        var warnings: [String] = []
        let loader = DataLoader(dataset: try ImageFolderDataset(directory: root), batchSize: 2, shuffle: false,
                                prefetchBatches: 0, warn: { warnings.append($0) })
        let batches = try loader.remainingBatches()
        XCTAssertEqual(batches.map(\.indices), [[0, 2]])
        XCTAssertEqual(batches[0].labels, [0, 1])
        XCTAssertEqual(warnings.count, 2)
        XCTAssertTrue(warnings[0].contains(root + "/a/2.png") && warnings[0].contains("neither a PNG nor a JPEG"), warnings[0])
        XCTAssertTrue(warnings[1].contains(root + "/b/4.png") && warnings[1].contains("PNG"), warnings[1])
    }

    func testExamplesOfDifferentShapesThrow() throws {
        let root = try temporaryFolderPath("data")
        try writeFlatPNG(to: root + "/a.png", width: 4, height: 4, color: [1])
        try writeFlatPNG(to: root + "/b.png", width: 5, height: 4, color: [1, 2, 3])
        let dataset = try ImageFolderDataset(directory: root)
        for prefetch in [0, 2] {
            let loader = DataLoader(dataset: dataset, batchSize: 2, shuffle: false, prefetchBatches: prefetch)
            XCTAssertThrowsError(try loader.nextBatch()) { error in
                XCTAssertTrue("\(error)".contains("Resize"), "\(error)")
            }
            XCTAssertEqual(loader.position, DataLoaderPosition(epoch: 0, offset: 0))
        }
        let fixed = DataLoader(dataset: dataset, batchSize: 2, shuffle: false,
                               transform: ImageTransforms.standard(size: 3, channels: 3))
        XCTAssertEqual(try fixed.nextBatch()?.images.shape, [2, 3, 3, 3])
    }
}
