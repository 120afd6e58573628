import Foundation
import Tensors

/// Fashion-MNIST from the Debian package `dataset-fashion-mnist`
/// (`/usr/share/datasets/fashion-mnist`): 28×28 grey images in 10 classes.
public enum FashionMNIST {
    /// Where the Debian package installs the IDX files.
    public static let directory = "/usr/share/datasets/fashion-mnist"

    /// The class names, by label.
    public static let classNames = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

    /// The training (60,000 images) or test (10,000 images) split as a dataset,
    /// decoded once and held in memory.
    public static func dataset(training: Bool = true, limit: Int? = nil, directory: String = directory) throws -> IDXDataset {
        try MNIST.idxDataset(name: "fashion-mnist", directory: directory, training: training, limit: limit, classNames: classNames) { path in
            "install it with `apt-get install dataset-fashion-mnist` (no \(path))"
        }
    }

    /// Images `[count, 1, 28, 28]` scaled to [-1, 1] and their labels.
    /// - Parameters:
    ///   - training: the 60,000-image training split, else the 10,000-image test split.
    ///   - limit: read only the first `limit` images.
    public static func load(training: Bool = true, limit: Int? = nil, directory: String = directory) throws -> (images: Tensor, labels: [Int]) {
        let data = try dataset(training: training, limit: limit, directory: directory)
        return (data.allImages(), data.labels)
    }
}
