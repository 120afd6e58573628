import Foundation
import Tensors

/// One example of a dataset.
public struct DatasetExample {
    /// The image, `[channels, height, width]` with values in [-1, 1].
    public var image: Tensor
    /// The class label (an index into the dataset's `classNames`), if the dataset has classes.
    public var label: Int?
    /// The caption, if the dataset has captions.
    public var caption: String?

    /// An example.
    public init(image: Tensor, label: Int? = nil, caption: String? = nil) {
        self.image = image
        self.label = label
        self.caption = caption
    }
}

/// A finite, indexable collection of images with optional labels and captions.
///
/// `example(at:)` may be called from a background thread (the `DataLoader`'s
/// producer), one call at a time, so an implementation must not rely on running
/// on the thread that created it.
public protocol Dataset: AnyObject {
    /// Number of examples.
    var count: Int { get }
    /// The example at `index` (`0 ..< count`). Throws (naming the file) when a
    /// lazily read example cannot be decoded; the loader then skips it.
    func example(at index: Int) throws -> DatasetExample
    /// Class names, by label; empty when the dataset has no classes.
    var classNames: [String] { get }
    /// Where example `index` comes from (a file path, or a name and index), for warnings.
    func source(of index: Int) -> String
}

extension Dataset {
    public func source(of index: Int) -> String { "example \(index)" }
}

/// Datasets by name or path, as the command line takes them.
public enum Datasets {
    /// The names `open(_:)` knows.
    public static let names = ["mnist", "fashion-mnist", "tinted-mnist", "tinted-fashion-mnist"]

    /// `"mnist"` (after `make data`), `"fashion-mnist"` (the Debian package
    /// `dataset-fashion-mnist`), `"tinted-mnist"` / `"tinted-fashion-mnist"` (the
    /// same made RGB with random colours per example, see ``TintedDataset``), or
    /// the path of an image folder (PNG/JPEG, class labels from sub-folders,
    /// captions from `metadata.jsonl`).
    /// - Parameters:
    ///   - training: for the named datasets, the training split, else the test split.
    ///   - limit: for the named datasets, keep only the first `limit` examples.
    public static func open(_ nameOrPath: String, training: Bool = true, limit: Int? = nil) throws -> Dataset {
        switch nameOrPath.lowercased() {
        case "mnist": return try MNIST.dataset(training: training, limit: limit)
        case "fashion-mnist", "fashion_mnist", "fashionmnist": return try FashionMNIST.dataset(training: training, limit: limit)
        case "tinted-mnist": return TintedDataset(base: try MNIST.dataset(training: training, limit: limit))
        case "tinted-fashion-mnist": return TintedDataset(base: try FashionMNIST.dataset(training: training, limit: limit))
        default:
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: nameOrPath, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw DatasetError.notInstalled(
                    name: nameOrPath,
                    hint: "it is neither a known dataset (\(names.joined(separator: ", "))) nor an image folder")
            }
            return try ImageFolderDataset(directory: nameOrPath)
        }
    }
}
