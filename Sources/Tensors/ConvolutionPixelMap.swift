import Foundation

/// Convolutions of tiny images (2×2 and 1×1, the deepest level of a small UNet, at training
/// batches) as one dense linear map from an image's input pixels to its output pixels.
///
/// On a 2×2 image a 3×3 kernel with padding 1 reaches every input pixel from every output pixel,
/// but only 4 of its 9 taps land inside the image: im2col's patch matrix (`smallImage`) is
/// 5/9 zeros, and its product does 2.25× the useful multiplications. Here the weight is laid out
/// once per pass as the matrix of the whole map, `[P·O, Q·C]` for P output and Q input pixels per
/// image (block (p, q) is the kernel tap that joins them, or zeros where none does), and each pass
/// is one product with the batch as its rows: the forward pass `Y = X · Mᵀ`, the data gradient
/// `dX = dY · M`, the weight gradient `dM = dYᵀ · X`, folded back onto the taps (each tap's blocks
/// added in a fixed order). Inputs and outputs are channels-last, so an image is one row of X or Y.
extension Convolution {
    /// Whether the pixel map can hold this convolution (its matrix under `pixelMapLimitFloats`).
    static func admitsPixelMap(_ geometry: ConvolutionGeometry) -> Bool {
        let inputPixels = geometry.height * geometry.width, outputPixels = geometry.outHeight * geometry.outWidth
        return !geometry.isPointwise && inputPixels > 0 && outputPixels > 0
            && inputPixels * outputPixels * geometry.inChannels * geometry.outChannels <= pixelMapLimitFloats
    }

    /// Whether the pixel map is expected to beat the other paths: no more multiplications than
    /// im2col (an image of at most as many pixels as the kernel has taps), and images enough to
    /// repay laying the map out on every pass (it is `P·Q / taps` times the weight's size).
    /// Measured on Zen 3, 2 threads (`conv-fwd`/`conv-bwd:32:128:128:2`): see `Benchmarks/RESULTS.md`.
    static func suitsPixelMap(_ geometry: ConvolutionGeometry) -> Bool {
        usesPixelMap && admitsPixelMap(geometry) && geometry.height * geometry.width <= geometry.kernelHeight * geometry.kernelWidth
            && geometry.batch >= pixelMapMinimumBatch
    }

    /// Whether the automatic choice takes the pixel map where it suits (`DIFFUSE_PIXEL_MAP=0` turns it off, for measurements).
    nonisolated(unsafe) static var usesPixelMap = ProcessInfo.processInfo.environment["DIFFUSE_PIXEL_MAP"] != "0"
    /// Most floats of a pixel map (16 M: 64 MB).
    nonisolated(unsafe) static var pixelMapLimitFloats = 16 << 20
    /// Fewest images with which the pixel map is chosen.
    nonisolated(unsafe) static var pixelMapMinimumBatch = 8

    /// The kernel tap (`ky · kw + kx`) joining output pixel `output` to input pixel `input` of an image, if any.
    @inline(__always)
    static func pixelMapTap(_ geometry: ConvolutionGeometry, output: Int, input: Int) -> Int? {
        let kernelY = (input / geometry.width) - (output / geometry.outWidth) * geometry.stride + geometry.padding
        let kernelX = (input % geometry.width) - (output % geometry.outWidth) * geometry.stride + geometry.padding
        guard kernelY >= 0, kernelY < geometry.kernelHeight, kernelX >= 0, kernelX < geometry.kernelWidth else { return nil }
        return kernelY * geometry.kernelWidth + kernelX
    }

    /// The map `[P·O, Q·C]` of a contiguous `[O, C, kh, kw]` weight. Per output channel, its kernel is
    /// laid out by tap (`[tap][C]`, in cache) and copied into the P rows it appears in.
    static func pixelMap(weight: UnsafePointer<Float>, geometry: ConvolutionGeometry) -> Tensor {
        let (outChannels, channels, taps) = (geometry.outChannels, geometry.inChannels, geometry.kernelHeight * geometry.kernelWidth)
        let (outputPixels, inputPixels) = (geometry.outHeight * geometry.outWidth, geometry.height * geometry.width)
        let width = geometry.inputImageFloats
        let map = Tensor(uninitializedShape: [outputPixels * outChannels, width])
        let target = UnsafeMutableRawPointer(map.floatPointer)
        Parallel.forEach(outChannels, grain: Swift.max(1, 16_384 / Swift.max(outputPixels * width, 1))) { outs in
            let map = target.assumingMemoryBound(to: Float.self)
            let byTap = UnsafeMutablePointer<Float>.allocate(capacity: taps * channels)
            defer { byTap.deallocate() }
            for out in outs {
                MicroKernels.transpose(weight + out * channels * taps, rows: channels, columns: taps, into: byTap)
                for output in 0..<outputPixels {
                    let row = map + (output * outChannels + out) * width
                    for input in 0..<inputPixels {
                        if let tap = pixelMapTap(geometry, output: output, input: input) {
                            MicroKernels.copyRow(byTap + tap * channels, into: row + input * channels, count: channels)
                        } else {
                            (row + input * channels).update(repeating: 0, count: channels)
                        }
                    }
                }
            }
        }
        return map
    }

    /// The forward convolution of a channels-last input into `output` (channels-last), through `map` (`pixelMap`).
    static func pixelMapForward(input: UnsafePointer<Float>, map: Tensor, bias: UnsafePointer<Float>?,
                                geometry: ConvolutionGeometry, output: UnsafeMutablePointer<Float>) {
        let (outputWidth, inputWidth) = (geometry.outputImageFloats, geometry.inputImageFloats)
        if let bias {
            for pixel in 0..<geometry.outputPixels { (output + pixel * geometry.outChannels).update(from: bias, count: geometry.outChannels) }
        }
        Gemm.parallel(GemmArguments(transposeB: true, m: geometry.batch, n: outputWidth, k: inputWidth, a: input, lda: inputWidth,
                                    b: map.floatPointer, ldb: inputWidth, beta: bias == nil ? 0 : 1, c: output, ldc: outputWidth))
    }

    /// The input's gradient (channels-last) from the output's (channels-last): `dY · M`.
    static func pixelMapDataGradient(gradient: UnsafePointer<Float>, map: Tensor, geometry: ConvolutionGeometry) -> Tensor {
        let (outputWidth, inputWidth) = (geometry.outputImageFloats, geometry.inputImageFloats)
        let result = channelsLastTensor(geometry.inputShape)
        Gemm.parallel(GemmArguments(m: geometry.batch, n: inputWidth, k: outputWidth, a: gradient, lda: outputWidth,
                                    b: map.floatPointer, ldb: inputWidth, c: result.floatPointer, ldc: inputWidth))
        return result
    }

    /// The weight's gradient `[O, C, kh, kw]`: the map's gradient `dYᵀ · X`, each tap the sum of its
    /// blocks (output pixels in order, then input pixels).
    static func pixelMapWeightGradient(input: UnsafePointer<Float>, gradient: UnsafePointer<Float>, geometry: ConvolutionGeometry) -> Tensor {
        let (outChannels, channels, taps) = (geometry.outChannels, geometry.inChannels, geometry.kernelHeight * geometry.kernelWidth)
        let (outputPixels, inputPixels) = (geometry.outHeight * geometry.outWidth, geometry.height * geometry.width)
        let (outputWidth, inputWidth) = (geometry.outputImageFloats, geometry.inputImageFloats)
        let mapGradient = ScratchMemory.floats(outputWidth * inputWidth)
        defer { ScratchMemory.release(mapGradient) }
        Gemm.parallel(GemmArguments(transposeA: true, m: outputWidth, n: inputWidth, k: geometry.batch, a: gradient, lda: outputWidth,
                                    b: input, ldb: inputWidth, c: mapGradient, ldc: inputWidth))
        // Folded per output channel into [tap][C] (in cache), then written in the weight's [C][tap] order.
        let result = Tensor(uninitializedShape: geometry.weightShape)
        let (source, target) = (UnsafePointer(mapGradient), UnsafeMutableRawPointer(result.floatPointer))
        Parallel.forEach(outChannels, grain: Swift.max(1, 16_384 / Swift.max(outputPixels * inputWidth, 1))) { outs in
            let weightGradient = target.assumingMemoryBound(to: Float.self)
            let sums = UnsafeMutablePointer<Float>.allocate(capacity: taps * channels)
            defer { sums.deallocate() }
            for out in outs {
                sums.update(repeating: 0, count: taps * channels)
                for output in 0..<outputPixels {
                    let row = source + (output * outChannels + out) * inputWidth
                    for input in 0..<inputPixels {
                        guard let tap = pixelMapTap(geometry, output: output, input: input) else { continue }
                        MicroKernels.addRow(row + input * channels, into: sums + tap * channels, count: channels)
                    }
                }
                MicroKernels.transpose(sums, rows: taps, columns: channels, into: weightGradient + out * channels * taps)
            }
        }
        return result
    }
}
