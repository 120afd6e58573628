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

    /// Images `[count, 1, 28, 28]` scaled to [-1, 1] and their labels.
    /// - Parameters:
    ///   - training: the 60,000-image training split, else the 10,000-image test split.
    ///   - limit: read only the first `limit` images.
    public static func load(training: Bool = true, limit: Int? = nil, directory: String = directory) throws -> (images: Tensor, labels: [Int]) {
        let prefix = training ? "train" : "t10k"
        let imagePath = "\(directory)/\(prefix)-images-idx3-ubyte.gz"
        let labelPath = "\(directory)/\(prefix)-labels-idx1-ubyte.gz"
        guard FileManager.default.fileExists(atPath: imagePath) else {
            throw DatasetError.notInstalled(name: "fashion-mnist", hint: "install it with `apt-get install dataset-fashion-mnist` (no \(imagePath))")
        }
        let images = try IDXFile(path: imagePath)
        let labels = try IDXFile(path: labelPath)
        guard images.dimensions.count == 3, labels.dimensions.count == 1, images.dimensions[0] == labels.dimensions[0] else {
            throw DatasetError.malformed(path: imagePath, reason: "image dimensions \(images.dimensions) do not match label dimensions \(labels.dimensions)")
        }
        let count = min(limit ?? images.dimensions[0], images.dimensions[0])
        let (height, width) = (images.dimensions[1], images.dimensions[2])
        let values = images.bytes.prefix(count * height * width).map { Float($0) / 127.5 - 1 }
        return (Tensor(Array(values), shape: [count, 1, height, width]), labels.bytes.prefix(count).map { Int($0) })
    }
}
