import Foundation

/// Convolutions with few output pixels (small images at small batches: Stable Diffusion's deepest
/// levels at batch 1, 4×4 and 8×8 with 1,280 channels; 2×2 images at any batch).
///
/// There the weights outweigh the activations: a 1,280 → 1,280 3×3 weight is 59 MB against 16
/// output pixels, and the Winograd and im2col paths each re-lay the whole weight out on every call
/// (4× its size for Winograd) before computing a few pixels. This path instead copies the patches
/// in the weight's own order (channel, kernel row, kernel column) — a matrix of
/// `outputPixels × inChannels·kh·kw`, small here — and runs one matrix product over all workers that
/// reads the `[O, C·kh·kw]` weight where it lies, for the forward pass, the data gradient and the
/// weight gradient alike (the latter written straight in the weight's layout).
extension Convolution {
    /// Where element (item, channel, y, x) of an input is, for row-major (`[N][C][H][W]`) or
    /// channels-last (`[N][H][W][C]`) memory.
    struct ImageStrides {
        let item: Int, channel: Int, row: Int, column: Int

        init(_ geometry: ConvolutionGeometry, channelsLast: Bool) {
            let (channels, height, width) = (geometry.inChannels, geometry.height, geometry.width)
            item = channels * height * width
            if channelsLast {
                (channel, row, column) = (1, width * channels, channels)
            } else {
                (channel, row, column) = (height * width, width, 1)
            }
        }
    }

    /// Whether the small-image path is expected to beat Winograd and im2col on this shape: few output
    /// pixels against the weight (measured on Zen 3 and Zen 4, 2 threads; see `Benchmarks/RESULTS.md`).
    static func suitsSmallImage(_ geometry: ConvolutionGeometry) -> Bool {
        guard !geometry.isPointwise else { return false }
        let pixelsPerImage = geometry.outHeight * geometry.outWidth
        // A 2×2 output fills a quarter of a 4×4 Winograd tile: nothing saved, transforms paid.
        if pixelsPerImage <= 4 { return true }
        // Fewer output pixels than input channels: each weight is used too few times to repay a
        // per-call transform of the whole weight.
        return geometry.outputPixels <= smallImagePixelLimit && geometry.outputPixels * 2 <= geometry.inChannels
    }

    /// Most output pixels (batch × height × width) the small-image path takes on (besides 2×2 images).
    nonisolated(unsafe) static var smallImagePixelLimit = 256

    /// The patches of every output pixel, row `p` = (item, y, x), column `(c·kh + ky)·kw + kx` (zeros for padding).
    /// The caller releases the result with `ScratchMemory.release`.
    static func channelMajorPatches(input: UnsafePointer<Float>, channelsLast: Bool, geometry: ConvolutionGeometry) -> UnsafeMutablePointer<Float> {
        let strides = ImageStrides(geometry, channelsLast: channelsLast)
        let (kernelHeight, kernelWidth, taps) = (geometry.kernelHeight, geometry.kernelWidth, geometry.kernelHeight * geometry.kernelWidth)
        let (outHeight, outWidth, patch) = (geometry.outHeight, geometry.outWidth, geometry.patchSize)
        let patches = ScratchMemory.floats(geometry.outputPixels * patch)
        let patchesAddress = UnsafeMutableRawPointer(patches)
        Parallel.forEach(geometry.outputPixels, grain: Swift.max(1, 16_384 / Swift.max(patch, 1))) { pixels in
            let patches = patchesAddress.assumingMemoryBound(to: Float.self)
            for pixel in pixels {
                let outX = pixel % outWidth, outY = (pixel / outWidth) % outHeight, item = pixel / (outWidth * outHeight)
                let image = input + item * strides.item
                let row = patches + pixel * patch
                for kernelY in 0..<kernelHeight {
                    let y = outY * geometry.stride - geometry.padding + kernelY
                    for kernelX in 0..<kernelWidth {
                        let x = outX * geometry.stride - geometry.padding + kernelX
                        let target = row + kernelY * kernelWidth + kernelX
                        if y < 0 || y >= geometry.height || x < 0 || x >= geometry.width {
                            for channel in 0..<geometry.inChannels { target[channel * taps] = 0 }
                        } else {
                            let source = image + y * strides.row + x * strides.column
                            for channel in 0..<geometry.inChannels { target[channel * taps] = source[channel * strides.channel] }
                        }
                    }
                }
            }
        }
        return patches
    }

    /// The forward convolution into `output` (channels-last, `outputPixels × outChannels`).
    static func smallImageForward(input: UnsafePointer<Float>, inputIsChannelsLast: Bool, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                                  geometry: ConvolutionGeometry, output: UnsafeMutablePointer<Float>) {
        let (rows, patch, outChannels) = (geometry.outputPixels, geometry.patchSize, geometry.outChannels)
        let patches = channelMajorPatches(input: input, channelsLast: inputIsChannelsLast, geometry: geometry)
        defer { ScratchMemory.release(patches) }
        if let bias {
            for row in 0..<rows { (output + row * outChannels).update(from: bias, count: outChannels) }
        }
        Gemm.parallel(GemmArguments(transposeB: true, m: rows, n: outChannels, k: patch, a: patches, lda: patch,
                                    b: weight, ldb: patch, beta: bias == nil ? 0 : 1, c: output, ldc: outChannels))
    }

    /// The input's gradient (channels-last) from the output's (channels-last `outputPixels × outChannels`):
    /// the patches' gradient `dY · W`, then summed back onto the pixels they came from.
    static func smallImageDataGradient(gradient: UnsafePointer<Float>, weight: UnsafePointer<Float>, geometry: ConvolutionGeometry) -> Tensor {
        let (rows, patch, outChannels) = (geometry.outputPixels, geometry.patchSize, geometry.outChannels)
        let patchGradient = ScratchMemory.floats(rows * patch)
        defer { ScratchMemory.release(patchGradient) }
        Gemm.parallel(GemmArguments(m: rows, n: patch, k: outChannels, a: gradient, lda: outChannels, b: weight, ldb: patch,
                                    c: patchGradient, ldc: patch))
        let result = channelsLastTensor(geometry.inputShape)
        let output = result.floatPointer
        output.update(repeating: 0, count: result.count)
        let strides = ImageStrides(geometry, channelsLast: true)
        let (kernelHeight, kernelWidth, taps) = (geometry.kernelHeight, geometry.kernelWidth, geometry.kernelHeight * geometry.kernelWidth)
        let (outHeight, outWidth) = (geometry.outHeight, geometry.outWidth)
        let (source, outputAddress) = (UnsafePointer(patchGradient), UnsafeMutableRawPointer(output))
        // Workers own disjoint channels, so the overlapping patches sum without locks, in a fixed order.
        Parallel.forEach(geometry.inChannels, grain: Swift.max(1, geometry.inChannels / (4 * Parallel.threadCount))) { channels in
            let output = outputAddress.assumingMemoryBound(to: Float.self)
            for pixel in 0..<rows {
                let outX = pixel % outWidth, outY = (pixel / outWidth) % outHeight, item = pixel / (outWidth * outHeight)
                let row = source + pixel * patch
                for kernelY in 0..<kernelHeight {
                    let y = outY * geometry.stride - geometry.padding + kernelY
                    if y < 0 || y >= geometry.height { continue }
                    for kernelX in 0..<kernelWidth {
                        let x = outX * geometry.stride - geometry.padding + kernelX
                        if x < 0 || x >= geometry.width { continue }
                        let target = output + item * strides.item + y * strides.row + x * strides.column
                        let tap = row + kernelY * kernelWidth + kernelX
                        for channel in channels { target[channel] += tap[channel * taps] }
                    }
                }
            }
        }
        return result
    }

    /// The weight's gradient `dYᵀ · patches`, `[O, C, kh, kw]`.
    static func smallImageWeightGradient(input: UnsafePointer<Float>, inputIsChannelsLast: Bool, gradient: UnsafePointer<Float>,
                                         geometry: ConvolutionGeometry) -> Tensor {
        let (rows, patch, outChannels) = (geometry.outputPixels, geometry.patchSize, geometry.outChannels)
        let patches = channelMajorPatches(input: input, channelsLast: inputIsChannelsLast, geometry: geometry)
        defer { ScratchMemory.release(patches) }
        let result = Tensor(uninitializedShape: geometry.weightShape)
        Gemm.parallel(GemmArguments(transposeA: true, m: outChannels, n: patch, k: rows, a: gradient, lda: outChannels,
                                    b: patches, ldb: patch, c: result.floatPointer, ldc: patch))
        return result
    }
}
