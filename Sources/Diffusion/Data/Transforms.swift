import Foundation
import Tensors

/// A change to one example's image, `[channels, height, width]` in [-1, 1].
///
/// The loader applies transforms per example with a generator seeded from the
/// loader's seed, the epoch and the example's index, so random transforms give
/// the same result however the example is reached (foreground or background
/// loading, after a restored position).
public protocol ImageTransform {
    /// The transformed image; random transforms draw from `generator`.
    func apply(_ image: Tensor, generator: inout RandomGenerator) -> Tensor
}

/// Transforms applied one after another.
public struct ComposedTransform: ImageTransform {
    /// The transforms, in order.
    public var transforms: [ImageTransform]

    /// Applies `transforms` in order.
    public init(_ transforms: [ImageTransform]) { self.transforms = transforms }

    public func apply(_ image: Tensor, generator: inout RandomGenerator) -> Tensor {
        transforms.reduce(image) { current, transform in transform.apply(current, generator: &generator) }
    }
}

/// Ready-made transform chains.
public enum ImageTransforms {
    /// diffusers' `train_unconditional.py` preprocessing: convert to `channels`,
    /// resize the shorter side to `size` (bilinear), center-crop `size × size`,
    /// and (when `randomFlip`) flip horizontally with probability 0.5. Scaling to
    /// [-1, 1] already happens when an image is decoded.
    public static func standard(size: Int, channels: Int, randomFlip: Bool = false) -> ComposedTransform {
        var transforms: [ImageTransform] = [ConvertChannels(channels), Resize(shorterSide: size), CenterCrop(size)]
        if randomFlip { transforms.append(RandomHorizontalFlip()) }
        return ComposedTransform(transforms)
    }
}

/// The planes, height and width of a `[C, H, W]` image (checked).
private func dimensions(_ image: Tensor, _ name: String) -> (channels: Int, height: Int, width: Int) {
    guard image.rank == 3 else { fatalError("\(name): expected an image [C, H, W], got shape \(image.shape)") }
    return (image.shape[0], image.shape[1], image.shape[2])
}

/// Bilinear resize, to a fixed size or with the shorter side to a length
/// (aspect ratio kept, the longer side truncated, as torchvision's `Resize(int)`).
/// With `antialias` (the default, as Pillow and torchvision ≥ 0.17) shrinking
/// averages over every covered input pixel; without it, it is PyTorch's plain
/// `interpolate(mode="bilinear")`.
public struct Resize: ImageTransform {
    /// The requested size.
    public enum Size {
        case exact(height: Int, width: Int)
        case shorterSide(Int)
    }
    public var size: Size
    public var antialias: Bool

    /// Resize to `height × width`.
    public init(height: Int, width: Int, antialias: Bool = true) {
        precondition(height > 0 && width > 0, "Resize: size must be positive, got \(height)×\(width)")
        size = .exact(height: height, width: width)
        self.antialias = antialias
    }

    /// Resize so the shorter side is `shorterSide` long.
    public init(shorterSide: Int, antialias: Bool = true) {
        precondition(shorterSide > 0, "Resize: size must be positive, got \(shorterSide)")
        size = .shorterSide(shorterSide)
        self.antialias = antialias
    }

    /// The output height and width for an input of `height × width`.
    public func outputSize(height: Int, width: Int) -> (height: Int, width: Int) {
        switch size {
        case let .exact(newHeight, newWidth): return (newHeight, newWidth)
        case let .shorterSide(side):
            if height <= width { return (side, Swift.max(1, Int(Double(side) * Double(width) / Double(height)))) }
            return (Swift.max(1, Int(Double(side) * Double(height) / Double(width))), side)
        }
    }

    public func apply(_ image: Tensor, generator: inout RandomGenerator) -> Tensor {
        let (channels, height, width) = dimensions(image, "Resize")
        let (newHeight, newWidth) = outputSize(height: height, width: width)
        if newHeight == height && newWidth == width { return image }
        let values = Resampling.resize(image.toArray(), planes: channels, height: height, width: width,
                                       newHeight: newHeight, newWidth: newWidth, antialias: antialias)
        return Tensor(values, shape: [channels, newHeight, newWidth])
    }
}

/// Crops the centre `height × width` (torchvision's `CenterCrop`: the offset is
/// `round((size − crop) / 2)`, half to even); an image smaller than the crop is
/// first padded with black (-1) around it.
public struct CenterCrop: ImageTransform {
    public var height: Int, width: Int

    /// A `height × width` crop.
    public init(height: Int, width: Int) {
        precondition(height > 0 && width > 0, "CenterCrop: size must be positive, got \(height)×\(width)")
        self.height = height
        self.width = width
    }

    /// A square `size × size` crop.
    public init(_ size: Int) { self.init(height: size, width: size) }

    /// The first source index of the crop along an axis (negative when padding).
    static func origin(size: Int, crop: Int) -> Int {
        if size >= crop { return Int((Double(size - crop) / 2).rounded(.toNearestOrEven)) }
        return -((crop - size) / 2)
    }

    public func apply(_ image: Tensor, generator: inout RandomGenerator) -> Tensor {
        let (channels, imageHeight, imageWidth) = dimensions(image, "CenterCrop")
        if imageHeight == height && imageWidth == width { return image }
        let top = CenterCrop.origin(size: imageHeight, crop: height)
        let left = CenterCrop.origin(size: imageWidth, crop: width)
        let values = image.toArray()
        var result = [Float](repeating: -1, count: channels * height * width)
        for channel in 0..<channels {
            for row in 0..<height {
                let sourceRow = top + row
                guard sourceRow >= 0 && sourceRow < imageHeight else { continue }
                for column in 0..<width {
                    let sourceColumn = left + column
                    guard sourceColumn >= 0 && sourceColumn < imageWidth else { continue }
                    result[(channel * height + row) * width + column] = values[(channel * imageHeight + sourceRow) * imageWidth + sourceColumn]
                }
            }
        }
        return Tensor(result, shape: [channels, height, width])
    }
}

/// Mirrors the image left–right with probability `probability`; always draws
/// exactly one number from the generator.
public struct RandomHorizontalFlip: ImageTransform {
    public var probability: Float

    /// Flips with probability `probability` (default 0.5).
    public init(probability: Float = 0.5) { self.probability = probability }

    public func apply(_ image: Tensor, generator: inout RandomGenerator) -> Tensor {
        let flip = generator.uniform() < probability
        guard flip else { return image }
        return HorizontalFlip().apply(image, generator: &generator)
    }
}

/// Mirrors the image left–right.
public struct HorizontalFlip: ImageTransform {
    /// A flip.
    public init() {}

    public func apply(_ image: Tensor, generator: inout RandomGenerator) -> Tensor {
        let (channels, height, width) = dimensions(image, "HorizontalFlip")
        var values = image.toArray()
        for line in 0..<(channels * height) { values[(line * width)..<((line + 1) * width)].reverse() }
        return Tensor(values, shape: [channels, height, width])
    }
}

/// Converts to `channels` channels: grey → RGB repeats the plane; RGB → grey is
/// ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B, Pillow's `convert("L")`); one
/// channel to several repeats it; other mismatches keep the first `channels`.
public struct ConvertChannels: ImageTransform {
    public var channels: Int

    /// Convert to `channels` (1 or 3 usually).
    public init(_ channels: Int) {
        precondition(channels > 0, "ConvertChannels: channel count must be positive, got \(channels)")
        self.channels = channels
    }

    public func apply(_ image: Tensor, generator: inout RandomGenerator) -> Tensor {
        let (current, height, width) = dimensions(image, "ConvertChannels")
        if current == channels { return image }
        let values = image.toArray()
        let plane = height * width
        var result = [Float](repeating: 0, count: channels * plane)
        if current == 1 {
            for channel in 0..<channels { result.replaceSubrange((channel * plane)..<((channel + 1) * plane), with: values) }
        } else if current >= 3 && channels == 1 {
            for pixel in 0..<plane {
                result[pixel] = 0.299 * values[pixel] + 0.587 * values[plane + pixel] + 0.114 * values[2 * plane + pixel]
            }
        } else if current > channels {
            result = Array(values[0..<(channels * plane)])
        } else {
            fatalError("ConvertChannels: cannot convert \(current) channels to \(channels)")
        }
        return Tensor(result, shape: [channels, height, width])
    }
}

/// Maps values linearly from one range to another, e.g. [0, 1] → [-1, 1] for a
/// custom dataset whose images are in [0, 1] (torchvision's `Normalize(0.5, 0.5)`).
/// Datasets of this module already give [-1, 1].
public struct Rescale: ImageTransform {
    public var source: ClosedRange<Float>, target: ClosedRange<Float>

    /// From `source` to `target` (default [0, 1] → [-1, 1]).
    public init(from source: ClosedRange<Float> = 0...1, to target: ClosedRange<Float> = -1...1) {
        precondition(source.upperBound > source.lowerBound, "Rescale: empty source range \(source)")
        self.source = source
        self.target = target
    }

    public func apply(_ image: Tensor, generator: inout RandomGenerator) -> Tensor {
        let factor = (target.upperBound - target.lowerBound) / (source.upperBound - source.lowerBound)
        let values = image.toArray().map { target.lowerBound + ($0 - source.lowerBound) * factor }
        return Tensor(values, shape: image.shape)
    }
}
