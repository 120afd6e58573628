import Foundation

extension Tensor {
    /// 2-d convolution (PyTorch's `F.conv2d` with groups = 1).
    ///
    /// Any input layout is accepted; the kernels work channels-last. 3×3
    /// stride-1 convolutions with at least 8 input and output channels use
    /// Winograd F(4×4, 3×3) (4× fewer multiplications than the direct sum;
    /// float32 errors about 1e-6 of the output's scale, a few times the direct
    /// sum's), 1×1 stride-1 unpadded ones are one matrix product, and every
    /// other shape uses im2col and a matrix product. The input's gradient comes
    /// back in the input's layout (channels-last or row-major).
    ///
    /// - Parameters:
    ///   - weight: `[outChannels, inChannels, kernelHeight, kernelWidth]`.
    ///   - bias: `[outChannels]` or nil.
    ///   - stride: step of the window in both directions.
    ///   - padding: zeros added on every side.
    /// - Returns: `[batch, outChannels, outHeight, outWidth]` (stored channels-last).
    public func conv2d(weight: Tensor, bias: Tensor? = nil, stride: Int = 1, padding: Int = 0) -> Tensor {
        let geometry = ConvolutionGeometry(input: shape, weight: weight.shape, bias: bias?.shape, stride: stride, padding: padding)
        let algorithm = Convolution.algorithm(for: geometry)
        let input = Convolution.channelsLast(self)
        let weightData = weight.contiguousData()
        let biasData = bias?.contiguousData()
        let result = Convolution.forward(input: input, weight: weightData, bias: biasData, geometry: geometry, algorithm: algorithm)
        let inputs = bias.map { [self, weight, $0] } ?? [self, weight]
        return Tensor.record(result, .kernel(ConvolutionBackward(
            geometry: geometry, algorithm: algorithm,
            input: weight.needsGradient ? input.detach() : nil,
            weight: needsGradient ? weightData.detach() : nil,
            inputLayout: layout, hasBias: bias != nil)), inputs: inputs)
    }

    /// The convolution as plain nested loops over `[N, C, H, W]`, summing in
    /// Double: the reference the fast kernels are tested against. Not recorded
    /// for autograd.
    public static func conv2dReference(input: Tensor, weight: Tensor, bias: Tensor? = nil, stride: Int = 1, padding: Int = 0) -> Tensor {
        let geometry = ConvolutionGeometry(input: input.shape, weight: weight.shape, bias: bias?.shape, stride: stride, padding: padding)
        let x = input.contiguousCopy().toArray(), w = weight.contiguousCopy().toArray()
        let b = bias?.contiguousCopy().toArray()
        let (channels, height, width) = (geometry.inChannels, geometry.height, geometry.width)
        let (kernelHeight, kernelWidth) = (geometry.kernelHeight, geometry.kernelWidth)
        var result = [Float](repeating: 0, count: geometry.batch * geometry.outChannels * geometry.outHeight * geometry.outWidth)
        var index = 0
        for item in 0..<geometry.batch {
            for out in 0..<geometry.outChannels {
                for outY in 0..<geometry.outHeight {
                    for outX in 0..<geometry.outWidth {
                        var total = Double(b?[out] ?? 0)
                        for channel in 0..<channels {
                            for kernelY in 0..<kernelHeight {
                                let y = outY * stride - padding + kernelY
                                if y < 0 || y >= height { continue }
                                for kernelX in 0..<kernelWidth {
                                    let x0 = outX * stride - padding + kernelX
                                    if x0 < 0 || x0 >= width { continue }
                                    let value = x[((item * channels + channel) * height + y) * width + x0]
                                    let tap = w[((out * channels + channel) * kernelHeight + kernelY) * kernelWidth + kernelX]
                                    total += Double(value) * Double(tap)
                                }
                            }
                        }
                        result[index] = Float(total)
                        index += 1
                    }
                }
            }
        }
        return Tensor(result, shape: [geometry.batch, geometry.outChannels, geometry.outHeight, geometry.outWidth])
    }
}

/// The sizes of one convolution, validated.
struct ConvolutionGeometry {
    let batch: Int, inChannels: Int, height: Int, width: Int
    let outChannels: Int, kernelHeight: Int, kernelWidth: Int
    let stride: Int, padding: Int
    let outHeight: Int, outWidth: Int

    init(input: [Int], weight: [Int], bias: [Int]?, stride: Int, padding: Int) {
        func stop(_ problem: String) -> Never {
            fatalError("conv2d: \(problem) (input \(input), weight \(weight)\(bias.map { ", bias \($0)" } ?? ""), stride \(stride), padding \(padding))")
        }
        guard input.count == 4 else { stop("input must be 4-d [N, C, H, W]") }
        guard weight.count == 4 else { stop("weight must be 4-d [outChannels, inChannels, kernelHeight, kernelWidth]") }
        guard input[1] == weight[1] else { stop("input has \(input[1]) channels but the weight expects \(weight[1])") }
        if let bias, bias != [weight[0]] { stop("bias must have shape [\(weight[0])]") }
        guard stride >= 1 else { stop("stride must be at least 1") }
        guard padding >= 0 else { stop("padding must not be negative") }
        guard weight[2] >= 1, weight[3] >= 1 else { stop("kernel must be at least 1×1") }
        guard weight[2] <= input[2] + 2 * padding, weight[3] <= input[3] + 2 * padding else {
            stop("kernel \(weight[2])×\(weight[3]) is larger than the padded input \(input[2] + 2 * padding)×\(input[3] + 2 * padding)")
        }
        batch = input[0]; inChannels = input[1]; height = input[2]; width = input[3]
        outChannels = weight[0]; kernelHeight = weight[2]; kernelWidth = weight[3]
        self.stride = stride; self.padding = padding
        outHeight = (height + 2 * padding - kernelHeight) / stride + 1
        outWidth = (width + 2 * padding - kernelWidth) / stride + 1
    }

    var inputShape: [Int] { [batch, inChannels, height, width] }
    var weightShape: [Int] { [outChannels, inChannels, kernelHeight, kernelWidth] }
    var outputShape: [Int] { [batch, outChannels, outHeight, outWidth] }
    /// Rows of the im2col matrix: one per output pixel.
    var outputPixels: Int { batch * outHeight * outWidth }
    /// Columns of the im2col matrix.
    var patchSize: Int { kernelHeight * kernelWidth * inChannels }
    var isPointwise: Bool { kernelHeight == 1 && kernelWidth == 1 && stride == 1 && padding == 0 }
    var suitsWinograd: Bool { kernelHeight == 3 && kernelWidth == 3 && stride == 1 }
}

/// How a convolution is computed.
enum ConvolutionAlgorithm: Equatable {
    /// 1×1, stride 1, no padding: one matrix product on the channels-last input.
    case pointwise
    /// Patches copied into a matrix, then a matrix product (any shape).
    case im2col
    /// Winograd F(m×m, 3×3) (m = `Convolution.winogradTile`) for 3×3 stride-1 kernels.
    case winograd
}

/// The convolution kernels (forward and backward).
enum Convolution {
    /// Forces an algorithm where it applies (for tests and measurements); nil chooses.
    nonisolated(unsafe) static var preferredAlgorithm: ConvolutionAlgorithm?
    /// Output tile of the Winograd forward and data-gradient passes (2 or 4).
    nonisolated(unsafe) static var winogradTile = 4
    /// Size of the patch matrix of one block of rows in the im2col passes.
    nonisolated(unsafe) static var im2colBlockBytes = 524_288
    /// Cache budget of one block of tiles in the Winograd forward and data-gradient passes.
    nonisolated(unsafe) static var forwardBlockBytes = 262_144
    /// Output tile of the Winograd weight-gradient pass (2 or 4).
    nonisolated(unsafe) static var weightGradientTile = 4
    /// Cache budget of one block of the Winograd weight-gradient pass.
    nonisolated(unsafe) static var weightGradientBlockBytes = 1_048_576

    static func algorithm(for geometry: ConvolutionGeometry) -> ConvolutionAlgorithm {
        switch preferredAlgorithm {
        case .im2col?: return .im2col
        case .winograd? where geometry.suitsWinograd: return .winograd
        case .pointwise? where geometry.isPointwise: return .pointwise
        default: break
        }
        if geometry.isPointwise { return .pointwise }
        // Few channels leave the Winograd GEMMs too small to pay for the transforms.
        if geometry.suitsWinograd && geometry.inChannels >= 8 && geometry.outChannels >= 8 { return .winograd }
        return .im2col
    }

    /// Dense float32 channels-last memory with `tensor`'s values (itself if already so).
    static func channelsLast(_ tensor: Tensor) -> Tensor {
        if tensor.layout == .channelsLast && tensor.dataType == .float32 { return tensor }
        let result = Tensor(uninitializedShape: tensor.shape, strides: Shape.channelsLastStrides(tensor.shape))
        if tensor.isContiguous && tensor.dataType == .float32 {
            // [N][C][H·W] → [N][H·W][C]
            transpose(tensor.floatPointer, into: result.floatPointer, batch: tensor.shape[0], rows: tensor.shape[1], columns: tensor.shape[2] * tensor.shape[3])
        } else {
            Tensor.copyElements(from: tensor, into: result)
        }
        return result
    }

    /// A row-major copy of a channels-last tensor.
    static func contiguous(fromChannelsLast tensor: Tensor) -> Tensor {
        precondition(tensor.strides == Shape.channelsLastStrides(tensor.shape) && tensor.dataType == .float32 && tensor.offset == 0)
        let result = Tensor(uninitializedShape: tensor.shape)
        // [N][H·W][C] → [N][C][H·W]
        transpose(tensor.floatPointer, into: result.floatPointer, batch: tensor.shape[0], rows: tensor.shape[2] * tensor.shape[3], columns: tensor.shape[1])
        return result
    }

    /// Transposes `batch` row-major `rows × columns` matrices, 8×8 blocks at a time.
    static func transpose(_ source: UnsafePointer<Float>, into destination: UnsafeMutablePointer<Float>, batch: Int, rows: Int, columns: Int) {
        typealias Vector = SIMD8<Float>
        let matrix = rows * columns
        let rowBlocks = (rows + 7) / 8
        // Three rounds of "even lanes, then odd lanes" of each row pair transpose an 8×8 block.
        @inline(__always) func unzip(_ a: Vector, _ b: Vector) -> (Vector, Vector) {
            let joined = SIMD16(lowHalf: a, highHalf: b)
            return (joined.evenHalf, joined.oddHalf)
        }
        forEachRange(batch * rowBlocks, blockSize: Swift.max(1, 4096 / Swift.max(8 * columns, 1))) { range in
            for unit in range {
                let item = unit / rowBlocks, row = (unit % rowBlocks) * 8
                let input = source + item * matrix, output = destination + item * matrix
                var column = 0
                if row + 8 <= rows {
                    while column + 8 <= columns {
                        let start = input + row * columns + column
                        var v = (MicroKernels.load(start), MicroKernels.load(start + columns),
                                 MicroKernels.load(start + 2 * columns), MicroKernels.load(start + 3 * columns),
                                 MicroKernels.load(start + 4 * columns), MicroKernels.load(start + 5 * columns),
                                 MicroKernels.load(start + 6 * columns), MicroKernels.load(start + 7 * columns))
                        for _ in 0..<3 {
                            let (a0, a4) = unzip(v.0, v.1), (a1, a5) = unzip(v.2, v.3)
                            let (a2, a6) = unzip(v.4, v.5), (a3, a7) = unzip(v.6, v.7)
                            v = (a0, a1, a2, a3, a4, a5, a6, a7)
                        }
                        let target = output + column * rows + row
                        MicroKernels.store(v.0, target); MicroKernels.store(v.1, target + rows)
                        MicroKernels.store(v.2, target + 2 * rows); MicroKernels.store(v.3, target + 3 * rows)
                        MicroKernels.store(v.4, target + 4 * rows); MicroKernels.store(v.5, target + 5 * rows)
                        MicroKernels.store(v.6, target + 6 * rows); MicroKernels.store(v.7, target + 7 * rows)
                        column += 8
                    }
                }
                let rowEnd = Swift.min(rows, row + 8)
                for tail in column..<columns {
                    for index in row..<rowEnd { output[tail * rows + index] = input[index * columns + tail] }
                }
            }
        }
    }

    /// Runs `worker` on each of up to `Parallel.threadCount` workers (one `Parallel.forEach`
    /// piece each). Workers claim the blocks `0 ..< blocks` one at a time by calling
    /// `next()`, so a worker slowed down by other processes on its core takes fewer blocks.
    static func forEachBlock(_ blocks: Int, _ worker: (_ next: () -> Int?) -> Void) {
        guard blocks > 0 else { return }
        let dispenser = BlockDispenser(count: blocks)
        Parallel.forEach(Swift.min(Parallel.threadCount, blocks)) { range in
            for _ in range { worker(dispenser.claim) }
        }
    }

    /// Runs `body` on consecutive ranges of `0 ..< count` of `blockSize` indices, claimed by
    /// the workers as in `forEachBlock`.
    static func forEachRange(_ count: Int, blockSize: Int, _ body: (Range<Int>) -> Void) {
        let size = Swift.max(1, blockSize)
        forEachBlock((count + size - 1) / size) { next in
            while let block = next() { body((block * size)..<Swift.min(count, (block + 1) * size)) }
        }
    }

    /// A new channels-last tensor of `shape`.
    static func channelsLastTensor(_ shape: [Int]) -> Tensor {
        Tensor(uninitializedShape: shape, strides: Shape.channelsLastStrides(shape))
    }

    /// `weight` `[O, C, kh, kw]` rearranged to `[O, kh, kw, C]` (the im2col column order).
    static func weightMatrix(_ weight: Tensor, _ geometry: ConvolutionGeometry) -> [Float] {
        let (channels, taps) = (geometry.inChannels, geometry.kernelHeight * geometry.kernelWidth)
        let source = weight.floatPointer
        var result = [Float](repeating: 0, count: geometry.outChannels * taps * channels)
        for out in 0..<geometry.outChannels {
            for channel in 0..<channels {
                for tap in 0..<taps {
                    result[(out * taps + tap) * channels + channel] = source[(out * channels + channel) * taps + tap]
                }
            }
        }
        return result
    }

    // MARK: Forward

    static func forward(input: Tensor, weight: Tensor, bias: Tensor?, geometry: ConvolutionGeometry, algorithm: ConvolutionAlgorithm) -> Tensor {
        let output = channelsLastTensor(geometry.outputShape)
        if output.count == 0 { return output }
        let biasPointer = bias.map { UnsafePointer($0.floatPointer) }
        switch algorithm {
        case .winograd:
            let plan = WinogradPlan(batch: geometry.batch, height: geometry.height, width: geometry.width,
                                    inChannels: geometry.inChannels, outChannels: geometry.outChannels, padding: geometry.padding,
                                    outputTile: winogradTile, blockBytes: forwardBlockBytes)
            let transformed = Winograd.transformWeight(weight.floatPointer, outChannels: geometry.outChannels, inChannels: geometry.inChannels,
                                                       outputTile: winogradTile, forDataGradient: false)
            defer { transformed.deallocate() }
            Winograd.convolve(input: input.floatPointer, plan: plan, transformedWeight: transformed, bias: biasPointer, output: output.floatPointer)
        case .pointwise, .im2col:
            im2colForward(input: input.floatPointer, weight: weightMatrix(weight, geometry), bias: biasPointer, geometry: geometry, output: output.floatPointer)
        }
        return output
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

    static func im2colForward(input: UnsafePointer<Float>, weight: [Float], bias: UnsafePointer<Float>?, geometry: ConvolutionGeometry, output: UnsafeMutablePointer<Float>) {
        let rows = geometry.outputPixels, patch = geometry.patchSize, outChannels = geometry.outChannels
        let pointwise = geometry.isPointwise
        let blockRows = blockRows(geometry)
        let blocks = (rows + blockRows - 1) / blockRows
        weight.withUnsafeBufferPointer { weightBuffer in
            let weights = weightBuffer.baseAddress!
            forEachBlock(blocks) { next in
                let columns = pointwise ? nil : UnsafeMutablePointer<Float>.allocate(capacity: blockRows * patch)
                defer { columns?.deallocate() }
                while let block = next() {
                    let first = block * blockRows, count = Swift.min(blockRows, rows - first)
                    let target = output + first * outChannels
                    if let bias {
                        for row in 0..<count { (target + row * outChannels).update(from: bias, count: outChannels) }
                    }
                    let a: UnsafePointer<Float>
                    if let columns {
                        im2col(input: input, geometry: geometry, first: first, count: count, into: columns)
                        a = UnsafePointer(columns)
                    } else {
                        a = input + first * patch
                    }
                    Gemm.serial(GemmArguments(transposeB: true, m: count, n: outChannels, k: patch,
                                              a: a, lda: patch, b: weights, ldb: patch,
                                              beta: bias == nil ? 0 : 1, c: target, ldc: outChannels))
                }
            }
        }
    }

    // MARK: Backward

    /// d loss / d bias: the sum of the channels-last gradient over every pixel.
    static func biasGradient(_ gradient: Tensor, channels: Int) -> Tensor {
        let pixels = gradient.count / Swift.max(channels, 1)
        let source = UnsafePointer(gradient.floatPointer)
        let lock = NSLock()
        var totals = [Double](repeating: 0, count: channels)
        let blockSize = Swift.max(64, 16_384 / Swift.max(channels, 1))
        forEachBlock((pixels + blockSize - 1) / blockSize) { next in
            var partial = [Double](repeating: 0, count: channels)
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
            lock.lock()
            for index in 0..<channels { totals[index] += partial[index] }
            lock.unlock()
        }
        return Tensor(totals.map { Float($0) }, shape: [channels])
    }

    /// d loss / d weight for the im2col and pointwise paths: Σ over row blocks of dYᵀ · columns.
    static func im2colWeightGradient(input: UnsafePointer<Float>, gradient: UnsafePointer<Float>, geometry: ConvolutionGeometry) -> Tensor {
        let rows = geometry.outputPixels, patch = geometry.patchSize, outChannels = geometry.outChannels
        let pointwise = geometry.isPointwise
        let blockRows = blockRows(geometry)
        let blocks = (rows + blockRows - 1) / blockRows
        let total = UnsafeMutablePointer<Float>.allocate(capacity: outChannels * patch)
        total.initialize(repeating: 0, count: outChannels * patch)
        defer { total.deallocate() }
        let lock = NSLock()
        forEachBlock(blocks) { next in
            let columns = pointwise ? nil : UnsafeMutablePointer<Float>.allocate(capacity: blockRows * patch)
            let partial = UnsafeMutablePointer<Float>.allocate(capacity: outChannels * patch)
            defer { columns?.deallocate(); partial.deallocate() }
            var started = false
            while let block = next() {
                let first = block * blockRows, count = Swift.min(blockRows, rows - first)
                let b: UnsafePointer<Float>
                if let columns {
                    im2col(input: input, geometry: geometry, first: first, count: count, into: columns)
                    b = UnsafePointer(columns)
                } else {
                    b = input + first * patch
                }
                Gemm.serial(GemmArguments(transposeA: true, m: outChannels, n: patch, k: count,
                                          a: gradient + first * outChannels, lda: outChannels, b: b, ldb: patch,
                                          beta: started ? 1 : 0, c: partial, ldc: patch))
                started = true
            }
            guard started else { return }
            lock.lock()
            for index in 0..<(outChannels * patch) { total[index] += partial[index] }
            lock.unlock()
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
    static func im2colDataGradient(gradient: UnsafePointer<Float>, weight: [Float], geometry: ConvolutionGeometry) -> Tensor {
        let result = channelsLastTensor(geometry.inputShape)
        let rows = geometry.outputPixels, patch = geometry.patchSize, outChannels = geometry.outChannels
        let output = result.floatPointer
        weight.withUnsafeBufferPointer { weightBuffer in
            let weights = weightBuffer.baseAddress!
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
                return
            }
            let pixelsPerImage = geometry.outHeight * geometry.outWidth
            let blockRows = blockRows(geometry)
            // Patches overlap, so a worker claims whole images; with fewer images than
            // workers, it claims blocks of rows, scatters them into its own copy of the
            // result, and the copies are summed.
            let privateCopies = geometry.batch < Parallel.threadCount
            let units = privateCopies ? (rows + blockRows - 1) / blockRows : geometry.batch
            output.update(repeating: 0, count: result.count)
            let lock = NSLock()
            forEachBlock(units) { next in
                let target: UnsafeMutablePointer<Float>
                if privateCopies {
                    target = UnsafeMutablePointer<Float>.allocate(capacity: result.count)
                    target.initialize(repeating: 0, count: result.count)
                } else {
                    target = output
                }
                let columns = UnsafeMutablePointer<Float>.allocate(capacity: blockRows * patch)
                defer { columns.deallocate() }
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
                if target != output {
                    lock.lock()
                    for index in 0..<result.count { output[index] += target[index] }
                    lock.unlock()
                    target.deallocate()
                }
            }
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

/// Hands out consecutive block indices to worker threads.
final class BlockDispenser: @unchecked Sendable {
    private let count: Int
    private var nextBlock = 0
    private let lock = NSLock()

    init(count: Int) { self.count = count }

    /// The next unclaimed block, or nil when all are taken.
    func claim() -> Int? {
        lock.lock()
        defer { lock.unlock() }
        guard nextBlock < count else { return nil }
        nextBlock += 1
        return nextBlock - 1
    }
}

/// What `conv2d` keeps for its backward pass.
struct ConvolutionBackward: BackwardContext {
    let geometry: ConvolutionGeometry
    let algorithm: ConvolutionAlgorithm
    /// The channels-last float32 input, kept when the weight needs a gradient.
    let input: Tensor?
    /// The contiguous float32 weight, kept when the input needs a gradient.
    let weight: Tensor?
    /// The layout the input came in; its gradient is returned the same way.
    let inputLayout: TensorLayout
    let hasBias: Bool

    var name: String { "conv2d" }

    func mappingSavedActivations(_ transform: (Tensor) -> Tensor) -> any BackwardContext {
        ConvolutionBackward(geometry: geometry, algorithm: algorithm, input: input.map(transform), weight: weight,
                            inputLayout: inputLayout, hasBias: hasBias)
    }

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        let upstream = Convolution.channelsLast(gradient)
        var result: [Tensor?] = Array(repeating: nil, count: inputs.count)
        if inputs[0] != nil, let weight {
            var inputGradient: Tensor
            switch algorithm {
            case .winograd:
                // A stride-1 convolution's data gradient is the convolution of dY with the
                // flipped, transposed kernel and padding 2 − p.
                let tile = Convolution.winogradTile
                let plan = WinogradPlan(batch: geometry.batch, height: geometry.outHeight, width: geometry.outWidth,
                                        inChannels: geometry.outChannels, outChannels: geometry.inChannels, padding: 2 - geometry.padding,
                                        outputTile: tile, blockBytes: Convolution.forwardBlockBytes)
                let transformed = Winograd.transformWeight(weight.floatPointer, outChannels: geometry.outChannels, inChannels: geometry.inChannels,
                                                           outputTile: tile, forDataGradient: true)
                defer { transformed.deallocate() }
                inputGradient = Convolution.channelsLastTensor(geometry.inputShape)
                Winograd.convolve(input: upstream.floatPointer, plan: plan, transformedWeight: transformed, bias: nil, output: inputGradient.floatPointer)
            case .pointwise, .im2col:
                inputGradient = Convolution.im2colDataGradient(gradient: upstream.floatPointer, weight: Convolution.weightMatrix(weight, geometry), geometry: geometry)
            }
            if inputLayout == .contiguous { inputGradient = Convolution.contiguous(fromChannelsLast: inputGradient) }
            result[0] = inputGradient
        }
        if inputs[1] != nil, let input {
            switch algorithm {
            case .winograd:
                let plan = WinogradPlan(batch: geometry.batch, height: geometry.height, width: geometry.width,
                                        inChannels: geometry.inChannels, outChannels: geometry.outChannels, padding: geometry.padding,
                                        outputTile: Convolution.weightGradientTile, blockBytes: Convolution.weightGradientBlockBytes)
                result[1] = Winograd.weightGradient(input: input.floatPointer, gradient: upstream.floatPointer, plan: plan)
            case .pointwise, .im2col:
                result[1] = Convolution.im2colWeightGradient(input: input.floatPointer, gradient: upstream.floatPointer, geometry: geometry)
            }
        }
        if hasBias && inputs[2] != nil {
            result[2] = Convolution.biasGradient(upstream, channels: geometry.outChannels)
        }
        return result
    }
}

// MARK: - Winograd

/// The tiling of one Winograd convolution F(m×m, 3×3): m×m output tiles
/// (m = 2 or 4), each computed from an (m+2)×(m+2) input tile with (m+2)²
/// elementwise products per channel pair.
struct WinogradPlan {
    let batch: Int, height: Int, width: Int
    let inChannels: Int, outChannels: Int
    /// May be negative (crops) when used for the data gradient.
    let padding: Int
    /// m: output tile size, 2 or 4.
    let outputTile: Int
    /// (m + 2)²: the transformed tile's element count.
    let positions: Int
    let outHeight: Int, outWidth: Int
    let tilesHigh: Int, tilesWide: Int
    var tileCount: Int { batch * tilesHigh * tilesWide }
    /// Channel counts rounded up to whole vectors.
    let inPadded: Int, outPadded: Int
    /// Tiles transformed and multiplied together (a multiple of 4).
    let blockTiles: Int
    /// Distance between the planes of a block's transformed input and products;
    /// one cache line more than the plane, so the planes do not share cache sets.
    let inPlane: Int, outPlane: Int

    init(batch: Int, height: Int, width: Int, inChannels: Int, outChannels: Int, padding: Int, outputTile: Int, blockBytes: Int = 262_144) {
        precondition(outputTile == 2 || outputTile == 4)
        self.batch = batch; self.height = height; self.width = width
        self.inChannels = inChannels; self.outChannels = outChannels; self.padding = padding
        self.outputTile = outputTile
        positions = (outputTile + 2) * (outputTile + 2)
        outHeight = height + 2 * padding - 2
        outWidth = width + 2 * padding - 2
        tilesHigh = (outHeight + outputTile - 1) / outputTile
        tilesWide = (outWidth + outputTile - 1) / outputTile
        inPadded = (inChannels + 7) / 8 * 8
        outPadded = (outChannels + 7) / 8 * 8
        // Keep the transformed input and product blocks near `blockBytes`.
        let tiles = blockBytes / (4 * positions * (inPadded + outPadded))
        blockTiles = Swift.max(8, Swift.min(256, tiles / 4 * 4))
        inPlane = blockTiles * inPadded + 16
        outPlane = blockTiles * outPadded + 16
    }
}

/// Winograd convolution F(m×m, 3×3) on channels-last memory:
/// Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A, the elementwise products summed over
/// channels as one matrix product per tile element and block of tiles.
///
/// F(2×2, 3×3): Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1],
/// G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1], Aᵀ = [1 1 1 0; 0 1 −1 −1].
///
/// F(4×4, 3×3) (points 0, ±1, ±2): Bᵀ = [4 0 −5 0 1 0; 0 −4 −4 1 1 0; 0 4 −4 −1 1 0;
/// 0 −2 −1 2 1 0; 0 2 −1 −2 1 0; 0 4 0 −5 0 1], G = [¼ 0 0; −⅙ −⅙ −⅙; −⅙ ⅙ −⅙;
/// 1⁄24 1⁄12 ⅙; 1⁄24 −1⁄12 ⅙; 0 0 1], Aᵀ = [1 1 1 1 1 0; 0 1 −1 2 −2 0;
/// 0 1 1 4 4 0; 0 1 −1 8 −8 1]. 2.25× fewer multiplications than F(2×2) per
/// output, with float32 errors a few times those of the direct sum.
enum Winograd {
    typealias Vector = SIMD8<Float>

    /// G of F(2×2, 3×3), as rows of three coefficients.
    static let kernelMatrix2: [(Float, Float, Float)] = [(1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)]
    /// G of F(4×4, 3×3), as rows of three coefficients.
    static let kernelMatrix4: [(Float, Float, Float)] = [
        (0.25, 0, 0),
        (Float(-1.0 / 6), Float(-1.0 / 6), Float(-1.0 / 6)),
        (Float(-1.0 / 6), Float(1.0 / 6), Float(-1.0 / 6)),
        (Float(1.0 / 24), Float(1.0 / 12), Float(1.0 / 6)),
        (Float(1.0 / 24), Float(-1.0 / 12), Float(1.0 / 6)),
        (0, 0, 1),
    ]

    /// `G g Gᵀ` for every channel pair, laid out `[positions][inPadded][outPadded]` (zero padded).
    /// With `forDataGradient` the kernel is flipped and its channels swapped, giving the
    /// weight of the convolution that maps dY to dX.
    static func transformWeight(_ weight: UnsafePointer<Float>, outChannels: Int, inChannels: Int,
                                outputTile: Int, forDataGradient: Bool) -> UnsafeMutablePointer<Float> {
        let rows = forDataGradient ? outChannels : inChannels
        let columns = forDataGradient ? inChannels : outChannels
        let rowsPadded = (rows + 7) / 8 * 8, columnsPadded = (columns + 7) / 8 * 8
        let plane = rowsPadded * columnsPadded
        let size = outputTile + 2
        let result = allocateZeroed(size * size * plane)
        let matrix = (outputTile == 2 ? kernelMatrix2 : kernelMatrix4).map {
            (Vector(repeating: $0.0), Vector(repeating: $0.1), Vector(repeating: $0.2))
        }
        // Eight columns (output channels of this convolution) at a time, one vector lane each.
        Convolution.forEachRange(rows, blockSize: 8) { range in
            withUnsafeTemporaryAllocation(of: Vector.self, capacity: 9 + 18) { scratch in
                let g = scratch.baseAddress!, t = g + 9
                for row in range {
                    var column = 0
                    while column < columns {
                        for index in 0..<9 { g[index] = Vector() }
                        for lane in 0..<Swift.min(8, columns - column) {
                            let (out, channel) = forDataGradient ? (row, column + lane) : (column + lane, row)
                            let kernel = weight + (out * inChannels + channel) * 9
                            for index in 0..<9 { g[index][lane] = forDataGradient ? kernel[8 - index] : kernel[index] }
                        }
                        // G g (size×3)
                        for i in 0..<size {
                            let (a, b, c) = matrix[i]
                            for k in 0..<3 { t[3 * i + k] = a * g[k] + b * g[3 + k] + c * g[6 + k] }
                        }
                        // (G g) Gᵀ (size×size)
                        let target = result + row * columnsPadded + column
                        for i in 0..<size {
                            let (t0, t1, t2) = (t[3 * i], t[3 * i + 1], t[3 * i + 2])
                            for j in 0..<size {
                                let (a, b, c) = matrix[j]
                                MicroKernels.store(a * t0 + b * t1 + c * t2, target + (size * i + j) * plane)
                            }
                        }
                        column += 8
                    }
                }
            }
        }
        return result
    }

    /// The forward convolution (also used for the data gradient): channels-last `input`
    /// `[N, H, W, inChannels]` to channels-last `output` `[N, outH, outW, outChannels]`.
    static func convolve(input: UnsafePointer<Float>, plan: WinogradPlan, transformedWeight: UnsafePointer<Float>,
                         bias: UnsafePointer<Float>?, output: UnsafeMutablePointer<Float>) {
        let tileCount = plan.tileCount, blockTiles = plan.blockTiles
        let blocks = (tileCount + blockTiles - 1) / blockTiles
        let (inPlane, outPlane) = (plan.inPlane, plan.outPlane)
        let weightPlane = plan.inPadded * plan.outPadded
        Convolution.forEachBlock(blocks) { next in
            let transformed = allocateZeroed(plan.positions * inPlane)
            let products = allocateZeroed(plan.positions * outPlane)
            defer { transformed.deallocate(); products.deallocate() }
            while let block = next() {
                let first = block * blockTiles, count = Swift.min(blockTiles, tileCount - first)
                if plan.outputTile == 2 {
                    transformInput2(input, plan: plan, first: first, count: count, into: transformed)
                } else {
                    transformInput4(input, plan: plan, first: first, count: count, into: transformed)
                }
                let rows = (count + 3) / 4 * 4
                for position in 0..<plan.positions {
                    MicroKernels.multiply(rows: rows, columns: plan.outPadded, depth: plan.inChannels,
                                          a: transformed + position * inPlane, aRowStride: plan.inPadded, aDepthStride: 1,
                                          b: transformedWeight + position * weightPlane, bRowStride: plan.outPadded,
                                          c: products + position * outPlane, cRowStride: plan.outPadded, accumulate: false)
                }
                if plan.outputTile == 2 {
                    transformOutput2(products, plan: plan, first: first, count: count, bias: bias, into: output)
                } else {
                    transformOutput4(products, plan: plan, first: first, count: count, bias: bias, into: output)
                }
            }
        }
    }

    /// d loss / d weight `[O, C, 3, 3]`: Σ over tiles of Gᵀ[(A dY Aᵀ) ⊙ (Bᵀ d B)]G,
    /// summed in the transformed domain as one matrix product per tile element and
    /// block of tiles (per-worker partial sums, added at the end).
    static func weightGradient(input: UnsafePointer<Float>, gradient: UnsafePointer<Float>, plan: WinogradPlan) -> Tensor {
        let tileCount = plan.tileCount, blockTiles = plan.blockTiles, positions = plan.positions
        let blocks = (tileCount + blockTiles - 1) / blockTiles
        let (inPlane, outPlane) = (plan.inPlane, plan.outPlane)
        let weightPlane = plan.inPadded * plan.outPadded
        let total = allocateZeroed(positions * weightPlane)
        defer { total.deallocate() }
        let lock = NSLock()
        let rows = (plan.inChannels + 3) / 4 * 4
        Convolution.forEachBlock(blocks) { next in
            let transformed = allocateZeroed(positions * inPlane)
            let upstream = allocateZeroed(positions * outPlane)
            let partial = allocateZeroed(positions * weightPlane)
            defer { transformed.deallocate(); upstream.deallocate(); partial.deallocate() }
            while let block = next() {
                let first = block * blockTiles, count = Swift.min(blockTiles, tileCount - first)
                if plan.outputTile == 2 {
                    transformInput2(input, plan: plan, first: first, count: count, into: transformed)
                    transformGradient2(gradient, plan: plan, first: first, count: count, into: upstream)
                } else {
                    transformInput4(input, plan: plan, first: first, count: count, into: transformed)
                    transformGradient4(gradient, plan: plan, first: first, count: count, into: upstream)
                }
                for position in 0..<positions {
                    // partial[c][o] += Σ_tiles transformed[tile][c] · upstream[tile][o]
                    MicroKernels.multiply(rows: rows, columns: plan.outPadded, depth: count,
                                          a: transformed + position * inPlane, aRowStride: 1, aDepthStride: plan.inPadded,
                                          b: upstream + position * outPlane, bRowStride: plan.outPadded,
                                          c: partial + position * weightPlane, cRowStride: plan.outPadded, accumulate: true)
                }
            }
            lock.lock()
            for index in 0..<(positions * weightPlane) { total[index] += partial[index] }
            lock.unlock()
        }
        // dW = Gᵀ · dŴ · G for each channel pair.
        let size = plan.outputTile + 2
        let matrix = plan.outputTile == 2 ? kernelMatrix2 : kernelMatrix4
        let result = Tensor(uninitializedShape: [plan.outChannels, plan.inChannels, 3, 3])
        let out = result.floatPointer
        var m = [Float](repeating: 0, count: positions), t = [Float](repeating: 0, count: 3 * size)
        for outChannel in 0..<plan.outChannels {
            for channel in 0..<plan.inChannels {
                for position in 0..<positions { m[position] = total[position * weightPlane + channel * plan.outPadded + outChannel] }
                // Gᵀ · m (3×size)
                for column in 0..<size {
                    var sums: (Float, Float, Float) = (0, 0, 0)
                    for i in 0..<size {
                        let value = m[size * i + column]
                        sums.0 += matrix[i].0 * value; sums.1 += matrix[i].1 * value; sums.2 += matrix[i].2 * value
                    }
                    t[column] = sums.0; t[size + column] = sums.1; t[2 * size + column] = sums.2
                }
                // (Gᵀ m) · G (3×3)
                let target = out + (outChannel * plan.inChannels + channel) * 9
                for k in 0..<3 {
                    var sums: (Float, Float, Float) = (0, 0, 0)
                    for j in 0..<size {
                        let value = t[size * k + j]
                        sums.0 += value * matrix[j].0; sums.1 += value * matrix[j].1; sums.2 += value * matrix[j].2
                    }
                    target[3 * k] = sums.0; target[3 * k + 1] = sums.1; target[3 * k + 2] = sums.2
                }
            }
        }
        return result
    }

    static func allocateZeroed(_ count: Int) -> UnsafeMutablePointer<Float> {
        let pointer = UnsafeMutableRawPointer.allocate(byteCount: Swift.max(count, 1) * 4, alignment: 64).bindMemory(to: Float.self, capacity: Swift.max(count, 1))
        pointer.initialize(repeating: 0, count: count)
        return pointer
    }

    /// Walks tiles in order: image, tile row, tile column.
    struct TileCursor {
        let plan: WinogradPlan
        var item: Int, tileY: Int, tileX: Int

        init(plan: WinogradPlan, tile: Int) {
            self.plan = plan
            let perImage = plan.tilesHigh * plan.tilesWide
            item = tile / perImage
            tileY = (tile % perImage) / plan.tilesWide
            tileX = tile % plan.tilesWide
        }

        @inline(__always)
        mutating func advance() {
            tileX += 1
            if tileX == plan.tilesWide {
                tileX = 0; tileY += 1
                if tileY == plan.tilesHigh { tileY = 0; item += 1 }
            }
        }
    }

    /// `Bᵀ d B` (F(2×2, 3×3)) for tiles `first ..< first + count`, written to `[16][blockTiles][inPadded]`.
    static func transformInput2(_ input: UnsafePointer<Float>, plan: WinogradPlan, first: Int, count: Int, into transformed: UnsafeMutablePointer<Float>) {
        let (height, width, channels) = (plan.height, plan.width, plan.inChannels)
        let rowStride = width * channels
        let plane = plan.inPlane
        let chunks = plan.inPadded / 8
        var cursor = TileCursor(plan: plan, tile: first)
        for index in 0..<count {
            let y0 = 2 * cursor.tileY - plan.padding, x0 = 2 * cursor.tileX - plan.padding
            // Offsets of the tile's rows and columns; −1 marks one outside the image.
            var rows = SIMD4<Int>(repeating: -1), columns = SIMD4<Int>(repeating: -1)
            for r in 0..<4 where y0 + r >= 0 && y0 + r < height { rows[r] = (y0 + r) * rowStride }
            for s in 0..<4 where x0 + s >= 0 && x0 + s < width { columns[s] = (x0 + s) * channels }
            let image = input + cursor.item * height * rowStride
            let target = transformed + index * plan.inPadded
            for chunk in 0..<chunks {
                let channel = chunk * 8
                let lanes = Swift.min(8, channels - channel)
                let base = image + channel
                @inline(__always) func element(_ r: Int, _ s: Int) -> Vector {
                    if rows[r] < 0 || columns[s] < 0 { return Vector() }
                    return MicroKernels.load(base + rows[r] + columns[s], count: lanes)
                }
                @inline(__always) func row(_ r: Int) -> (Vector, Vector, Vector, Vector) {
                    (element(r, 0), element(r, 1), element(r, 2), element(r, 3))
                }
                // One row of Bᵀ d (given as its four columns), then Bᵀ along it: the
                // four transformed values of row `r` of the tile.
                @inline(__always) func emit(_ r: Int, _ t: (Vector, Vector, Vector, Vector)) {
                    let out = target + channel + 4 * r * plane
                    MicroKernels.store(t.0 - t.2, out)
                    MicroKernels.store(t.1 + t.2, out + plane)
                    MicroKernels.store(t.2 - t.1, out + 2 * plane)
                    MicroKernels.store(t.1 - t.3, out + 3 * plane)
                }
                let d1 = row(1), d2 = row(2)
                emit(1, (d1.0 + d2.0, d1.1 + d2.1, d1.2 + d2.2, d1.3 + d2.3))
                emit(2, (d2.0 - d1.0, d2.1 - d1.1, d2.2 - d1.2, d2.3 - d1.3))
                let d0 = row(0)
                emit(0, (d0.0 - d2.0, d0.1 - d2.1, d0.2 - d2.2, d0.3 - d2.3))
                let d3 = row(3)
                emit(3, (d1.0 - d3.0, d1.1 - d3.1, d1.2 - d3.2, d1.3 - d3.3))
            }
            cursor.advance()
        }
    }

    /// `Aᵀ m A` (+ bias) (F(2×2, 3×3)) for tiles `first ..< first + count` from
    /// `[16][blockTiles][outPadded]` into the channels-last output.
    static func transformOutput2(_ products: UnsafePointer<Float>, plan: WinogradPlan, first: Int, count: Int,
                                 bias: UnsafePointer<Float>?, into output: UnsafeMutablePointer<Float>) {
        let (outHeight, outWidth, channels) = (plan.outHeight, plan.outWidth, plan.outChannels)
        let rowStride = outWidth * channels
        let plane = plan.outPlane
        let chunks = plan.outPadded / 8
        var cursor = TileCursor(plan: plan, tile: first)
        for index in 0..<count {
            let y0 = 2 * cursor.tileY, x0 = 2 * cursor.tileX
            let hasSecondRow = y0 + 1 < outHeight, hasSecondColumn = x0 + 1 < outWidth
            let corner = output + cursor.item * outHeight * rowStride + y0 * rowStride + x0 * channels
            let source = products + index * plan.outPadded
            for chunk in 0..<chunks {
                let channel = chunk * 8
                let lanes = Swift.min(8, channels - channel)
                let m = source + channel
                @inline(__always) func value(_ position: Int) -> Vector { MicroKernels.load(m + position * plane) }
                // Aᵀ down each column j: (m0 + m1 + m2, m1 − m2 − m3).
                @inline(__always) func column(_ j: Int) -> (Vector, Vector) {
                    let (a0, a1, a2, a3) = (value(j), value(4 + j), value(8 + j), value(12 + j))
                    return (a0 + a1 + a2, a1 - a2 - a3)
                }
                let c0 = column(0), c1 = column(1), c2 = column(2), c3 = column(3)
                let shift = bias.map { MicroKernels.load($0 + channel, count: lanes) } ?? Vector()
                let y00 = c0.0 + c1.0 + c2.0 + shift, y01 = c1.0 - c2.0 - c3.0 + shift
                let y10 = c0.1 + c1.1 + c2.1 + shift, y11 = c1.1 - c2.1 - c3.1 + shift
                let target = corner + channel
                MicroKernels.store(y00, target, count: lanes)
                if hasSecondColumn { MicroKernels.store(y01, target + channels, count: lanes) }
                if hasSecondRow {
                    MicroKernels.store(y10, target + rowStride, count: lanes)
                    if hasSecondColumn { MicroKernels.store(y11, target + rowStride + channels, count: lanes) }
                }
            }
            cursor.advance()
        }
    }

    /// `A g Aᵀ` (F(2×2, 3×3)) of each 2×2 tile of the channels-last output gradient
    /// (zeros past the edge), written to `[16][blockTiles][outPadded]`.
    static func transformGradient2(_ gradient: UnsafePointer<Float>, plan: WinogradPlan, first: Int, count: Int, into transformed: UnsafeMutablePointer<Float>) {
        let (outHeight, outWidth, channels) = (plan.outHeight, plan.outWidth, plan.outChannels)
        let rowStride = outWidth * channels
        let plane = plan.outPlane
        let chunks = plan.outPadded / 8
        var cursor = TileCursor(plan: plan, tile: first)
        for index in 0..<count {
            let y0 = 2 * cursor.tileY, x0 = 2 * cursor.tileX
            let hasSecondRow = y0 + 1 < outHeight, hasSecondColumn = x0 + 1 < outWidth
            let corner = gradient + cursor.item * outHeight * rowStride + y0 * rowStride + x0 * channels
            let target = transformed + index * plan.outPadded
            for chunk in 0..<chunks {
                let channel = chunk * 8
                let lanes = Swift.min(8, channels - channel)
                let source = corner + channel
                let g00 = MicroKernels.load(source, count: lanes)
                let g01 = hasSecondColumn ? MicroKernels.load(source + channels, count: lanes) : Vector()
                let g10 = hasSecondRow ? MicroKernels.load(source + rowStride, count: lanes) : Vector()
                let g11 = hasSecondRow && hasSecondColumn ? MicroKernels.load(source + rowStride + channels, count: lanes) : Vector()
                let out = target + channel
                // A (4×2) down the columns gives rows (g0, g0 + g1, g0 − g1, −g1); then along each row.
                @inline(__always) func row(_ r: Int, _ a: Vector, _ b: Vector) {
                    let base = out + 4 * r * plane
                    MicroKernels.store(a, base)
                    MicroKernels.store(a + b, base + plane)
                    MicroKernels.store(a - b, base + 2 * plane)
                    MicroKernels.store(-b, base + 3 * plane)
                }
                row(0, g00, g01)
                row(1, g00 + g10, g01 + g11)
                row(2, g00 - g10, g01 - g11)
                row(3, -g10, -g11)
            }
            cursor.advance()
        }
    }

    /// `A g Aᵀ` (F(4×4, 3×3)) of each 4×4 tile of the channels-last output gradient
    /// (zeros past the edge), written to `[36][blockTiles][outPadded]`.
    static func transformGradient4(_ gradient: UnsafePointer<Float>, plan: WinogradPlan, first: Int, count: Int, into transformed: UnsafeMutablePointer<Float>) {
        let (outHeight, outWidth, channels) = (plan.outHeight, plan.outWidth, plan.outChannels)
        let rowStride = outWidth * channels
        let plane = plan.outPlane
        let chunks = plan.outPadded / 8
        var cursor = TileCursor(plan: plan, tile: first)
        withUnsafeTemporaryAllocation(of: Vector.self, capacity: 24) { scratchBuffer in
            let scratch = scratchBuffer.baseAddress!
            for index in 0..<count {
                let y0 = 4 * cursor.tileY, x0 = 4 * cursor.tileX
                let validRows = Swift.min(4, outHeight - y0), validColumns = Swift.min(4, outWidth - x0)
                let corner = gradient + cursor.item * outHeight * rowStride + y0 * rowStride + x0 * channels
                let target = transformed + index * plan.outPadded
                for chunk in 0..<chunks {
                    let channel = chunk * 8
                    let lanes = Swift.min(8, channels - channel)
                    // A down each column j, into scratch[4·i + j].
                    for j in 0..<4 {
                        @inline(__always) func element(_ r: Int) -> Vector {
                            if r >= validRows || j >= validColumns { return Vector() }
                            return MicroKernels.load(corner + r * rowStride + j * channels + channel, count: lanes)
                        }
                        let (z0, z1, z2, z3, z4, z5) = expand4(element(0), element(1), element(2), element(3))
                        scratch[j] = z0; scratch[4 + j] = z1; scratch[8 + j] = z2
                        scratch[12 + j] = z3; scratch[16 + j] = z4; scratch[20 + j] = z5
                    }
                    // … then along each row i.
                    let out = target + channel
                    for i in 0..<6 {
                        let row = scratch + 4 * i
                        let (z0, z1, z2, z3, z4, z5) = expand4(row[0], row[1], row[2], row[3])
                        let base = out + 6 * i * plane
                        MicroKernels.store(z0, base)
                        MicroKernels.store(z1, base + plane)
                        MicroKernels.store(z2, base + 2 * plane)
                        MicroKernels.store(z3, base + 3 * plane)
                        MicroKernels.store(z4, base + 4 * plane)
                        MicroKernels.store(z5, base + 5 * plane)
                    }
                }
                cursor.advance()
            }
        }
    }

    /// A (the transpose of Aᵀ) of F(4×4, 3×3) applied to four values.
    @inline(__always)
    static func expand4(_ g0: Vector, _ g1: Vector, _ g2: Vector, _ g3: Vector) -> (Vector, Vector, Vector, Vector, Vector, Vector) {
        let four = Vector(repeating: 4), two = Vector(repeating: 2), eight = Vector(repeating: 8)
        let even = g0 + g2, odd = g1 + g3
        let even2 = g0 + four * g2, odd2 = two * g1 + eight * g3
        return (g0, even + odd, even - odd, even2 + odd2, even2 - odd2, g3)
    }

    /// `Bᵀ d B` (F(4×4, 3×3)) for tiles `first ..< first + count`, written to `[36][blockTiles][inPadded]`.
    static func transformInput4(_ input: UnsafePointer<Float>, plan: WinogradPlan, first: Int, count: Int, into transformed: UnsafeMutablePointer<Float>) {
        let (height, width, channels) = (plan.height, plan.width, plan.inChannels)
        let rowStride = width * channels
        let plane = plan.inPlane
        let chunks = plan.inPadded / 8
        var cursor = TileCursor(plan: plan, tile: first)
        withUnsafeTemporaryAllocation(of: Vector.self, capacity: 36) { scratchBuffer in
            let scratch = scratchBuffer.baseAddress!
            var rows = [Int](repeating: -1, count: 6), columns = [Int](repeating: -1, count: 6)
            rows.withUnsafeMutableBufferPointer { rows in
                columns.withUnsafeMutableBufferPointer { columns in
                    for index in 0..<count {
                        let y0 = 4 * cursor.tileY - plan.padding, x0 = 4 * cursor.tileX - plan.padding
                        // Offsets of the tile's rows and columns; −1 marks one outside the image.
                        for r in 0..<6 { rows[r] = y0 + r >= 0 && y0 + r < height ? (y0 + r) * rowStride : -1 }
                        for s in 0..<6 { columns[s] = x0 + s >= 0 && x0 + s < width ? (x0 + s) * channels : -1 }
                        let image = input + cursor.item * height * rowStride
                        let target = transformed + index * plan.inPadded
                        for chunk in 0..<chunks {
                            let channel = chunk * 8
                            let lanes = Swift.min(8, channels - channel)
                            let base = image + channel
                            // Bᵀ down each column s, into scratch[6·r + s].
                            for s in 0..<6 {
                                let column = columns[s]
                                @inline(__always) func element(_ r: Int) -> Vector {
                                    if rows[r] < 0 || column < 0 { return Vector() }
                                    return MicroKernels.load(base + rows[r] + column, count: lanes)
                                }
                                let (d0, d1, d2, d3, d4, d5) = (element(0), element(1), element(2), element(3), element(4), element(5))
                                let (t0, t1, t2, t3, t4, t5) = transform6(d0, d1, d2, d3, d4, d5)
                                scratch[s] = t0; scratch[6 + s] = t1; scratch[12 + s] = t2
                                scratch[18 + s] = t3; scratch[24 + s] = t4; scratch[30 + s] = t5
                            }
                            // … then Bᵀ along each row r.
                            let out = target + channel
                            for r in 0..<6 {
                                let row = scratch + 6 * r
                                let (v0, v1, v2, v3, v4, v5) = transform6(row[0], row[1], row[2], row[3], row[4], row[5])
                                let base = out + 6 * r * plane
                                MicroKernels.store(v0, base)
                                MicroKernels.store(v1, base + plane)
                                MicroKernels.store(v2, base + 2 * plane)
                                MicroKernels.store(v3, base + 3 * plane)
                                MicroKernels.store(v4, base + 4 * plane)
                                MicroKernels.store(v5, base + 5 * plane)
                            }
                        }
                        cursor.advance()
                    }
                }
            }
        }
    }

    /// Bᵀ of F(4×4, 3×3) applied to six values.
    @inline(__always)
    static func transform6(_ d0: Vector, _ d1: Vector, _ d2: Vector, _ d3: Vector, _ d4: Vector, _ d5: Vector)
        -> (Vector, Vector, Vector, Vector, Vector, Vector) {
        let four: Vector = Vector(repeating: 4), five = Vector(repeating: 5), two = Vector(repeating: 2)
        let a = d4 - four * d2, b = d3 - four * d1
        let c = d4 - d2, e = two * (d3 - d1)
        return (four * d0 - five * d2 + d4, a + b, a - b, c + e, c - e, four * d1 - five * d3 + d5)
    }

    /// `Aᵀ m A` (+ bias) (F(4×4, 3×3)) for tiles `first ..< first + count` from
    /// `[36][blockTiles][outPadded]` into the channels-last output.
    static func transformOutput4(_ products: UnsafePointer<Float>, plan: WinogradPlan, first: Int, count: Int,
                                 bias: UnsafePointer<Float>?, into output: UnsafeMutablePointer<Float>) {
        let (outHeight, outWidth, channels) = (plan.outHeight, plan.outWidth, plan.outChannels)
        let rowStride = outWidth * channels
        let plane = plan.outPlane
        let chunks = plan.outPadded / 8
        var cursor = TileCursor(plan: plan, tile: first)
        withUnsafeTemporaryAllocation(of: Vector.self, capacity: 24) { scratchBuffer in
            let scratch = scratchBuffer.baseAddress!
            for index in 0..<count {
                let y0 = 4 * cursor.tileY, x0 = 4 * cursor.tileX
                let validRows = Swift.min(4, outHeight - y0), validColumns = Swift.min(4, outWidth - x0)
                let corner = output + cursor.item * outHeight * rowStride + y0 * rowStride + x0 * channels
                let source = products + index * plan.outPadded
                for chunk in 0..<chunks {
                    let channel = chunk * 8
                    let lanes = Swift.min(8, channels - channel)
                    let m = source + channel
                    // Aᵀ down each column j, into scratch[6·i + j].
                    for j in 0..<6 {
                        @inline(__always) func value(_ i: Int) -> Vector { MicroKernels.load(m + (6 * i + j) * plane) }
                        let (y0, y1, y2, y3) = inverse6(value(0), value(1), value(2), value(3), value(4), value(5))
                        scratch[j] = y0; scratch[6 + j] = y1; scratch[12 + j] = y2; scratch[18 + j] = y3
                    }
                    let shift = bias.map { MicroKernels.load($0 + channel, count: lanes) } ?? Vector()
                    // … then along each row i.
                    for i in 0..<validRows {
                        let row = scratch + 6 * i
                        let (y0, y1, y2, y3) = inverse6(row[0], row[1], row[2], row[3], row[4], row[5])
                        let target = corner + i * rowStride + channel
                        if validColumns == 4 && lanes == 8 {
                            MicroKernels.store(y0 + shift, target)
                            MicroKernels.store(y1 + shift, target + channels)
                            MicroKernels.store(y2 + shift, target + 2 * channels)
                            MicroKernels.store(y3 + shift, target + 3 * channels)
                        } else {
                            let values = [y0, y1, y2, y3]
                            for j in 0..<validColumns { MicroKernels.store(values[j] + shift, target + j * channels, count: lanes) }
                        }
                    }
                }
                cursor.advance()
            }
        }
    }

    /// Aᵀ of F(4×4, 3×3) applied to six values.
    @inline(__always)
    static func inverse6(_ m0: Vector, _ m1: Vector, _ m2: Vector, _ m3: Vector, _ m4: Vector, _ m5: Vector)
        -> (Vector, Vector, Vector, Vector) {
        let sum1 = m1 + m2, difference1 = m1 - m2, sum2 = m3 + m4, difference2 = m3 - m4
        let two = Vector(repeating: 2), four = Vector(repeating: 4), eight = Vector(repeating: 8)
        return (m0 + sum1 + sum2, difference1 + two * difference2, sum1 + four * sum2, difference1 + eight * difference2 + m5)
    }
}

// MARK: - Register-blocked matrix product

/// A small matrix-product kernel for the Winograd blocks, where the inner
/// dimension is a channel count (or a block of tiles) and OpenBLAS spends more
/// time packing than multiplying. 6×16 and 4×16 register tiles (12 and 8 accumulators).
enum MicroKernels {
    typealias Vector = SIMD8<Float>

    @inline(__always)
    static func load(_ pointer: UnsafePointer<Float>) -> Vector {
        UnsafeRawPointer(pointer).loadUnaligned(as: Vector.self)
    }

    @inline(__always)
    static func load(_ pointer: UnsafeMutablePointer<Float>) -> Vector {
        UnsafeRawPointer(pointer).loadUnaligned(as: Vector.self)
    }

    /// The first `count` lanes from memory, the rest zero.
    @inline(__always)
    static func load(_ pointer: UnsafePointer<Float>, count: Int) -> Vector {
        if count == 8 { return load(pointer) }
        var result = Vector()
        for lane in 0..<count { result[lane] = pointer[lane] }
        return result
    }

    @inline(__always)
    static func store(_ value: Vector, _ pointer: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(pointer).storeBytes(of: value, as: Vector.self)
    }

    /// Stores the first `count` lanes.
    @inline(__always)
    static func store(_ value: Vector, _ pointer: UnsafeMutablePointer<Float>, count: Int) {
        if count == 8 { store(value, pointer); return }
        for lane in 0..<count { pointer[lane] = value[lane] }
    }

    /// `C (+)= A · B` with `rows` a multiple of 4 and `columns` a multiple of 8
    /// (6-row tiles where the remaining rows allow, then 4-row tiles).
    /// `A[i][k]` is `a[i · aRowStride + k · aDepthStride]`; B and C are row-major.
    static func multiply(rows: Int, columns: Int, depth: Int,
                         a: UnsafePointer<Float>, aRowStride: Int, aDepthStride: Int,
                         b: UnsafePointer<Float>, bRowStride: Int,
                         c: UnsafeMutablePointer<Float>, cRowStride: Int, accumulate: Bool) {
        var column = 0
        while column < columns {
            let wide = column + 16 <= columns
            var row = 0
            while wide && row + 6 <= rows && rows - row != 8 {
                kernel6x16(depth: depth, a: a + row * aRowStride, aRowStride: aRowStride, aDepthStride: aDepthStride,
                           b: b + column, bRowStride: bRowStride, c: c + row * cRowStride + column, cRowStride: cRowStride, accumulate: accumulate)
                row += 6
            }
            while row < rows {
                if wide {
                    kernel4x16(depth: depth, a: a + row * aRowStride, aRowStride: aRowStride, aDepthStride: aDepthStride,
                               b: b + column, bRowStride: bRowStride, c: c + row * cRowStride + column, cRowStride: cRowStride, accumulate: accumulate)
                } else {
                    kernel4x8(depth: depth, a: a + row * aRowStride, aRowStride: aRowStride, aDepthStride: aDepthStride,
                              b: b + column, bRowStride: bRowStride, c: c + row * cRowStride + column, cRowStride: cRowStride, accumulate: accumulate)
                }
                row += 4
            }
            column += wide ? 16 : 8
        }
    }

    @inline(never)
    static func kernel4x16(depth: Int, a: UnsafePointer<Float>, aRowStride: Int, aDepthStride: Int,
                           b: UnsafePointer<Float>, bRowStride: Int,
                           c: UnsafeMutablePointer<Float>, cRowStride: Int, accumulate: Bool) {
        var c00 = Vector(), c01 = Vector(), c10 = Vector(), c11 = Vector()
        var c20 = Vector(), c21 = Vector(), c30 = Vector(), c31 = Vector()
        var ap = a, bp = b
        let r1 = aRowStride, r2 = aRowStride &* 2, r3 = aRowStride &* 3
        for _ in 0..<depth {
            let b0 = load(bp), b1 = load(bp + 8)
            let a0 = Vector(repeating: ap[0]), a1 = Vector(repeating: ap[r1])
            let a2 = Vector(repeating: ap[r2]), a3 = Vector(repeating: ap[r3])
            c00.addProduct(a0, b0); c01.addProduct(a0, b1)
            c10.addProduct(a1, b0); c11.addProduct(a1, b1)
            c20.addProduct(a2, b0); c21.addProduct(a2, b1)
            c30.addProduct(a3, b0); c31.addProduct(a3, b1)
            ap += aDepthStride
            bp += bRowStride
        }
        let (s1, s2, s3) = (cRowStride, cRowStride &* 2, cRowStride &* 3)
        if accumulate {
            c00 += load(c); c01 += load(c + 8)
            c10 += load(c + s1); c11 += load(c + s1 + 8)
            c20 += load(c + s2); c21 += load(c + s2 + 8)
            c30 += load(c + s3); c31 += load(c + s3 + 8)
        }
        store(c00, c); store(c01, c + 8)
        store(c10, c + s1); store(c11, c + s1 + 8)
        store(c20, c + s2); store(c21, c + s2 + 8)
        store(c30, c + s3); store(c31, c + s3 + 8)
    }

    @inline(never)
    static func kernel6x16(depth: Int, a: UnsafePointer<Float>, aRowStride: Int, aDepthStride: Int,
                           b: UnsafePointer<Float>, bRowStride: Int,
                           c: UnsafeMutablePointer<Float>, cRowStride: Int, accumulate: Bool) {
        var c00 = Vector(), c01 = Vector(), c10 = Vector(), c11 = Vector(), c20 = Vector(), c21 = Vector()
        var c30 = Vector(), c31 = Vector(), c40 = Vector(), c41 = Vector(), c50 = Vector(), c51 = Vector()
        var ap = a, bp = b
        let r1 = aRowStride, r2 = aRowStride &* 2, r3 = aRowStride &* 3, r4 = aRowStride &* 4, r5 = aRowStride &* 5
        for _ in 0..<depth {
            let b0 = load(bp), b1 = load(bp + 8)
            var s = Vector(repeating: ap[0]); c00.addProduct(s, b0); c01.addProduct(s, b1)
            s = Vector(repeating: ap[r1]); c10.addProduct(s, b0); c11.addProduct(s, b1)
            s = Vector(repeating: ap[r2]); c20.addProduct(s, b0); c21.addProduct(s, b1)
            s = Vector(repeating: ap[r3]); c30.addProduct(s, b0); c31.addProduct(s, b1)
            s = Vector(repeating: ap[r4]); c40.addProduct(s, b0); c41.addProduct(s, b1)
            s = Vector(repeating: ap[r5]); c50.addProduct(s, b0); c51.addProduct(s, b1)
            ap += aDepthStride
            bp += bRowStride
        }
        let (s1, s2, s3, s4, s5) = (cRowStride, cRowStride &* 2, cRowStride &* 3, cRowStride &* 4, cRowStride &* 5)
        if accumulate {
            c00 += load(c); c01 += load(c + 8)
            c10 += load(c + s1); c11 += load(c + s1 + 8)
            c20 += load(c + s2); c21 += load(c + s2 + 8)
            c30 += load(c + s3); c31 += load(c + s3 + 8)
            c40 += load(c + s4); c41 += load(c + s4 + 8)
            c50 += load(c + s5); c51 += load(c + s5 + 8)
        }
        store(c00, c); store(c01, c + 8)
        store(c10, c + s1); store(c11, c + s1 + 8)
        store(c20, c + s2); store(c21, c + s2 + 8)
        store(c30, c + s3); store(c31, c + s3 + 8)
        store(c40, c + s4); store(c41, c + s4 + 8)
        store(c50, c + s5); store(c51, c + s5 + 8)
    }

    @inline(never)
    static func kernel4x8(depth: Int, a: UnsafePointer<Float>, aRowStride: Int, aDepthStride: Int,
                          b: UnsafePointer<Float>, bRowStride: Int,
                          c: UnsafeMutablePointer<Float>, cRowStride: Int, accumulate: Bool) {
        var c0 = Vector(), c1 = Vector(), c2 = Vector(), c3 = Vector()
        var ap = a, bp = b
        let r1 = aRowStride, r2 = aRowStride &* 2, r3 = aRowStride &* 3
        for _ in 0..<depth {
            let b0 = load(bp)
            c0.addProduct(Vector(repeating: ap[0]), b0)
            c1.addProduct(Vector(repeating: ap[r1]), b0)
            c2.addProduct(Vector(repeating: ap[r2]), b0)
            c3.addProduct(Vector(repeating: ap[r3]), b0)
            ap += aDepthStride
            bp += bRowStride
        }
        let (s1, s2, s3) = (cRowStride, cRowStride &* 2, cRowStride &* 3)
        if accumulate {
            c0 += load(c); c1 += load(c + s1); c2 += load(c + s2); c3 += load(c + s3)
        }
        store(c0, c); store(c1, c + s1); store(c2, c + s2); store(c3, c + s3)
    }
}
