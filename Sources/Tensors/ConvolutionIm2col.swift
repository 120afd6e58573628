import Foundation

extension Convolution {
    // MARK: Forward

    /// The convolution of `input` (channels-last, or row-major for the Winograd path).
    /// `pixelMap`: the weight's map (`pixelMap(weight:geometry:)`) when the algorithm is `.pixelMap`, if already laid out.
    static func forward(input: Tensor, inputIsChannelsLast: Bool, weight: Tensor, bias: Tensor?,
                        geometry: ConvolutionGeometry, algorithm: ConvolutionAlgorithm, pixelMap: Tensor? = nil) -> Tensor {
        let output = channelsLastTensor(geometry.outputShape)
        if output.count == 0 { return output }
        let biasPointer = bias.map { UnsafePointer($0.floatPointer) }
        switch algorithm {
        case .winograd:
            let groups = winogradOutputGroups(geometry)
            if groups == 1 {
                winogradForward(input: input, inputIsChannelsLast: inputIsChannelsLast, weight: UnsafePointer(weight.floatPointer), bias: biasPointer,
                                geometry: geometry, output: output.floatPointer)
                break
            }
            // Output channels in groups (multiples of 8), each through a channels-last output of its own
            // copied into its columns: the transformed weights of one group stay under the budget.
            for group in 0..<groups {
                let first = (geometry.outChannels * group / groups) / 8 * 8
                let end = group == groups - 1 ? geometry.outChannels : (geometry.outChannels * (group + 1) / groups) / 8 * 8
                var part = geometry
                part.outChannels = end - first
                let partOutput = channelsLastTensor(part.outputShape)
                winogradForward(input: input, inputIsChannelsLast: inputIsChannelsLast,
                                weight: UnsafePointer(weight.floatPointer) + first * geometry.inChannels * 9, bias: biasPointer.map { $0 + first },
                                geometry: part, output: partOutput.floatPointer)
                let (source, target, width, stride) = (UnsafePointer(partOutput.floatPointer), output.floatPointer + first, end - first, geometry.outChannels)
                Parallel.forEach(geometry.outputPixels, grain: 256) { pixels in
                    for pixel in pixels { (target + pixel * stride).update(from: source + pixel * width, count: width) }
                }
            }
        case .smallImage:
            smallImageForward(input: input.floatPointer, inputIsChannelsLast: inputIsChannelsLast, weight: weight.floatPointer, bias: biasPointer,
                              geometry: geometry, output: output.floatPointer)
        case .pixelMap:
            precondition(inputIsChannelsLast, "conv2d: the pixel-map path reads channels-last input")
            let map = pixelMap ?? Convolution.pixelMap(weight: weight.floatPointer, geometry: geometry)
            pixelMapForward(input: input.floatPointer, map: map, bias: biasPointer, geometry: geometry, output: output.floatPointer)
        case .pointwise, .im2col:
            precondition(inputIsChannelsLast, "conv2d: the im2col path reads channels-last input")
            let matrix = weightMatrix(weight, geometry)
            withExtendedLifetime(matrix) {
                im2colForward(input: input.floatPointer, weight: matrix.floatPointer, bias: biasPointer, geometry: geometry, output: output.floatPointer)
            }
        }
        return output
    }

    /// Most bytes of Winograd-transformed weights one forward convolution holds at a time
    /// (36 positions × input × output channels × 4 bytes: 478 MB for Stable Diffusion's
    /// 2,560 → 1,280 layers). Larger convolutions run in groups of output channels (at least 64
    /// each): the group's transformed weights stay in cache as its tiles stream past, and the
    /// peak memory of inference drops. Measured on Zen 4, 2 threads (`DIFFUSE_WINOGRAD_BUDGET_MB`
    /// 64 → 8): 2×320 at 64×64 44 → 25 ms, 2×640 at 32×32 55 → 31 ms, 1×512 at 128×128 261 → 138 ms.
    nonisolated(unsafe) static var winogradWeightBudgetBytes =
        (ProcessInfo.processInfo.environment["DIFFUSE_WINOGRAD_BUDGET_MB"].flatMap(Int.init) ?? 8) << 20

    /// How many output-channel groups keep the transformed weights under the budget.
    static func winogradOutputGroups(_ geometry: ConvolutionGeometry) -> Int {
        let size = winogradTile + 2
        let bytes = 4 * size * size * ((geometry.inChannels + 7) / 8 * 8) * WinogradPlan.rowStride((geometry.outChannels + 7) / 8 * 8)
        return Swift.max(1, Swift.min(geometry.outChannels / 64, (bytes + winogradWeightBudgetBytes - 1) / winogradWeightBudgetBytes))
    }

    /// One Winograd forward convolution: weights transformed, then the tiles.
    static func winogradForward(input: Tensor, inputIsChannelsLast: Bool, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                                geometry: ConvolutionGeometry, output: UnsafeMutablePointer<Float>) {
        let (plan, schedule) = winogradPlan(batch: geometry.batch, height: geometry.height, width: geometry.width,
                                            inChannels: geometry.inChannels, outChannels: geometry.outChannels, padding: geometry.padding,
                                            outputTile: winogradTile, blockBytes: forwardBlockBytes)
        let transformed = Winograd.transformWeight(weight, outChannels: geometry.outChannels, inChannels: geometry.inChannels,
                                                   outputTile: winogradTile, forDataGradient: false)
        defer { ScratchMemory.release(transformed) }
        Winograd.convolve(input: input.floatPointer, inputIsChannelsLast: inputIsChannelsLast, plan: plan, schedule: schedule,
                          transformedWeight: transformed, bias: bias, output: output)
    }

    /// Rows of the im2col matrix handled at a time (keeps the patch buffer near `im2colBlockBytes`).
    static func blockRows(_ geometry: ConvolutionGeometry) -> Int {
        Swift.max(16, Swift.min(2048, im2colBlockBytes / (4 * Swift.max(geometry.patchSize, 1))))
    }

    /// Copies the patches of output pixels `first ..< first + count` into `columns` (`count × patchSize`, zeros for padding).
    static func im2col(input: UnsafePointer<Float>, geometry: ConvolutionGeometry, first: Int, count: Int, into columns: UnsafeMutablePointer<Float>) {
        let (channels, height, width) = (geometry.inChannels, geometry.height, geometry.width)
        let (kernelHeight, kernelWidth) = (geometry.kernelHeight, geometry.kernelWidth)
        let (outHeight, outWidth) = (geometry.outHeight, geometry.outWidth)
        let patch = geometry.patchSize
        let rowLength = kernelWidth * channels
        for row in 0..<count {
            let pixel = first + row
            let outX = pixel % outWidth, outY = (pixel / outWidth) % outHeight, item = pixel / (outWidth * outHeight)
            let target = columns + row * patch
            let x0 = outX * geometry.stride - geometry.padding
            let image = input + item * height * width * channels
            for kernelY in 0..<kernelHeight {
                let y = outY * geometry.stride - geometry.padding + kernelY
                let line = target + kernelY * rowLength
                if y < 0 || y >= height {
                    line.update(repeating: 0, count: rowLength)
                    continue
                }
                if x0 >= 0 && x0 + kernelWidth <= width {
                    // The whole kernel row is one contiguous run in NHWC.
                    line.update(from: image + (y * width + x0) * channels, count: rowLength)
                    continue
                }
                for kernelX in 0..<kernelWidth {
                    let x = x0 + kernelX
                    if x < 0 || x >= width {
                        (line + kernelX * channels).update(repeating: 0, count: channels)
                    } else {
                        (line + kernelX * channels).update(from: image + (y * width + x) * channels, count: channels)
                    }
                }
            }
        }
    }

    /// The patch rows `first ..< first + count` of `input`: its own rows for a 1×1 kernel
    /// (`columns` nil), else copied into `columns` by `im2col`.
    static func patchRows(_ input: UnsafePointer<Float>, geometry: ConvolutionGeometry, first: Int, count: Int,
                          columns: UnsafeMutablePointer<Float>?) -> UnsafePointer<Float> {
        guard let columns else { return input + first * geometry.patchSize }
        im2col(input: input, geometry: geometry, first: first, count: count, into: columns)
        return UnsafePointer(columns)
    }

    static func im2colForward(input: UnsafePointer<Float>, weight weights: UnsafePointer<Float>, bias: UnsafePointer<Float>?, geometry: ConvolutionGeometry,
                              output: UnsafeMutablePointer<Float>) {
        let rows = geometry.outputPixels, patch = geometry.patchSize, outChannels = geometry.outChannels
        let pointwise = geometry.isPointwise
        let blockRows = blockRows(geometry)
        let blocks = (rows + blockRows - 1) / blockRows
        forEachBlock(blocks) { next in
            let columns = pointwise ? nil : ScratchMemory.floats(blockRows * patch)
            defer { columns.map(ScratchMemory.release) }
            while let block = next() {
                let first = block * blockRows, count = Swift.min(blockRows, rows - first)
                let target = output + first * outChannels
                if let bias {
                    for row in 0..<count { (target + row * outChannels).update(from: bias, count: outChannels) }
                }
                let a = patchRows(input, geometry: geometry, first: first, count: count, columns: columns)
                Gemm.serial(GemmArguments(transposeB: true, m: count, n: outChannels, k: patch,
                                          a: a, lda: patch, b: weights, ldb: patch,
                                          beta: bias == nil ? 0 : 1, c: target, ldc: outChannels))
            }
        }
    }
}
