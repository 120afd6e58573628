import Foundation
import Tensors

/// An 8-bit image in memory: `height` rows of `width` pixels, each `channels`
/// interleaved samples (1 grey, 3 RGB; decoders drop alpha, so 2 and 4 occur only
/// for images built by hand). This is what the PNG and JPEG decoders return and
/// what the PNG writer takes.
public struct PixelImage: Equatable, Sendable {
    /// Pixels per row.
    public let width: Int
    /// Rows.
    public let height: Int
    /// Samples per pixel.
    public let channels: Int
    /// `height × width × channels` samples, row by row, interleaved.
    public var samples: [UInt8]

    /// An image of the given size holding `samples` (row-major, interleaved).
    public init(width: Int, height: Int, channels: Int, samples: [UInt8]) {
        precondition(width >= 0 && height >= 0 && (1...4).contains(channels),
                     "PixelImage: invalid size \(width)×\(height)×\(channels)")
        precondition(samples.count == width * height * channels,
                     "PixelImage: \(samples.count) samples do not fill \(width)×\(height)×\(channels)")
        self.width = width
        self.height = height
        self.channels = channels
        self.samples = samples
    }

    /// The sample of channel `channel` at row `row`, column `column`.
    public subscript(row: Int, column: Int, channel: Int) -> UInt8 {
        samples[(row * width + column) * channels + channel]
    }

    /// The same image without its alpha channel (grey+alpha → grey, RGBA → RGB);
    /// images without alpha are returned unchanged.
    public func droppingAlpha() -> PixelImage {
        guard channels == 2 || channels == 4 else { return self }
        let kept = channels - 1
        var result = [UInt8](repeating: 0, count: width * height * kept)
        for pixel in 0..<(width * height) {
            for channel in 0..<kept { result[pixel * kept + channel] = samples[pixel * channels + channel] }
        }
        return PixelImage(width: width, height: height, channels: kept, samples: result)
    }

    /// A `[channels, height, width]` tensor with 0…255 mapped to [-1, 1]
    /// (`value / 127.5 - 1`, as torchvision's ToTensor then Normalize(0.5, 0.5)).
    public func tensor() -> Tensor {
        let plane = width * height
        var values = [Float](repeating: 0, count: plane * channels)
        for pixel in 0..<plane {
            for channel in 0..<channels {
                values[channel * plane + pixel] = Float(samples[pixel * channels + channel]) / 127.5 - 1
            }
        }
        return Tensor(values, shape: [channels, height, width])
    }

    /// The image of a `[channels, height, width]` (or `[1, channels, height, width]`,
    /// or `[height, width]` grey) tensor in [-1, 1]: values are clamped, then
    /// `round((value + 1) × 127.5)`. Channels must be 1 to 4.
    public init(tensor: Tensor) {
        var shape = tensor.shape
        if shape.count == 4 && shape[0] == 1 { shape.removeFirst() }
        if shape.count == 2 { shape.insert(1, at: 0) }
        precondition(shape.count == 3 && (1...4).contains(shape[0]),
                     "PixelImage(tensor:): expected [C, H, W] with 1 to 4 channels, got \(tensor.shape)")
        let (channels, height, width) = (shape[0], shape[1], shape[2])
        let values = tensor.toArray()
        let plane = width * height
        var samples = [UInt8](repeating: 0, count: values.count)
        for channel in 0..<channels {
            for pixel in 0..<plane {
                samples[pixel * channels + channel] = PixelImage.quantize(values[channel * plane + pixel])
            }
        }
        self.init(width: width, height: height, channels: channels, samples: samples)
    }

    /// A value in [-1, 1] as a byte: clamped, scaled to 0…255 and rounded; NaN becomes 0.
    @inline(__always)
    static func quantize(_ value: Float) -> UInt8 {
        guard !value.isNaN else { return 0 }
        let scaled = ((Swift.min(Swift.max(value, -1), 1) + 1) * 127.5).rounded()
        return UInt8(scaled)
    }
}
