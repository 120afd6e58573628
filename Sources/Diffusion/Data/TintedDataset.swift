import Foundation
import Tensors

/// A grey dataset made RGB: each example gets its own foreground and
/// background colour (uniform in [0, 1]³, drawn from a generator seeded by the
/// example's index, so an example always has the same colours), and a pixel of
/// grey level g ∈ [0, 1] becomes g·foreground + (1 − g)·background.
///
/// `Datasets.open("tinted-fashion-mnist")` (or `tinted-mnist`) gives the
/// coloured dataset the colour-guidance benchmark trains on.
public final class TintedDataset: Dataset {
    /// The grey dataset.
    public let base: Dataset
    /// Mixed into every example's colour seed.
    public let seed: UInt64

    public var count: Int { base.count }
    public var classNames: [String] { base.classNames }

    /// `base` (one-channel images) tinted with colours drawn from `seed` and each example's index.
    public init(base: Dataset, seed: UInt64 = 0) {
        self.base = base
        self.seed = seed
    }

    /// The foreground and background colours of example `index`, channels in [0, 1].
    public func colors(of index: Int) -> (foreground: [Float], background: [Float]) {
        var generator = RandomGenerator(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(index))
        let values = Tensor.rand([6], low: 0, high: 1, generator: &generator).toArray()
        return (Array(values[0..<3]), Array(values[3..<6]))
    }

    public func example(at index: Int) throws -> DatasetExample {
        var example = try base.example(at: index)
        let grey = example.image
        guard grey.rank == 3, grey.shape[0] == 1 else {
            throw DatasetError.malformed(path: base.source(of: index), reason: "tinting needs a one-channel image, got \(grey.shape)")
        }
        let (foreground, background) = colors(of: index)
        let level = grey.toArray().map { ($0 + 1) / 2 }
        let plane = level.count
        var values = [Float](repeating: 0, count: 3 * plane)
        for channel in 0..<3 {
            for position in 0..<plane {
                let g = level[position]
                values[channel * plane + position] = (g * foreground[channel] + (1 - g) * background[channel]) * 2 - 1
            }
        }
        example.image = Tensor(values, shape: [3, grey.shape[1], grey.shape[2]])
        return example
    }

    public func source(of index: Int) -> String { "tinted " + base.source(of: index) }
}
