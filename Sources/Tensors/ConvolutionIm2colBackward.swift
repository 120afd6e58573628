import Foundation

extension Convolution {
    // MARK: Backward

    /// d loss / d bias: the sum of the channels-last gradient over every pixel.
    static func biasGradient(_ gradient: Tensor, channels: Int) -> Tensor {
        let pixels = gradient.count / Swift.max(channels, 1)
        let source = UnsafePointer(gradient.floatPointer)
        let blockSize = Swift.max(64, 16_384 / Swift.max(channels, 1))
        let blocks = (pixels + blockSize - 1) / blockSize
        // One Double partial per share of the blocks, added in share order (`forEachBlockDealt`).
        let shares = dealtShares(blocks)
        let partials = UnsafeMutablePointer<Double>.allocate(capacity: Swift.max(1, shares) * channels)
        partials.initialize(repeating: 0, count: Swift.max(1, shares) * channels)
        defer { partials.deallocate() }
        forEachBlockDealt(blocks, shares: shares) { chunk, next in
            let partial = partials + chunk * channels
            var rowSums = [Float](repeating: 0, count: channels)
            // Float sums over short runs of pixels, folded into Double.
            while let block = next() {
                var pixel = block * blockSize
                let blockEnd = Swift.min(pixels, pixel + blockSize)
                while pixel < blockEnd {
                    let end = Swift.min(blockEnd, pixel + 64)
                    rowSums.withUnsafeMutableBufferPointer { sums in
                        for index in 0..<channels { sums[index] = 0 }
                        for row in pixel..<end {
                            let line = source + row * channels
                            for index in 0..<channels { sums[index] += line[index] }
                        }
                    }
                    for index in 0..<channels { partial[index] += Double(rowSums[index]) }
                    pixel = end
                }
            }
        }
        var totals = [Double](repeating: 0, count: channels)
        for chunk in 0..<shares {
            for index in 0..<channels { totals[index] += partials[chunk * channels + index] }
        }
        return Tensor(totals.map { Float($0) }, shape: [channels])
    }

    /// d loss / d weight for the im2col and pointwise paths: Σ over row blocks of dYᵀ · columns.
    static func im2colWeightGradient(input: UnsafePointer<Float>, gradient: UnsafePointer<Float>, geometry: ConvolutionGeometry) -> Tensor {
        let rows = geometry.outputPixels, patch = geometry.patchSize, outChannels = geometry.outChannels
        let pointwise = geometry.isPointwise
        let blockRows = blockRows(geometry)
        let blocks = (rows + blockRows - 1) / blockRows
        // One partial sum per share of the blocks (`forEachBlockDealt`), added in share order below.
        let shares = dealtShares(blocks)
        let partials = (0..<shares).map { _ in ScratchMemory.floats(outChannels * patch) }
        defer { partials.forEach(ScratchMemory.release) }
        forEachBlockDealt(blocks, shares: shares) { chunk, next in
            let columns = pointwise ? nil : ScratchMemory.floats(blockRows * patch)
            let partial = partials[chunk]
            defer { columns.map(ScratchMemory.release) }
            var started = false
            while let block = next() {
                let first = block * blockRows, count = Swift.min(blockRows, rows - first)
                let b = patchRows(input, geometry: geometry, first: first, count: count, columns: columns)
                Gemm.serial(GemmArguments(transposeA: true, m: outChannels, n: patch, k: count,
                                          a: gradient + first * outChannels, lda: outChannels, b: b, ldb: patch,
                                          beta: started ? 1 : 0, c: partial, ldc: patch))
                started = true
            }
        }
        let total = partials.first ?? ScratchMemory.floats(outChannels * patch, zeroed: true)
        defer { if partials.isEmpty { ScratchMemory.release(total) } }
        for partial in partials.dropFirst() {
            for index in 0..<(outChannels * patch) { total[index] += partial[index] }
        }
        // [O, kh, kw, C] → [O, C, kh, kw]
        let taps = geometry.kernelHeight * geometry.kernelWidth, channels = geometry.inChannels
        let result = Tensor(uninitializedShape: geometry.weightShape)
        let out = result.floatPointer
        for outChannel in 0..<outChannels {
            for tap in 0..<taps {
                for channel in 0..<channels {
                    out[(outChannel * channels + channel) * taps + tap] = total[(outChannel * taps + tap) * channels + channel]
                }
            }
        }
        return result
    }

    /// d loss / d input for the im2col and pointwise paths: dY · W, scattered back over the patches (col2im).
    static func im2colDataGradient(gradient: UnsafePointer<Float>, weight weights: UnsafePointer<Float>, geometry: ConvolutionGeometry) -> Tensor {
        let result = channelsLastTensor(geometry.inputShape)
        let rows = geometry.outputPixels, patch = geometry.patchSize, outChannels = geometry.outChannels
        let output = result.floatPointer
        if geometry.isPointwise {
            // No overlap: each output pixel's gradient is one input pixel's.
            let blockRows = blockRows(geometry), blocks = (rows + blockRows - 1) / blockRows
            forEachBlock(blocks) { next in
                while let block = next() {
                    let first = block * blockRows, count = Swift.min(blockRows, rows - first)
                    Gemm.serial(GemmArguments(m: count, n: patch, k: outChannels,
                                              a: gradient + first * outChannels, lda: outChannels, b: weights, ldb: patch,
                                              c: output + first * patch, ldc: patch))
                }
            }
            return result
        }
        let pixelsPerImage = geometry.outHeight * geometry.outWidth
        let blockRows = blockRows(geometry)
        // Patches overlap, so a worker claims whole images; with fewer images than
        // workers, it claims blocks of rows, scatters them into its own copy of the
        // result, and the copies are summed.
        let privateCopies = geometry.batch < Parallel.threadCount
        let units = privateCopies ? (rows + blockRows - 1) / blockRows : geometry.batch
        output.update(repeating: 0, count: result.count)
        // The private copies by share of the units (`forEachBlockDealt`), added in share order below.
        let shares = dealtShares(units)
        let copies = UnsafeMutablePointer<UnsafeMutablePointer<Float>?>.allocate(capacity: Swift.max(1, shares))
        copies.initialize(repeating: nil, count: Swift.max(1, shares))
        defer { copies.deallocate() }
        forEachBlockDealt(units, shares: shares) { chunk, next in
            let target: UnsafeMutablePointer<Float>
            if privateCopies {
                target = UnsafeMutablePointer<Float>.allocate(capacity: result.count)
                target.initialize(repeating: 0, count: result.count)
                copies[chunk] = target
            } else {
                target = output
            }
            let columns = ScratchMemory.floats(blockRows * patch)
            defer { ScratchMemory.release(columns) }
            while let unit = next() {
                let firstRow = privateCopies ? unit * blockRows : unit * pixelsPerImage
                let endRow = privateCopies ? Swift.min(rows, firstRow + blockRows) : firstRow + pixelsPerImage
                var first = firstRow
                while first < endRow {
                    let count = Swift.min(blockRows, endRow - first)
                    Gemm.serial(GemmArguments(m: count, n: patch, k: outChannels,
                                              a: gradient + first * outChannels, lda: outChannels, b: weights, ldb: patch,
                                              c: columns, ldc: patch))
                    col2im(columns, geometry: geometry, first: first, count: count, into: target)
                    first += count
                }
            }
        }
        let filled = (0..<shares).compactMap { copies[$0] }
        if !filled.isEmpty {
            Parallel.forEach(result.count, grain: 16_384) { range in
                for copy in filled {
                    for index in range { output[index] += copy[index] }
                }
            }
            filled.forEach { $0.deallocate() }
        }
        return result
    }

    /// Adds the patch rows `first ..< first + count` of `columns` back onto the channels-last image they came from.
    static func col2im(_ columns: UnsafePointer<Float>, geometry: ConvolutionGeometry, first: Int, count: Int, into image: UnsafeMutablePointer<Float>) {
        let (channels, height, width) = (geometry.inChannels, geometry.height, geometry.width)
        let (kernelHeight, kernelWidth) = (geometry.kernelHeight, geometry.kernelWidth)
        let (outHeight, outWidth) = (geometry.outHeight, geometry.outWidth)
        let patch = geometry.patchSize
        for row in 0..<count {
            let pixel = first + row
            let outX = pixel % outWidth, outY = (pixel / outWidth) % outHeight, item = pixel / (outWidth * outHeight)
            let source = columns + row * patch
            let base = image + item * height * width * channels
            for kernelY in 0..<kernelHeight {
                let y = outY * geometry.stride - geometry.padding + kernelY
                if y < 0 || y >= height { continue }
                for kernelX in 0..<kernelWidth {
                    let x = outX * geometry.stride - geometry.padding + kernelX
                    if x < 0 || x >= width { continue }
                    let values = source + (kernelY * kernelWidth + kernelX) * channels
                    let target = base + (y * width + x) * channels
                    for channel in 0..<channels { target[channel] += values[channel] }
                }
            }
        }
    }
}
