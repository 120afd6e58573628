import Diffusion
import Foundation
import Tensors
import XCTest

/// DistributedSampler's semantics: N ranks with batch B see together exactly what one
/// process with batch N × B sees, batch by batch, and the position means the same.
final class DataLoaderShardTests: XCTestCase {
    /// `count` 1×2×2 images whose pixels hold their index.
    private func dataset(count: Int) -> InMemoryDataset {
        let values = (0..<count).flatMap { index in [Float](repeating: Float(index), count: 4) }
        return InMemoryDataset(images: Tensor(values, shape: [count, 1, 2, 2]), labels: (0..<count).map { $0 % 3 }, classNames: ["a", "b", "c"])
    }

    private func loader(_ data: Dataset, batch: Int, dropLast: Bool, rank: Int = 0, ranks: Int = 1, prefetch: Int = 0) -> DataLoader {
        DataLoader(dataset: data, batchSize: batch, shuffle: true, seed: 11, dropLast: dropLast, prefetchBatches: prefetch,
                   shard: DataLoaderShard(rank: rank, count: ranks))
    }

    func testTwoRanksTogetherSeeTheSingleProcessBatchesInOrder() throws {
        let data = dataset(count: 50)
        for dropLast in [true, false] {
            let whole = loader(data, batch: 8, dropLast: dropLast)
            let ranks = (0..<2).map { loader(data, batch: 4, dropLast: dropLast, rank: $0, ranks: 2, prefetch: $0 * 2) }
            XCTAssertEqual(ranks[0].batchesPerEpoch, whole.batchesPerEpoch)
            for epoch in 0..<2 {
                var batches = 0
                while let single = try whole.nextBatch() {
                    let parts = try ranks.map { try XCTUnwrap($0.nextBatch(), "a rank ended the epoch early") }
                    XCTAssertEqual(parts[0].count, parts[1].count, "uneven shards")
                    XCTAssertEqual(parts.map(\.epoch), [epoch, epoch])
                    XCTAssertEqual(ranks[0].position, whole.position, "the position is the global one")
                    XCTAssertEqual(ranks[1].position, whole.position)
                    if single.count == 8 {
                        XCTAssertEqual(parts[0].indices + parts[1].indices, single.indices)
                        XCTAssertEqual(parts[0].images.toArray() + parts[1].images.toArray(), single.images.toArray())
                    } else {
                        // 50 = 6 × 8 + 2: the last global batch of 2 is split 1 + 1 (no padding needed).
                        XCTAssertFalse(dropLast)
                        XCTAssertEqual(parts[0].indices + parts[1].indices, single.indices)
                    }
                    batches += 1
                }
                XCTAssertNil(try ranks[0].nextBatch())
                XCTAssertNil(try ranks[1].nextBatch())
                XCTAssertEqual(batches, dropLast ? 6 : 7)
            }
        }
    }

    func testAPartialGlobalBatchIsPaddedEvenlyFromTheEpochStart() throws {
        let data = dataset(count: 13)  // one global batch of 3 × 4 = 12, then 1 left
        let ranks = (0..<3).map { loader(data, batch: 4, dropLast: false, rank: $0, ranks: 3) }
        let order = ranks[0].order(epoch: 0)
        _ = try ranks.map { try $0.nextBatch() }
        let last = try ranks.map { try XCTUnwrap($0.nextBatch()) }
        XCTAssertEqual(last.map(\.count), [1, 1, 1])
        XCTAssertEqual(last.flatMap(\.indices), [order[12], order[0], order[1]])
        XCTAssertTrue(try ranks.allSatisfy { try $0.nextBatch() == nil })
        XCTAssertEqual(ranks[2].position, DataLoaderPosition(epoch: 1, offset: 0))
    }

    func testAPositionFromTwoRanksResumesOneProcessAndFourRanks() throws {
        let data = dataset(count: 64)
        let two = (0..<2).map { loader(data, batch: 4, dropLast: true, rank: $0, ranks: 2) }
        for _ in 0..<3 { for rank in two { _ = try rank.nextBatch() } }
        let saved = two[0].position
        XCTAssertEqual(saved, DataLoaderPosition(epoch: 0, offset: 24))
        let expected = try two.map { try XCTUnwrap($0.nextBatch()) }.flatMap(\.indices)

        let one = loader(data, batch: 8, dropLast: true)
        one.restore(saved)
        XCTAssertEqual(try one.nextBatch()?.indices, expected)
        let four = (0..<4).map { loader(data, batch: 2, dropLast: true, rank: $0, ranks: 4) }
        four.forEach { $0.restore(saved) }
        XCTAssertEqual(try four.flatMap { try XCTUnwrap($0.nextBatch()).indices }, expected)
    }

    func testAnUnreadableExampleStopsAShardedLoader() throws {
        final class Broken: Dataset {
            var count: Int { 8 }
            var classNames: [String] { [] }
            func example(at index: Int) throws -> DatasetExample {
                if index == 3 { throw DatasetError.unreadable(path: "broken-3.png", reason: "truncated") }
                return DatasetExample(image: Tensor.zeros([1, 2, 2]), label: nil)
            }
            func source(of index: Int) -> String { "broken-\(index).png" }
        }
        let shards = (0..<2).map { DataLoader(dataset: Broken(), batchSize: 4, shuffle: false, prefetchBatches: 0, shard: DataLoaderShard(rank: $0, count: 2)) }
        XCTAssertNoThrow(try shards[1].nextBatch(), "rank 1 holds entries 4..<8")
        XCTAssertThrowsError(try shards[0].nextBatch()) { error in
            XCTAssertTrue("\(error)".contains("broken-3.png"), "\(error)")
        }
        XCTAssertEqual(shards[0].position, DataLoaderPosition(epoch: 0, offset: 0))
    }
}
