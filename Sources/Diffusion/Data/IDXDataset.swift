import Foundation
import Tensors

/// Images and labels from a pair of MNIST-format IDX files (plain or `.gz`),
/// decoded once and kept in memory as bytes: `[count, height, width]` images
/// (grey) or `[count, height, width, channels]` (interleaved), and `[count]` labels.
public final class IDXDataset: Dataset {
    /// The images, as read from the file.
    public let images: IDXFile
    /// One label per image.
    public let labels: [Int]
    public let classNames: [String]
    public let count: Int
    /// Image height, width and channels.
    public let height: Int, width: Int, channels: Int
    private let name: String

    /// Reads `imagesPath` and `labelsPath`.
    /// - Parameters:
    ///   - classNames: the names of the labels (defaults to "0", "1", …, one per distinct label value).
    ///   - limit: keep only the first `limit` examples.
    ///   - name: the dataset's name in warnings (defaults to the images' path).
    public init(imagesPath: String, labelsPath: String, classNames: [String]? = nil, limit: Int? = nil, name: String? = nil) throws {
        let images = try IDXFile(path: imagesPath)
        let labelFile = try IDXFile(path: labelsPath)
        guard images.dimensions.count == 3 || (images.dimensions.count == 4 && [1, 3].contains(images.dimensions[3])) else {
            throw DatasetError.malformed(path: imagesPath, reason: "IDX images must be [count, height, width] or [count, height, width, 1 or 3], got \(images.dimensions)")
        }
        guard labelFile.dimensions.count == 1, labelFile.dimensions[0] == images.dimensions[0] else {
            throw DatasetError.malformed(path: labelsPath, reason: "label dimensions \(labelFile.dimensions) do not match image dimensions \(images.dimensions)")
        }
        self.images = images
        self.count = Swift.min(Swift.max(limit ?? images.dimensions[0], 0), images.dimensions[0])
        self.labels = labelFile.bytes.prefix(count).map { Int($0) }
        self.height = images.dimensions[1]
        self.width = images.dimensions[2]
        self.channels = images.dimensions.count == 4 ? images.dimensions[3] : 1
        self.classNames = classNames ?? (0...(labelFile.bytes.max().map(Int.init) ?? 0)).map(String.init)
        self.name = name ?? imagesPath
    }

    public func example(at index: Int) throws -> DatasetExample {
        precondition(index >= 0 && index < count, "IDXDataset: index \(index) out of 0..<\(count)")
        let size = height * width * channels
        let start = index * size
        let pixels = PixelImage(width: width, height: height, channels: channels,
                                samples: Array(images.bytes[start..<(start + size)]))
        return DatasetExample(image: pixels.tensor(), label: labels[index])
    }

    public func source(of index: Int) -> String { "\(name) example \(index)" }

    /// All images as one `[count, channels, height, width]` tensor in [-1, 1].
    public func allImages() -> Tensor {
        let size = height * width * channels
        if channels == 1 {
            let values = images.bytes.prefix(count * size).map { Float($0) / 127.5 - 1 }
            return Tensor(Array(values), shape: [count, 1, height, width])
        }
        return Tensor.stack((0..<count).map { index in
            PixelImage(width: width, height: height, channels: channels,
                       samples: Array(images.bytes[(index * size)..<((index + 1) * size)])).tensor()
        })
    }
}

/// MNIST (handwritten digits, 28×28 grey, 10 classes), fetched once by `make data`
/// into `data/mnist/` of the Diffuse checkout.
public enum MNIST {
    /// The environment variable naming another folder that holds `mnist/` (default: `data`).
    public static let dataEnvironmentVariable = "DIFFUSE_DATA"

    /// The folder looked in: `$DIFFUSE_DATA/mnist`, else `data/mnist` under the current directory.
    public static var directory: String {
        let root = ProcessInfo.processInfo.environment[dataEnvironmentVariable] ?? "data"
        return (root as NSString).appendingPathComponent("mnist")
    }

    /// The class names, by label.
    public static let classNames = (0...9).map(String.init)

    /// The training (60,000 images) or test (10,000 images) split.
    /// Throws `DatasetError.notInstalled` telling the user to run `make data` when the files are missing.
    public static func dataset(training: Bool = true, limit: Int? = nil, directory: String = directory) throws -> IDXDataset {
        try idxDataset(name: "mnist", directory: directory, training: training, limit: limit, classNames: classNames) { path in
            "run `make data` once in the Diffuse checkout to fetch it into data/mnist/ "
                + "(or set \(dataEnvironmentVariable) to the folder holding mnist/); \(path) is missing"
        }
    }

    /// Opens `<prefix>-images-idx3-ubyte[.gz]` and `<prefix>-labels-idx1-ubyte[.gz]` in `directory`.
    static func idxDataset(name: String, directory: String, training: Bool, limit: Int?, classNames: [String],
                           hint: (String) -> String) throws -> IDXDataset {
        let prefix = training ? "train" : "t10k"
        func locate(_ stem: String) throws -> String {
            let base = (directory as NSString).appendingPathComponent(stem)
            for candidate in [base + ".gz", base] where FileManager.default.fileExists(atPath: candidate) { return candidate }
            throw DatasetError.notInstalled(name: name, hint: hint(base + ".gz"))
        }
        return try IDXDataset(imagesPath: try locate("\(prefix)-images-idx3-ubyte"),
                              labelsPath: try locate("\(prefix)-labels-idx1-ubyte"),
                              classNames: classNames, limit: limit, name: name)
    }
}
