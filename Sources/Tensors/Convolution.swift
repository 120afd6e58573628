import Foundation

extension Tensor {
    /// 2-d convolution (PyTorch's `F.conv2d` with groups = 1).
    ///
    /// Any input layout is accepted; the kernels work channels-last. 3×3
    /// stride-1 convolutions with at least 8 input and output channels use
    /// Winograd F(4×4, 3×3) (4× fewer multiplications than the direct sum;
    /// float32 errors about 1e-6 of the output's scale, a few times the direct
    /// sum's), 1×1 stride-1 unpadded ones are one matrix product, few output
    /// pixels against the weight read the weight in place (small-image path),
    /// images of no more pixels than the kernel has taps, at batches of 8 or
    /// more, are one dense map of the pixels (pixel-map path), and every other
    /// shape uses im2col and a matrix product. The input's gradient comes back
    /// in the input's layout (channels-last or row-major).
    ///
    /// - Parameters:
    ///   - weight: `[outChannels, inChannels, kernelHeight, kernelWidth]`.
    ///   - bias: `[outChannels]` or nil.
    ///   - stride: step of the window in both directions.
    ///   - padding: zeros added on every side.
    /// - Returns: `[batch, outChannels, outHeight, outWidth]` (stored channels-last).
    public func conv2d(weight: Tensor, bias: Tensor? = nil, stride: Int = 1, padding: Int = 0) -> Tensor {
        let geometry = ConvolutionGeometry(input: shape, weight: weight.shape, bias: bias?.shape, stride: stride, padding: padding)
        if ComputeMode.precision == .bfloat16, let result = Convolution.bfloat16Forward(self, weight: weight, bias: bias, geometry: geometry) {
            return result
        }
        let algorithm = Convolution.algorithm(for: geometry)
        // The Winograd and small-image passes read a row-major input as it is; the others want it channels-last.
        let readsRowMajor = (algorithm == .winograd || algorithm == .smallImage) && isContiguous && dataType == .float32
        let input = readsRowMajor ? self : Convolution.channelsLast(self)
        let weightData = weight.layerWeightData()
        let biasData = bias?.contiguousData()
        // The pixel map is laid out once for the forward pass and the data gradient.
        let pixelMap = algorithm == .pixelMap && count > 0 ? Convolution.pixelMap(weight: weightData.floatPointer, geometry: geometry) : nil
        let result = Convolution.forward(input: input, inputIsChannelsLast: !readsRowMajor, weight: weightData, bias: biasData,
                                         geometry: geometry, algorithm: algorithm, pixelMap: pixelMap)
        let inputs = bias.map { [self, weight, $0] } ?? [self, weight]
        return Tensor.record(result, .kernel(ConvolutionBackward(
            geometry: geometry, algorithm: algorithm,
            input: weight.needsGradient ? input.detach() : nil, inputIsChannelsLast: !readsRowMajor,
            weight: needsGradient ? weightData.detach() : nil, pixelMap: needsGradient ? pixelMap : nil,
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
    var outChannels: Int
    let kernelHeight: Int, kernelWidth: Int
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
    /// Floats of one input image (`C·H·W`) and of one output image (`O·H'·W'`): the pixel map's columns and rows per image.
    var inputImageFloats: Int { inChannels * height * width }
    var outputImageFloats: Int { outChannels * outHeight * outWidth }
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
    /// Few output pixels: patches in the weight's order, products that read the weight in place
    /// (`ConvolutionSmallImage.swift`).
    case smallImage
    /// Tiny images: one dense map from an image's input pixels to its output pixels, a product per
    /// pass with the batch as rows (`ConvolutionPixelMap.swift`).
    case pixelMap
}

/// The convolution kernels (forward and backward).
enum Convolution {
    /// Forces an algorithm where it applies (for tests and measurements; `DIFFUSE_CONV_ALGORITHM=im2col`,
    /// `winograd`, `small-image` or `pixel-map` sets it from the environment); nil chooses.
    nonisolated(unsafe) static var preferredAlgorithm: ConvolutionAlgorithm? = {
        switch ProcessInfo.processInfo.environment["DIFFUSE_CONV_ALGORITHM"] {
        case "im2col": return .im2col
        case "winograd": return .winograd
        case "small-image": return .smallImage
        case "pixel-map": return .pixelMap
        default: return nil
        }
    }()
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

    /// Forces a Winograd loop order (for tests and measurements; `DIFFUSE_WINOGRAD=positions`
    /// or `tiles` sets it from the environment); nil chooses.
    nonisolated(unsafe) static var preferredWinogradSchedule: WinogradSchedule? = {
        switch ProcessInfo.processInfo.environment["DIFFUSE_WINOGRAD"] {
        case "positions": return .positions
        case "tiles": return .tileBlocks
        default: return nil
        }
    }()
    /// Cache budget of one chunk of tiles in the Winograd `positions` schedule.
    nonisolated(unsafe) static var positionChunkBytes = 8 << 20

    /// The tiling and loop order of a Winograd pass: `blockBytes` budgets a block of the
    /// `tileBlocks` schedule.
    static func winogradPlan(batch: Int, height: Int, width: Int, inChannels: Int, outChannels: Int, padding: Int,
                             outputTile: Int, blockBytes: Int) -> (plan: WinogradPlan, schedule: WinogradSchedule) {
        let blocks = WinogradPlan(batch: batch, height: height, width: width, inChannels: inChannels, outChannels: outChannels,
                                  padding: padding, outputTile: outputTile, blockBytes: blockBytes)
        let chunks = WinogradPlan(batch: batch, height: height, width: width, inChannels: inChannels, outChannels: outChannels,
                                  padding: padding, outputTile: outputTile, blockBytes: positionChunkBytes,
                                  maximumBlockTiles: (blocks.tileCount + 3) / 4 * 4)
        // Measured (Benchmarks, conv-fwd/conv-bwd:64:C:C:SIZE): the position order wins when
        // the transformed weights are large and every tile fits one chunk (256 channels at
        // 4×4: forward 15 → 8 ms, backward 41 → 21 ms); on larger images the tile blocks win
        // (128 channels at 32×32: 120 against 128 ms forward), as their weight reads come
        // from L3 in order while a chunk's tiles make a round trip through it.
        let weightBytes = 4 * blocks.positions * blocks.weightPlane
        let fitsOneChunk = chunks.blockTiles >= blocks.tileCount
        let schedule = preferredWinogradSchedule ?? (fitsOneChunk && weightBytes >= 2 << 20 ? .positions : .tileBlocks)
        return schedule == .positions ? (chunks, .positions) : (blocks, .tileBlocks)
    }

    /// The bfloat16 inference path (``ComputePrecision/bfloat16``) when it applies: no graph
    /// recorded, a float32 input (weights of any storage type; they are rounded once and kept),
    /// and a shape where it is faster than the float32 kernels (1×1: oneDNN's bfloat16 matrix
    /// product; others: its bfloat16 direct convolution, except 3×3 images larger than 16×16,
    /// where the float32 Winograd kernels are faster). nil otherwise.
    static func bfloat16Forward(_ input: Tensor, weight: Tensor, bias: Tensor?, geometry: ConvolutionGeometry) -> Tensor? {
        guard input.dataType == .float32, input.count > 0,
              !(GradientMode.isEnabled && (input.needsGradient || weight.needsGradient || (bias?.needsGradient ?? false))),
              bfloat16Suits(geometry) else { return nil }
        let channelsLast = Convolution.channelsLast(input)
        if geometry.isPointwise {
            let rows = geometry.batch * geometry.height * geometry.width
            let matrix = Tensor(storage: channelsLast.storage, shape: [rows, geometry.inChannels], strides: [geometry.inChannels, 1], offset: channelsLast.offset)
            guard let product = BFloat16Linear.linear(matrix, weight: weight.reshaped([geometry.outChannels, geometry.inChannels]), bias: bias) else { return nil }
            return Tensor(storage: product.storage, shape: geometry.outputShape, strides: Shape.channelsLastStrides(geometry.outputShape))
        }
        return BFloat16Convolution.forward(input: channelsLast, weight: weight, bias: bias, geometry: geometry)
    }

    /// Forces the bfloat16 path on or off for every shape (tests and measurements); nil chooses.
    nonisolated(unsafe) static var preferBFloat16: Bool? = {
        switch ProcessInfo.processInfo.environment["DIFFUSE_BF16_CONV"] {
        case "always": return true
        case "never": return false
        default: return nil
        }
    }()

    /// Whether the bfloat16 path is expected to beat the float32 kernels on this shape.
    static func bfloat16Suits(_ geometry: ConvolutionGeometry) -> Bool {
        if let preferBFloat16 { return preferBFloat16 }
        // Measured on Zen 4, 2 threads (conv-fwd-bf16:… with DIFFUSE_BF16_CONV=always / never), against the
        // float32 Winograd kernels in output-channel groups: oneDNN's bfloat16 direct convolution wins on
        // small images (2×1,280 at 16×16: 33 against 57 ms; 2×2,560→1,280 at 16×16: 65 against 150–260 ms;
        // at 8×8: 8.5 against 34 ms), ties at 32×32 (2×640: 32 against 32 ms) and loses on larger ones
        // (2×960→320 at 64×64: 99 against 90 ms; 1×512 at 64×64: 42 against 39 ms).
        if geometry.suitsWinograd && geometry.inChannels >= 8 && geometry.outChannels >= 8 {
            return geometry.outHeight * geometry.outWidth <= 16 * 16
        }
        return true
    }

    static func algorithm(for geometry: ConvolutionGeometry) -> ConvolutionAlgorithm {
        switch preferredAlgorithm {
        case .im2col?: return .im2col
        case .winograd? where geometry.suitsWinograd: return .winograd
        case .pointwise? where geometry.isPointwise: return .pointwise
        case .smallImage?: return .smallImage
        case .pixelMap? where admitsPixelMap(geometry): return .pixelMap
        default: break
        }
        if geometry.isPointwise { return .pointwise }
        if suitsPixelMap(geometry) { return .pixelMap }
        if suitsSmallImage(geometry) { return .smallImage }
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
        let matrix = rows * columns
        let rowBlocks = (rows + 7) / 8
        forEachRange(batch * rowBlocks, blockSize: Swift.max(1, 4096 / Swift.max(8 * columns, 1))) { range in
            for unit in range {
                let item = unit / rowBlocks, row = (unit % rowBlocks) * 8
                let input = source + item * matrix, output = destination + item * matrix
                var column = 0
                if row + 8 <= rows {
                    while column + 8 <= columns {
                        MicroKernels.transposeBlock(from: input + row * columns + column, stride: columns,
                                                    to: output + column * rows + row, stride: rows)
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

    /// Like `forEachBlock`, for sums whose parts the workers add up: the blocks are dealt to
    /// `shares` fixed shares (share c gets blocks c, c + shares, c + 2·shares, … in that order,
    /// through `next()`), whichever thread runs a share. A caller that keeps one partial sum per
    /// share (`chunk`) and adds the partials in share order then gets the same bits on every run
    /// with the same thread count. (With blocks claimed as they came, a worker that started late
    /// left the caller more blocks, and the sums' rounding followed the timing: two identical
    /// training runs' losses differed from step 3.) `shares` comes from `dealtShares(blocks)`,
    /// taken once by the caller, which sizes its partial sums by it.
    static func forEachBlockDealt(_ blocks: Int, shares: Int, _ worker: (_ chunk: Int, _ next: () -> Int?) -> Void) {
        guard blocks > 0 else { return }
        precondition(shares >= 1 && shares <= blocks, "forEachBlockDealt: \(shares) shares for \(blocks) blocks")
        Parallel.forEach(shares) { range in
            for chunk in range {
                var block = chunk
                worker(chunk) {
                    guard block < blocks else { return nil }
                    defer { block += shares }
                    return block
                }
            }
        }
    }

    /// How many shares `forEachBlockDealt` deals `blocks` blocks to: one per thread, at most one per block.
    static func dealtShares(_ blocks: Int) -> Int { Swift.min(Parallel.threadCount, blocks) }

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

    /// The contiguous float32 `weight` `[O, C, kh, kw]` in the im2col column order `[O, kh, kw, C]`:
    /// the weight itself for a 1×1 kernel (the same order), else a re-laid copy (pool memory, split
    /// over the workers; it was a zeroed array filled on the calling thread).
    static func weightMatrix(_ weight: Tensor, _ geometry: ConvolutionGeometry) -> Tensor {
        let (channels, taps) = (geometry.inChannels, geometry.kernelHeight * geometry.kernelWidth)
        if taps == 1 { return weight }
        let result = Tensor(uninitializedShape: [geometry.outChannels, taps * channels])
        let source = UnsafePointer(weight.floatPointer), target = result.floatPointer
        Parallel.forEach(geometry.outChannels, grain: Swift.max(1, 16_384 / Swift.max(taps * channels, 1))) { outs in
            for out in outs {
                for channel in 0..<channels {
                    for tap in 0..<taps {
                        target[(out * taps + tap) * channels + channel] = source[(out * channels + channel) * taps + tap]
                    }
                }
            }
        }
        return result
    }
}
