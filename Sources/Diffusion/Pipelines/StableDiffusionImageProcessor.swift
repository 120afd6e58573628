import Foundation
import Tensors

/// diffusers' `VaeImageProcessor` for Stable Diffusion: pictures to the VAE's input and its
/// output back to pictures.
public enum StableDiffusionImageProcessor {
    /// `preprocess` of a picture: an RGB picture (grey is repeated to three channels, alpha is
    /// dropped) whose sides are rounded down to multiples of `scaleFactor` (the VAE's factor) is
    /// resized to them with Pillow's Lanczos filter (only when they change), then `value / 255`
    /// mapped to [-1, 1] as `2x − 1`. Returns `[1, 3, height, width]`.
    public static func preprocess(_ picture: PixelImage, scaleFactor: Int = 8) throws -> Tensor {
        guard (1...4).contains(picture.channels) else {
            throw StableDiffusionError("the init image has \(picture.channels) channels; expected grey or RGB")
        }
        // Grey repeated to three channels, alpha dropped.
        var rgb = picture.channels == 3 ? picture : picture.channels == 4 || picture.channels == 2 ? picture.droppingAlpha() : picture
        if rgb.channels == 1 {
            rgb = PixelImage(width: rgb.width, height: rgb.height, channels: 3, samples: rgb.samples.flatMap { [$0, $0, $0] })
        }
        let width = rgb.width - rgb.width % scaleFactor
        let height = rgb.height - rgb.height % scaleFactor
        guard width > 0, height > 0 else {
            throw StableDiffusionError("the init image is \(rgb.width)×\(rgb.height); it must be at least \(scaleFactor)×\(scaleFactor)")
        }
        if width != rgb.width || height != rgb.height { rgb = LanczosResampling.resize(rgb, width: width, height: height) }
        let plane = width * height
        var values = [Float](repeating: 0, count: 3 * plane)
        for pixel in 0..<plane {
            for channel in 0..<3 {
                values[channel * plane + pixel] = 2 * (Float(rgb.samples[pixel * 3 + channel]) / 255) - 1
            }
        }
        return Tensor(values, shape: [1, 3, height, width])
    }

    /// The mask processor's `preprocess` (diffusers' inpainting `VaeImageProcessor(do_normalize=False,
    /// do_binarize=True, do_convert_grayscale=True)`) of a mask picture: its sides rounded down to
    /// multiples of `scaleFactor` and resized with Pillow's Lanczos filter (only when they change), then
    /// Pillow's `convert("L")` (alpha dropped; RGB to luma as `(19595 R + 38470 G + 7471 B + 2¹⁵) >> 16`),
    /// `value / 255`, and binarized: below 0.5 → 0 (keep), else 1 (repaint). White repaints, black keeps.
    /// Returns `[1, 1, height, width]`.
    public static func preprocessMask(_ picture: PixelImage, scaleFactor: Int = 8) throws -> Tensor {
        guard (1...4).contains(picture.channels) else {
            throw StableDiffusionError("the mask has \(picture.channels) channels; expected grey or RGB")
        }
        var image = picture
        let width = image.width - image.width % scaleFactor
        let height = image.height - image.height % scaleFactor
        guard width > 0, height > 0 else {
            throw StableDiffusionError("the mask is \(image.width)×\(image.height); it must be at least \(scaleFactor)×\(scaleFactor)")
        }
        if width != image.width || height != image.height { image = LanczosResampling.resize(image, width: width, height: height) }
        let channels = image.channels
        let plane = width * height
        var values = [Float](repeating: 0, count: plane)
        for pixel in 0..<plane {
            let luma: Int
            if channels >= 3 {
                let base = pixel * channels
                let (red, green, blue) = (Int(image.samples[base]), Int(image.samples[base + 1]), Int(image.samples[base + 2]))
                luma = (red * 19595 + green * 38470 + blue * 7471 + 0x8000) >> 16
            } else {
                luma = Int(image.samples[pixel * channels])
            }
            values[pixel] = Float(luma) / 255 < 0.5 ? 0 : 1
        }
        return Tensor(values, shape: [1, 1, height, width])
    }

    /// diffusers' `prepare_mask_latents` resize: `F.interpolate(mask, size=(h / f, w / f))` in its default
    /// nearest mode, which for an integer factor `f` takes the pixel at `(f·i, f·j)`.
    /// `[masks, 1, H, W]` to `[masks, 1, H / f, W / f]`.
    public static func latentMask(_ mask: Tensor, scaleFactor factor: Int = 8) -> Tensor {
        let (count, height, width) = (mask.shape[0], mask.shape[2], mask.shape[3])
        let (rows, columns) = (height / factor, width / factor)
        let values = mask.contiguous().toArray()
        var result = [Float](repeating: 0, count: count * rows * columns)
        for image in 0..<count {
            for row in 0..<rows {
                for column in 0..<columns {
                    result[(image * rows + row) * columns + column] = values[(image * height + row * factor) * width + column * factor]
                }
            }
        }
        return Tensor(result, shape: [count, 1, rows, columns])
    }

    /// `postprocess(output_type="pil")` of `[batch, 3, height, width]` images in [0, 1]: each value
    /// × 255, rounded half to even (numpy's `round`), as bytes.
    public static func pixelImages(_ images: Tensor) -> [PixelImage] {
        precondition(images.rank == 4, "pixelImages: expected [batch, channels, height, width], got \(images.shape)")
        let (batch, channels, height, width) = (images.shape[0], images.shape[1], images.shape[2], images.shape[3])
        let values = images.contiguous().toArray()
        let plane = height * width
        return (0..<batch).map { index in
            var samples = [UInt8](repeating: 0, count: plane * channels)
            for channel in 0..<channels {
                let base = (index * channels + channel) * plane
                for pixel in 0..<plane {
                    let value = values[base + pixel]
                    let scaled = value.isNaN ? 0 : Swift.min(Swift.max(value, 0), 1) * 255
                    samples[pixel * channels + channel] = UInt8(scaled.rounded(.toNearestOrEven))
                }
            }
            return PixelImage(width: width, height: height, channels: channels, samples: samples)
        }
    }
}

/// Pillow's `Image.resize(size, Image.LANCZOS)` of an 8-bit picture, integer for integer: Lanczos
/// (a = 3) weights widened by the scale when shrinking, normalised, turned into 22-bit fixed point,
/// a horizontal pass then a vertical one, each rounded and clipped to bytes.
enum LanczosResampling {
    private static let precisionBits = 32 - 8 - 2

    private static func sinc(_ x: Double) -> Double {
        if x == 0 { return 1 }
        let scaled = x * Double.pi
        return Foundation.sin(scaled) / scaled
    }

    private static func lanczos(_ x: Double) -> Double { (-3 <= x && x < 3) ? sinc(x) * sinc(x / 3) : 0 }

    /// For each output position: the first input, the number of inputs, and their fixed-point weights.
    private static func coefficients(inputSize: Int, outputSize: Int) -> [(start: Int, weights: [Int])] {
        let scale = Double(inputSize) / Double(outputSize)
        let filterScale = Swift.max(scale, 1)
        let support = 3 * filterScale
        return (0..<outputSize).map { output in
            let center = (Double(output) + 0.5) * scale
            let first = Swift.max(Int(center - support + 0.5), 0)
            let count = Swift.min(Int(center + support + 0.5), inputSize) - first
            var weights = (0..<Swift.max(count, 0)).map { lanczos((Double($0 + first) - center + 0.5) / filterScale) }
            let total = weights.reduce(0, +)
            if total != 0 { weights = weights.map { $0 / total } }
            let one = Double(1 << precisionBits)
            return (first, weights.map { $0 < 0 ? Int(-0.5 + $0 * one) : Int(0.5 + $0 * one) })
        }
    }

    private static func clip(_ value: Int) -> UInt8 {
        if value >= (1 << precisionBits) << 8 { return 255 }
        if value <= 0 { return 0 }
        return UInt8(value >> precisionBits)
    }

    static func resize(_ picture: PixelImage, width: Int, height: Int) -> PixelImage {
        let channels = picture.channels
        var current = picture
        let vertical = coefficients(inputSize: picture.height, outputSize: height)
        if width != picture.width {
            // Only the rows the vertical pass reads, as Pillow does (the result is the same).
            let horizontal = coefficients(inputSize: picture.width, outputSize: width)
            let firstRow = vertical.first!.start
            let lastRow = vertical.last!.start + vertical.last!.weights.count
            var samples = [UInt8](repeating: 0, count: width * (lastRow - firstRow) * channels)
            for row in firstRow..<lastRow {
                for column in 0..<width {
                    let (start, weights) = horizontal[column]
                    for channel in 0..<channels {
                        var sum = 1 << (precisionBits - 1)
                        for (offset, weight) in weights.enumerated() {
                            sum += Int(picture.samples[(row * picture.width + start + offset) * channels + channel]) * weight
                        }
                        samples[((row - firstRow) * width + column) * channels + channel] = clip(sum)
                    }
                }
            }
            current = PixelImage(width: width, height: lastRow - firstRow, channels: channels, samples: samples)
            if height == picture.height && firstRow == 0 && lastRow == picture.height { return current }
            return verticalPass(current, coefficients: vertical.map { ($0.start - firstRow, $0.weights) }, height: height)
        }
        return height == picture.height ? current : verticalPass(current, coefficients: vertical, height: height)
    }

    private static func verticalPass(_ picture: PixelImage, coefficients: [(start: Int, weights: [Int])], height: Int) -> PixelImage {
        let (width, channels) = (picture.width, picture.channels)
        var samples = [UInt8](repeating: 0, count: width * height * channels)
        for row in 0..<height {
            let (start, weights) = coefficients[row]
            for column in 0..<width {
                for channel in 0..<channels {
                    var sum = 1 << (precisionBits - 1)
                    for (offset, weight) in weights.enumerated() {
                        sum += Int(picture.samples[((start + offset) * width + column) * channels + channel]) * weight
                    }
                    samples[(row * width + column) * channels + channel] = clip(sum)
                }
            }
        }
        return PixelImage(width: width, height: height, channels: channels, samples: samples)
    }
}
