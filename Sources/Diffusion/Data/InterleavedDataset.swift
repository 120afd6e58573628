import Foundation

/// Several datasets as one, taken in turn: example 0 of every part, then example 1 of
/// every part, and so on; a part that runs out drops from the rotation, and the others'
/// remaining examples follow in the same turns.
///
/// Any prefix holds the parts in (nearly) equal shares while they last, so
/// `--max-train-samples` keeps a mixture a mixture. The order depends on nothing but the
/// parts, so a run that opens the same parts again (a resumed run, another rank of a
/// sharded one) sees the same examples at the same indices; shuffling and sharding stay
/// the data loader's. `diffuse train-text-to-image --dataset captioned-mnist+captioned-tinted-fashion-mnist`
/// trains on such a mixture (fine-tuning on new captions while rehearsing the ones the
/// model already knew).
public final class InterleavedDataset: Dataset {
    /// The datasets mixed, in turn order.
    public let parts: [Dataset]
    /// The names of the parts, for messages (default: "part 0", "part 1", …).
    public let partNames: [String]
    /// For every index, the part and the index in that part.
    private let order: [(part: Int, index: Int)]

    /// `parts` taken in turn; `names` label them in `source(of:)`.
    public init(parts: [Dataset], names: [String]? = nil) {
        precondition(!parts.isEmpty, "InterleavedDataset: no parts to mix")
        precondition(names == nil || names!.count == parts.count, "InterleavedDataset: \(names!.count) names for \(parts.count) parts")
        self.parts = parts
        partNames = names ?? parts.indices.map { "part \($0)" }
        let counts = parts.map(\.count)
        var order: [(part: Int, index: Int)] = []
        order.reserveCapacity(counts.reduce(0, +))
        for turn in 0..<(counts.max() ?? 0) {
            for (part, count) in counts.enumerated() where turn < count { order.append((part, turn)) }
        }
        self.order = order
    }

    public var count: Int { order.count }

    /// None: the parts' labels mean different things.
    public var classNames: [String] { [] }

    /// The part an index falls in, and its index there.
    public func location(of index: Int) -> (part: Int, index: Int) { order[index] }

    public func example(at index: Int) throws -> DatasetExample {
        let (part, inner) = order[index]
        var example = try parts[part].example(at: inner)
        example.label = nil
        return example
    }

    public func source(of index: Int) -> String {
        let (part, inner) = order[index]
        return "\(partNames[part]): \(parts[part].source(of: inner))"
    }
}
