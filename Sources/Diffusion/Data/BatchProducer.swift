import Foundation
import Tensors

/// Makes batches from a dataset: the part of `DataLoader` that runs on the
/// producer thread (or on the caller's thread when nothing is prefetched). It
/// holds no reference to the loader.
final class BatchProducer: @unchecked Sendable {
    /// What one production step gives.
    enum Item {
        /// A batch, and the position after it.
        case batch(Batch, after: DataLoaderPosition)
        /// The epoch is over; the position is now the next epoch's start.
        case endOfEpoch(after: DataLoaderPosition)
        /// An error that is not a bad example (e.g. examples of different shapes); the position is unchanged.
        case failure(Error, at: DataLoaderPosition)
    }

    let dataset: Dataset
    let batchSize: Int
    let shuffle: Bool
    let seed: UInt64
    let dropLast: Bool
    let transform: ImageTransform?
    let warn: (String) -> Void
    let shard: DataLoaderShard

    private let lock = NSLock()
    private var warned: Set<String> = []
    private var badIndices: Set<Int> = []
    private var cachedOrder: (epoch: Int, order: [Int])?

    init(dataset: Dataset, batchSize: Int, shuffle: Bool, seed: UInt64, dropLast: Bool,
         transform: ImageTransform?, warn: @escaping (String) -> Void, shard: DataLoaderShard = .whole) {
        self.dataset = dataset
        self.batchSize = batchSize
        self.shuffle = shuffle
        self.seed = seed
        self.dropLast = dropLast
        self.transform = transform
        self.warn = warn
        self.shard = shard
    }

    /// SplitMix64's finaliser: a well-mixed 64-bit value of `value`.
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The seed of a stream (`salt`) for `epoch` and `index`, from the loader's seed.
    static func derivedSeed(_ seed: UInt64, salt: UInt64, epoch: Int, index: Int = 0) -> UInt64 {
        mix(mix(mix(seed ^ salt) ^ UInt64(truncatingIfNeeded: epoch)) ^ UInt64(truncatingIfNeeded: index))
    }

    /// The order of dataset indices in `epoch`: `0 ..< count`, or without
    /// shuffling, or shuffled by Fisher–Yates (from the last slot down, each
    /// swapped with `integer(below: slot + 1)`) with a `RandomGenerator` seeded
    /// from the loader's seed and the epoch.
    func order(epoch: Int) -> [Int] {
        lock.lock()
        if let cached = cachedOrder, cached.epoch == epoch { lock.unlock(); return cached.order }
        lock.unlock()
        var order = Array(0..<dataset.count)
        if shuffle && order.count > 1 {
            var generator = RandomGenerator(seed: BatchProducer.derivedSeed(seed, salt: 0x5348_5546_464C_4531, epoch: epoch))
            for slot in stride(from: order.count - 1, to: 0, by: -1) {
                order.swapAt(slot, generator.integer(below: slot + 1))
            }
        }
        lock.lock()
        cachedOrder = (epoch, order)
        lock.unlock()
        return order
    }

    /// The next item from `position`.
    func produce(from position: DataLoaderPosition) -> Item {
        if shard.count > 1 { return produceShard(from: position) }
        let order = order(epoch: position.epoch)
        var cursor = position.offset
        var examples: [(index: Int, example: DatasetExample)] = []
        while examples.count < batchSize && cursor < order.count {
            let index = order[cursor]
            cursor += 1
            if let example = load(index, epoch: position.epoch) { examples.append((index, example)) }
        }
        let nextEpoch = DataLoaderPosition(epoch: position.epoch + 1, offset: 0)
        if examples.isEmpty || (examples.count < batchSize && dropLast) {
            return .endOfEpoch(after: nextEpoch)
        }
        do {
            let batch = try collate(examples, epoch: position.epoch)
            return .batch(batch, after: DataLoaderPosition(epoch: position.epoch, offset: cursor))
        } catch {
            return .failure(error, at: position)
        }
    }

    /// This rank's part of the global batch at `position` (see `DataLoader`'s data-parallel notes).
    private func produceShard(from position: DataLoaderPosition) -> Item {
        let order = order(epoch: position.epoch)
        let global = batchSize * shard.count
        let remaining = order.count - position.offset
        let nextEpoch = DataLoaderPosition(epoch: position.epoch + 1, offset: 0)
        if remaining <= 0 || (remaining < global && dropLast) { return .endOfEpoch(after: nextEpoch) }
        let taken = Swift.min(global, remaining)
        var entries = Array(order[position.offset..<(position.offset + taken)])
        let perRank = (taken + shard.count - 1) / shard.count
        // Pad a last partial global batch with the epoch's first entries, to the same count on every rank.
        var padding = 0
        while entries.count < perRank * shard.count { entries.append(order[padding % order.count]); padding += 1 }
        var examples: [(index: Int, example: DatasetExample)] = []
        for index in entries[(shard.rank * perRank)..<((shard.rank + 1) * perRank)] {
            guard let example = load(index, epoch: position.epoch) else {
                return .failure(DatasetError.unreadable(path: dataset.source(of: index),
                                                        reason: "an unreadable example stops data-parallel training (the ranks cannot skip it alike); remove it"),
                                at: position)
            }
            examples.append((index, example))
        }
        do {
            let batch = try collate(examples, epoch: position.epoch)
            return .batch(batch, after: DataLoaderPosition(epoch: position.epoch, offset: position.offset + taken))
        } catch {
            return .failure(error, at: position)
        }
    }

    /// Example `index`, transformed; nil (with one warning per file) when it cannot be read.
    private func load(_ index: Int, epoch: Int) -> DatasetExample? {
        lock.lock()
        let knownBad = badIndices.contains(index)
        lock.unlock()
        if knownBad { return nil }
        do {
            var example = try dataset.example(at: index)
            if let transform {
                var generator = RandomGenerator(seed: BatchProducer.derivedSeed(seed, salt: 0x5452_414E_5346_4F52, epoch: epoch, index: index))
                example.image = transform.apply(example.image, generator: &generator)
            }
            return example
        } catch {
            let source = dataset.source(of: index)
            lock.lock()
            badIndices.insert(index)
            let first = warned.insert(source).inserted
            lock.unlock()
            if first { warn("warning: skipping \(source): \(DatasetError.reason(of: error))") }
            return nil
        }
    }

    /// One `[B, C, H, W]` batch of same-shaped examples.
    private func collate(_ examples: [(index: Int, example: DatasetExample)], epoch: Int) throws -> Batch {
        let shape = examples[0].example.image.shape
        let size = examples[0].example.image.count
        var values = [Float](repeating: 0, count: size * examples.count)
        for (slot, item) in examples.enumerated() {
            guard item.example.image.shape == shape else {
                throw DatasetError.inconsistentShapes(first: shape, other: item.example.image.shape, path: dataset.source(of: item.index))
            }
            let image = item.example.image.toArray()
            values.replaceSubrange((slot * size)..<((slot + 1) * size), with: image)
        }
        return Batch(images: Tensor(values, shape: [examples.count] + shape),
                     labels: examples.map(\.example.label),
                     captions: examples.map(\.example.caption),
                     indices: examples.map(\.index),
                     epoch: epoch)
    }
}

extension DatasetError {
    /// What went wrong, without the file name (for messages that name the file themselves).
    static func reason(of error: Error) -> String {
        switch error {
        case let DatasetError.unreadable(_, reason), let DatasetError.malformed(_, reason): return reason
        default: return "\(error)"
        }
    }
}

/// Runs a `BatchProducer` on its own thread, a bounded number of items ahead.
final class Prefetcher: @unchecked Sendable {
    private let producer: BatchProducer
    private let capacity: Int
    private let condition = NSCondition()
    private var buffer: [BatchProducer.Item] = []
    private var cancelled = false
    private var running = true

    /// Starts producing from `position`, at most `capacity` items ahead.
    init(producer: BatchProducer, position: DataLoaderPosition, capacity: Int) {
        self.producer = producer
        self.capacity = Swift.max(1, capacity)
        let thread = Thread { [self] in self.run(from: position) }
        thread.name = "diffuse.data-loader"
        thread.start()
    }

    private func run(from start: DataLoaderPosition) {
        var position = start
        defer {
            condition.lock()
            running = false
            condition.broadcast()
            condition.unlock()
        }
        while true {
            condition.lock()
            while !cancelled && buffer.count >= capacity { condition.wait() }
            if cancelled { condition.unlock(); return }
            condition.unlock()

            let item = producer.produce(from: position)

            condition.lock()
            if cancelled { condition.unlock(); return }
            buffer.append(item)
            condition.broadcast()
            condition.unlock()
            switch item {
            case let .batch(_, after), let .endOfEpoch(after): position = after
            case .failure: return
            }
        }
    }

    /// The next item, waiting for it if it is not ready.
    func next() -> BatchProducer.Item {
        condition.lock()
        defer { condition.unlock() }
        while buffer.isEmpty {
            condition.wait()
        }
        let item = buffer.removeFirst()
        condition.broadcast()
        return item
    }

    /// Stops the thread and waits for it to finish the item it is making.
    func cancel() {
        condition.lock()
        cancelled = true
        condition.broadcast()
        while running { condition.wait() }
        condition.unlock()
    }

    /// Items ready and waiting.
    var readyCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return buffer.count
    }
}
