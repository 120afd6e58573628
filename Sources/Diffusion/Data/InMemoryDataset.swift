import Foundation
import Tensors

/// A dataset held in memory: images `[N, C, H, W]` in [-1, 1] with optional labels.
public final class InMemoryDataset: Dataset {
    /// All images.
    public let images: Tensor
    /// The labels, by example (nil: no classes).
    public let labels: [Int]?
    public let classNames: [String]
    public let count: Int

    /// A dataset of `images` (`[N, C, H, W]`); `labels` index into `classNames`.
    public init(images: Tensor, labels: [Int]? = nil, classNames: [String] = []) {
        precondition(images.rank == 4, "InMemoryDataset: images must be [N, C, H, W], got \(images.shape)")
        precondition(labels == nil || labels!.count == images.shape[0], "InMemoryDataset: \(labels?.count ?? 0) labels for \(images.shape[0]) images")
        self.images = images.contiguous()
        self.labels = labels
        self.classNames = classNames
        count = images.shape[0]
    }

    public func example(at index: Int) throws -> DatasetExample {
        let image = images.narrowed(axis: 0, start: index, length: 1).contiguous().reshaped(Array(images.shape.dropFirst()))
        return DatasetExample(image: image, label: labels?[index])
    }

    public func source(of index: Int) -> String { "in-memory example \(index)" }
}
