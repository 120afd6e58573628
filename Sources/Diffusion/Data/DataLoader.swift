import Foundation
import Tensors

/// Where a `DataLoader` is in its stream of batches. Save it with a training
/// checkpoint and `restore` it to continue with exactly the batches an
/// uninterrupted run would have seen.
public struct DataLoaderPosition: Codable, Equatable, Sendable, CustomStringConvertible {
    /// The epoch, from 0.
    public var epoch: Int
    /// How many entries of this epoch's order have been used (taken into a batch
    /// or skipped as unreadable).
    public var offset: Int

    /// A position.
    public init(epoch: Int, offset: Int) {
        self.epoch = epoch
        self.offset = offset
    }

    public var description: String { "epoch \(epoch), offset \(offset)" }
}

/// Which part of every batch a loader yields in data-parallel training: `rank` of `count`
/// processes (DistributedSampler's semantics, see ``DataLoader``).
public struct DataLoaderShard: Equatable, Sendable, CustomStringConvertible {
    /// This process's index, 0 ..< count.
    public let rank: Int
    /// Number of processes.
    public let count: Int

    /// A shard.
    public init(rank: Int, count: Int) {
        precondition(count > 0 && rank >= 0 && rank < count, "DataLoaderShard: rank \(rank) of \(count)")
        self.rank = rank
        self.count = count
    }

    /// One process, every example.
    public static let whole = DataLoaderShard(rank: 0, count: 1)

    public var description: String { "rank \(rank) of \(count)" }
}

/// A batch of examples.
public struct Batch: @unchecked Sendable {
    /// The images, `[B, C, H, W]` in [-1, 1].
    public let images: Tensor
    /// Each example's label, if it has one.
    public let labels: [Int?]
    /// Each example's caption, if it has one.
    public let captions: [String?]
    /// The dataset index of each example.
    public let indices: [Int]
    /// The epoch the batch belongs to.
    public let epoch: Int

    /// Number of examples.
    public var count: Int { indices.count }

    /// The labels when every example has one (for class-conditional training), else nil.
    public var classLabels: [Int]? {
        let present = labels.compactMap { $0 }
        return present.count == labels.count ? present : nil
    }
}

/// Shuffles a dataset with a seed, transforms each example, and batches them,
/// decoding in the background.
///
/// - Order: epoch `e` visits the dataset in `order(epoch: e)`, a Fisher–Yates
///   shuffle driven by a `RandomGenerator` seeded from `seed` and `e` (or in index
///   order without shuffling). It depends only on the seed and the epoch, so the
///   same seed gives the same batches on every run and machine.
/// - Random transforms draw from a generator seeded from `seed`, the epoch and
///   the example's index, so they too are reproducible.
/// - `nextBatch()` returns the epoch's batches, then `nil` once at the end of the
///   epoch, after which the loader is at the start of the next epoch.
/// - An example that cannot be read (corrupt or missing file) is skipped with
///   one warning naming the file (once per file); the batch is filled with the
///   next good examples.
/// - With `prefetchBatches > 0` a producer thread decodes up to that many batches
///   ahead (across epoch ends); the batches are the same as without it.
/// - `position` and `restore(_:)` save and restore the place in the stream exactly.
/// - Data-parallel (`shard` rank r of n): the epoch's order (the same on every rank) is cut
///   into global batches of `batchSize × n`; rank r takes entries `r × batchSize ..< (r + 1) × batchSize`
///   of each. So the n ranks together see exactly the batches one process with batch
///   `batchSize × n` sees, and the position (in the global order) means the same for any
///   number of ranks: a checkpoint resumes with another rank count when the global batch
///   is the same. A last partial global batch is dropped with `dropLast`, else padded with
///   the epoch's first entries to a multiple of n and split evenly (as PyTorch's
///   DistributedSampler pads). An unreadable example stops a sharded loader with an error
///   (the ranks cannot agree on a skip without talking).
public final class DataLoader {
    /// The dataset read.
    public let dataset: Dataset
    /// Examples per batch.
    public let batchSize: Int
    /// Whether each epoch is shuffled.
    public let shuffle: Bool
    /// The seed of the order and of random transforms.
    public let seed: UInt64
    /// Whether an epoch's last, partial batch is dropped.
    public let dropLast: Bool
    /// Batches decoded ahead on the producer thread (0: decode when asked, on the caller's thread).
    public let prefetchBatches: Int
    /// The position after the last batch returned.
    public private(set) var position: DataLoaderPosition
    /// This process's part of every global batch (``DataLoaderShard/whole`` in one process).
    public let shard: DataLoaderShard

    private let producer: BatchProducer
    private var prefetcher: Prefetcher?

    /// A loader over `dataset`.
    /// - Parameters:
    ///   - transform: applied to every example before batching (e.g. `ImageTransforms.standard`).
    ///   - prefetchBatches: how many batches the producer thread keeps ready (0 disables it).
    ///   - warn: where warnings go (default: a line on standard error).
    ///   - shard: this process's part of every global batch of `batchSize × shard.count` (data-parallel training).
    public init(dataset: Dataset, batchSize: Int, shuffle: Bool = true, seed: UInt64 = 0, dropLast: Bool = false,
                transform: ImageTransform? = nil, prefetchBatches: Int = 2,
                warn: @escaping (String) -> Void = DataLoader.printWarning, shard: DataLoaderShard = .whole) {
        precondition(batchSize > 0, "DataLoader: batch size must be positive, got \(batchSize)")
        self.dataset = dataset
        self.batchSize = batchSize
        self.shuffle = shuffle
        self.seed = seed
        self.dropLast = dropLast
        self.prefetchBatches = Swift.max(0, prefetchBatches)
        self.position = DataLoaderPosition(epoch: 0, offset: 0)
        self.shard = shard
        self.producer = BatchProducer(dataset: dataset, batchSize: batchSize, shuffle: shuffle, seed: seed,
                                      dropLast: dropLast, transform: transform, warn: warn, shard: shard)
    }

    deinit { prefetcher?.cancel() }

    /// Writes `message` and a newline to standard error.
    public static func printWarning(_ message: String) {
        FileHandle.standardError.write(Data((message + "\n").utf8))
    }

    /// Batches in a full epoch when every example is readable (global batches of
    /// `batchSize × shard.count` when sharded: every rank yields this many).
    public var batchesPerEpoch: Int {
        let global = batchSize * shard.count
        return dropLast ? dataset.count / global : (dataset.count + global - 1) / global
    }

    /// The dataset indices in the order epoch `epoch` visits them.
    public func order(epoch: Int) -> [Int] { producer.order(epoch: epoch) }

    /// The next batch of the current epoch, or nil when the epoch is over (the
    /// loader then stands at the start of the next epoch). Throws when the
    /// examples of a batch differ in shape (the position stays before that batch).
    public func nextBatch() throws -> Batch? {
        let item: BatchProducer.Item
        if prefetchBatches > 0 {
            let running = prefetcher ?? Prefetcher(producer: producer, position: position, capacity: prefetchBatches)
            prefetcher = running
            item = running.next()
        } else {
            item = producer.produce(from: position)
        }
        switch item {
        case let .batch(batch, after):
            position = after
            return batch
        case let .endOfEpoch(after):
            position = after
            return nil
        case let .failure(error, at):
            prefetcher?.cancel()
            prefetcher = nil
            position = at
            throw error
        }
    }

    /// All remaining batches of the current epoch.
    public func remainingBatches() throws -> [Batch] {
        var batches: [Batch] = []
        while let batch = try nextBatch() { batches.append(batch) }
        return batches
    }

    /// Continues from `position` (one saved from `position` earlier, with the same
    /// dataset, batch size, seed and options): the following batches are exactly
    /// those that followed it then.
    public func restore(_ position: DataLoaderPosition) {
        precondition(position.epoch >= 0 && position.offset >= 0 && position.offset <= dataset.count,
                     "DataLoader.restore: position \(position) is outside a dataset of \(dataset.count) examples")
        prefetcher?.cancel()
        prefetcher = nil
        self.position = position
    }

    /// Stops the producer thread (it starts again on the next `nextBatch()`).
    public func stop() {
        prefetcher?.cancel()
        prefetcher = nil
    }

    /// Batches decoded and waiting (for tests and the progress display).
    public var readyBatches: Int { prefetcher?.readyCount ?? 0 }
}
