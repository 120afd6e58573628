import Foundation
import Tensors

/// A captioned dataset built from a labelled grey one (Fashion-MNIST): every
/// example is tinted with a *named* foreground colour and a different named
/// background colour, and described by a caption from one of a few templates
/// ("a red sneaker on a blue background", "a photo of a yellow bag", …).
///
/// Colours and template are drawn from a generator seeded by the dataset's
/// seed and the example's index, so an example is always the same. A pixel of
/// grey level g ∈ [0, 1] becomes g·foreground + (1 − g)·background, as in
/// ``TintedDataset``; each colour is its ``NamedColor/rgb`` moved by up to
/// ±`colorJitter` per channel (so a model learns colour regions, not six exact values).
///
/// `diffuse train-clip --dataset captioned-tinted-fashion-mnist` trains on it.
public final class CaptionedTintedDataset: Dataset {
    /// The name the command line knows it by.
    public static let name = "captioned-tinted-fashion-mnist"

    /// Fashion-MNIST's classes as caption words (singular, lower case), by label.
    public static let itemNames = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]

    /// How a caption is worded.
    public enum CaptionTemplate: Int, CaseIterable, Sendable {
        /// "a red sneaker on a blue background"
        case foregroundOnBackground
        /// "a photo of a red sneaker"
        case photoOfForeground
        /// "a red sneaker"
        case foregroundOnly
        /// "a red sneaker on blue"
        case foregroundOnShortBackground
        /// "a photo of a sneaker"
        case photoOfItem
        /// "a sneaker on a blue background"
        case itemOnBackground
        /// "a photo of a red sneaker on a blue background"
        case photoOfForegroundOnBackground

        /// The caption of `item` in `foreground` on `background`.
        public func caption(item: String, foreground: NamedColor, background: NamedColor) -> String {
            let coloured = IndefiniteArticle.with("\(foreground.name) \(item)")
            let plain = IndefiniteArticle.with(item)
            let backdrop = "on \(IndefiniteArticle.with(background.name)) background"
            switch self {
            case .foregroundOnBackground: return "\(coloured) \(backdrop)"
            case .photoOfForeground: return "a photo of \(coloured)"
            case .foregroundOnly: return coloured
            case .foregroundOnShortBackground: return "\(coloured) on \(background.name)"
            case .photoOfItem: return "a photo of \(plain)"
            case .itemOnBackground: return "\(plain) \(backdrop)"
            case .photoOfForegroundOnBackground: return "a photo of \(coloured) \(backdrop)"
            }
        }
    }

    /// What example `index` shows and says.
    public struct Description: Equatable, Sendable {
        /// The class label, its caption word, the two named colours and the template.
        public var label: Int, item: String
        public var foreground: NamedColor, background: NamedColor
        public var template: CaptionTemplate
        /// The colours actually painted (the named ones with jitter), channels in [0, 1].
        public var foregroundRGB: [Float], backgroundRGB: [Float]
        /// The caption.
        public var caption: String
    }

    /// The grey, labelled dataset.
    public let base: Dataset
    /// Mixed into every example's draws.
    public let seed: UInt64
    /// The largest change to a named colour's channel.
    public let colorJitter: Float
    /// The caption word of each class label.
    public let itemNames: [String]
    /// Foreground colour–item pairs that no example shows (nor any caption names): an
    /// example that draws one is painted in the next colour instead. A model trained on
    /// the rest can then be asked for them (composition it never saw).
    public let heldOutPairs: Set<ColoredItem>

    /// A foreground colour on an item (a class label).
    /// A colour–item pair; ordered by item, then by colour name (the order runs list held-out pairs in).
    public struct ColoredItem: Hashable, Sendable, Codable, Comparable, CustomStringConvertible {
        public var color: NamedColor
        public var label: Int
        public init(color: NamedColor, label: Int) {
            self.color = color
            self.label = label
        }
        public var description: String { "\(color.name) \(CaptionedTintedDataset.itemNames.indices.contains(label) ? CaptionedTintedDataset.itemNames[label] : "class \(label)")" }
        public static func < (lhs: ColoredItem, rhs: ColoredItem) -> Bool {
            (lhs.label, lhs.color.rawValue) < (rhs.label, rhs.color.rawValue)
        }
    }

    /// The pairs the text-to-image demo holds out of training: one per evaluation colour
    /// (red, green, blue, yellow), each on a different item.
    public static let demoHeldOutPairs: Set<ColoredItem> = [
        ColoredItem(color: .red, label: 7), ColoredItem(color: .green, label: 3),
        ColoredItem(color: .blue, label: 8), ColoredItem(color: .yellow, label: 1),
    ]

    public var count: Int { base.count }
    public var classNames: [String] { base.classNames }

    /// `base` (one-channel images with labels) tinted and captioned.
    /// - Parameter itemNames: the caption word of each label (default: the base's class names, lower-cased).
    /// - Parameter heldOutPairs: foreground colour–item pairs never shown (see ``heldOutPairs``).
    public init(base: Dataset, seed: UInt64 = 0, colorJitter: Float = 0.05, itemNames: [String]? = nil,
                heldOutPairs: Set<ColoredItem> = []) {
        self.base = base
        self.seed = seed
        self.colorJitter = colorJitter
        self.itemNames = itemNames ?? base.classNames.map { $0.lowercased() }
        self.heldOutPairs = heldOutPairs
    }

    /// Fashion-MNIST's training or test split, captioned. The test split draws
    /// its colours with another seed, so its pairs are not the training ones.
    public static func fashionMNIST(training: Bool = true, limit: Int? = nil, seed: UInt64 = 0,
                                    colorJitter: Float = 0.05, heldOutPairs: Set<ColoredItem> = []) throws -> CaptionedTintedDataset {
        let base = try FashionMNIST.dataset(training: training, limit: limit)
        return CaptionedTintedDataset(base: base, seed: training ? seed : seed ^ 0x7E57_5EED, colorJitter: colorJitter, itemNames: itemNames,
                                      heldOutPairs: heldOutPairs)
    }

    /// The colours, template and caption of example `index` for class `label`.
    public func description(of index: Int, label: Int) -> Description {
        var generator = RandomGenerator(seed: seed &* 0xD1B5_4A32_D192_ED03 &+ UInt64(index) &+ 0x43A9)
        let colors = NamedColor.allCases
        var foregroundIndex = generator.integer(below: colors.count)
        // A held-out pair moves to the next colour that is not held out for this item
        // (the draws that follow are unchanged, so every other example stays as it was).
        var moves = 0
        while moves < colors.count && heldOutPairs.contains(ColoredItem(color: colors[foregroundIndex], label: label)) {
            foregroundIndex = (foregroundIndex + 1) % colors.count
            moves += 1
        }
        let foreground = colors[foregroundIndex]
        var backgroundIndex = generator.integer(below: colors.count - 1)
        if backgroundIndex >= colors.firstIndex(of: foreground)! { backgroundIndex += 1 }
        let background = colors[backgroundIndex]
        let template = CaptionTemplate.allCases[generator.integer(below: CaptionTemplate.allCases.count)]
        func jittered(_ color: NamedColor) -> [Float] {
            color.rgb.map { channel in Swift.min(1, Swift.max(0, channel + (generator.uniform() * 2 - 1) * colorJitter)) }
        }
        let foregroundRGB = jittered(foreground)
        let backgroundRGB = jittered(background)
        let item = itemNames.indices.contains(label) ? itemNames[label] : "thing"
        return Description(label: label, item: item, foreground: foreground, background: background, template: template,
                           foregroundRGB: foregroundRGB, backgroundRGB: backgroundRGB,
                           caption: template.caption(item: item, foreground: foreground, background: background))
    }

    /// The description of example `index` (reads its label from the base dataset).
    public func description(of index: Int) throws -> Description {
        let example = try base.example(at: index)
        guard let label = example.label else {
            throw DatasetError.malformed(path: base.source(of: index), reason: "captioning needs a class label")
        }
        return description(of: index, label: label)
    }

    public func example(at index: Int) throws -> DatasetExample {
        let grey = try base.example(at: index)
        guard grey.image.rank == 3, grey.image.shape[0] == 1 else {
            throw DatasetError.malformed(path: base.source(of: index), reason: "tinting needs a one-channel image, got \(grey.image.shape)")
        }
        guard let label = grey.label else {
            throw DatasetError.malformed(path: base.source(of: index), reason: "captioning needs a class label")
        }
        let description = description(of: index, label: label)
        let image = Self.tint(grey.image, foreground: description.foregroundRGB, background: description.backgroundRGB)
        return DatasetExample(image: image, label: label, caption: description.caption)
    }

    /// A grey image `[1, H, W]` in [-1, 1] painted: `[3, H, W]` in [-1, 1].
    public static func tint(_ grey: Tensor, foreground: [Float], background: [Float]) -> Tensor {
        let level = grey.toArray().map { ($0 + 1) / 2 }
        let plane = level.count
        var values = [Float](repeating: 0, count: 3 * plane)
        for channel in 0..<3 {
            let (front, back) = (foreground[channel], background[channel])
            for position in 0..<plane {
                let g = level[position]
                values[channel * plane + position] = (g * front + (1 - g) * back) * 2 - 1
            }
        }
        return Tensor(values, shape: [3, grey.shape[1], grey.shape[2]])
    }

    public func source(of index: Int) -> String { "captioned tinted " + base.source(of: index) }
}
