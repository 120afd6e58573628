import Foundation
import Tensors

/// MNIST as image–caption pairs for text-to-image fine-tuning: every digit grey
/// on black, made RGB (the grey level in all three channels) and brought to
/// `size`×`size` exactly as the text-to-image trainer brings the 28×28 captioned
/// tinted Fashion-MNIST to 32×32 (``ImageTransforms/standard(size:channels:randomFlip:)``:
/// bilinear with antialiasing, shorter side to `size`, centre crop), so a VAE
/// trained on those sees the same scale. The caption names the label:
/// "a handwritten digit seven".
///
/// `diffuse train-text-to-image --dataset captioned-mnist` trains on it.
public final class CaptionedMNISTDataset: Dataset {
    /// The name the command line knows it by.
    public static let name = "captioned-mnist"
    /// The other spellings the command line accepts.
    public static let aliases = ["captioned_mnist"]

    /// The digits as caption words, by label.
    public static let digitNames = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

    /// The caption of `label`: "a handwritten digit seven".
    public static func caption(label: Int) -> String {
        precondition(digitNames.indices.contains(label), "CaptionedMNISTDataset: label \(label) is not a digit")
        return "a handwritten digit \(digitNames[label])"
    }

    /// True when `name` is this dataset's name (any case) or an alias.
    public static func isNamed(_ name: String) -> Bool {
        ([self.name] + aliases).contains(name.lowercased())
    }

    /// The grey, labelled digits (`[1, H, W]` in [-1, 1], labels 0…9).
    public let base: Dataset
    /// The side of every image.
    public let size: Int
    private let transform: ComposedTransform

    public var count: Int { base.count }
    public var classNames: [String] { base.classNames }

    /// `base` made RGB at `size`×`size` and captioned.
    public init(base: Dataset, size: Int = 32) {
        precondition(size > 0, "CaptionedMNISTDataset: size must be positive, got \(size)")
        self.base = base
        self.size = size
        transform = ImageTransforms.standard(size: size, channels: 3)
    }

    /// MNIST's training or test split (after `make data`), captioned.
    public static func mnist(training: Bool = true, limit: Int? = nil, size: Int = 32) throws -> CaptionedMNISTDataset {
        CaptionedMNISTDataset(base: try MNIST.dataset(training: training, limit: limit), size: size)
    }

    public func example(at index: Int) throws -> DatasetExample {
        let grey = try base.example(at: index)
        guard grey.image.rank == 3, grey.image.shape[0] == 1 else {
            throw DatasetError.malformed(path: base.source(of: index), reason: "a digit must be a one-channel image, got \(grey.image.shape)")
        }
        guard let label = grey.label, Self.digitNames.indices.contains(label) else {
            throw DatasetError.malformed(path: base.source(of: index), reason: "captioning needs a digit label 0…9, got \(String(describing: grey.label))")
        }
        var unused = RandomGenerator(seed: 0)
        let image = transform.apply(grey.image, generator: &unused)
        return DatasetExample(image: image, label: label, caption: Self.caption(label: label))
    }

    public func source(of index: Int) -> String { "captioned " + base.source(of: index) }
}
