import Foundation

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
    /// Row strides of the per-position matrices (transformed tiles, products, transformed
    /// weights): the padded channel counts, one cache line longer where they are a
    /// multiple of 32 floats (64 and more), so that walking down a column does not keep hitting
    /// the same few cache sets (1 KB apart, 256 rows share 4 of the 64 sets of L1).
    let inStride: Int, outStride: Int
    /// Tiles transformed and multiplied together (a multiple of 4).
    let blockTiles: Int
    /// Distance between the planes of a block's transformed input and products;
    /// one cache line more than the plane, so the planes do not share cache sets.
    let inPlane: Int, outPlane: Int

    init(batch: Int, height: Int, width: Int, inChannels: Int, outChannels: Int, padding: Int, outputTile: Int, blockBytes: Int = 262_144,
         maximumBlockTiles: Int = 256) {
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
        inStride = WinogradPlan.rowStride(inPadded)
        outStride = WinogradPlan.rowStride(outPadded)
        // Keep the transformed input and product blocks near `blockBytes`.
        let tiles = blockBytes / (4 * positions * (inStride + outStride))
        blockTiles = Swift.max(8, Swift.min(maximumBlockTiles, tiles / 4 * 4))
        inPlane = blockTiles * inStride + 16
        outPlane = blockTiles * outStride + 16
    }

    /// `count` floats (a multiple of 8), plus one cache line when a multiple of 32 from 64 up
    /// (at 32 channels the longer rows cost more than they saved: conv-fwd-32c28 12.0 → 13.0 ms).
    static func rowStride(_ count: Int) -> Int { count >= 64 && count % 32 == 0 ? count + 16 : count }

    /// Distance between the positions' `inPadded × outStride` transformed weight matrices.
    var weightPlane: Int { WinogradPlan.weightPlane(rows: inPadded, columnStride: outStride) }

    /// Distance between the positions' transformed weight matrices of `rows` rows: one cache line
    /// more than the matrix. The matrices are otherwise a multiple of 4 KB apart from 32 rows up,
    /// and a weight transform's 36 stores per vector (and the weight gradient's 36 loads) then all
    /// fell in one set of the 8-way L1: the stores were 45% of the transform's time (perf).
    static func weightPlane(rows: Int, columnStride: Int) -> Int { rows * columnStride + 16 }
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

    /// `G g Gᵀ` for every channel pair, laid out `[positions][inPadded][outStride]` (zeros past the channels).
    /// With `forDataGradient` the kernel is flipped and its channels swapped, giving the
    /// weight of the convolution that maps dY to dX. Pool scratch: give it back with `ScratchMemory.release`.
    static func transformWeight(_ weight: UnsafePointer<Float>, outChannels: Int, inChannels: Int,
                                outputTile: Int, forDataGradient: Bool) -> UnsafeMutablePointer<Float> {
        let rows = forDataGradient ? outChannels : inChannels
        let columns = forDataGradient ? inChannels : outChannels
        let rowsPadded = (rows + 7) / 8 * 8
        let columnStride = WinogradPlan.rowStride((columns + 7) / 8 * 8)
        let plane = WinogradPlan.weightPlane(rows: rowsPadded, columnStride: columnStride)
        let size = outputTile + 2
        // Every row below `rows` is written up to `columnsPadded` (zeros past `columns`);
        // the matrix products never read further.
        let result = ScratchMemory.floats(size * size * plane)
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
                        gatherTaps(weight, inChannels: inChannels, row: row, column: column, lanes: Swift.min(8, columns - column),
                                   forDataGradient: forDataGradient, into: g)
                        // G g (size×3)
                        for i in 0..<size {
                            let (a, b, c) = matrix[i]
                            for k in 0..<3 { t[3 * i + k] = a * g[k] + b * g[3 + k] + c * g[6 + k] }
                        }
                        // (G g) Gᵀ (size×size)
                        let target = result + row * columnStride + column
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

    /// The 3×3 kernels of eight output channels (forward) or input channels (data gradient, taps
    /// reversed) of `row`, one tap per vector, one kernel per lane (lanes past `lanes` zero).
    /// Each kernel's nine taps lie together, so the first eight of each are loaded as a vector
    /// and the 8×8 block transposed in registers; only the ninth tap is gathered lane by lane.
    @inline(__always)
    static func gatherTaps(_ weight: UnsafePointer<Float>, inChannels: Int, row: Int, column: Int, lanes: Int,
                           forDataGradient: Bool, into g: UnsafeMutablePointer<Vector>) {
        @inline(__always) func kernel(_ lane: Int) -> UnsafePointer<Float> {
            let (out, channel) = forDataGradient ? (row, column + lane) : (column + lane, row)
            return weight + (out * inChannels + channel) * 9
        }
        @inline(__always) func taps(_ lane: Int) -> Vector { lane < lanes ? MicroKernels.load(kernel(lane)) : Vector() }
        var block = (taps(0), taps(1), taps(2), taps(3), taps(4), taps(5), taps(6), taps(7))
        MicroKernels.transpose(&block)
        var last = Vector()
        if lanes == 8 {
            last = Vector(kernel(0)[8], kernel(1)[8], kernel(2)[8], kernel(3)[8], kernel(4)[8], kernel(5)[8], kernel(6)[8], kernel(7)[8])
        } else {
            for lane in 0..<lanes { last[lane] = kernel(lane)[8] }
        }
        if forDataGradient {
            g[0] = last; g[1] = block.7; g[2] = block.6; g[3] = block.5; g[4] = block.4
            g[5] = block.3; g[6] = block.2; g[7] = block.1; g[8] = block.0
        } else {
            g[0] = block.0; g[1] = block.1; g[2] = block.2; g[3] = block.3; g[4] = block.4
            g[5] = block.5; g[6] = block.6; g[7] = block.7; g[8] = last
        }
    }

    /// The forward convolution (also used for the data gradient): channels-last `input`
    /// `[N, H, W, inChannels]` to channels-last `output` `[N, outH, outW, outChannels]`.
    static func convolve(input: UnsafePointer<Float>, inputIsChannelsLast: Bool, plan: WinogradPlan, schedule: WinogradSchedule = .tileBlocks,
                         transformedWeight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, output: UnsafeMutablePointer<Float>) {
        if schedule == .positions {
            convolveByPosition(input: input, inputIsChannelsLast: inputIsChannelsLast, plan: plan, transformedWeight: transformedWeight,
                               bias: bias, output: output)
            return
        }
        let tileCount = plan.tileCount, blockTiles = plan.blockTiles
        let blocks = (tileCount + blockTiles - 1) / blockTiles
        Convolution.forEachBlock(blocks) { next in
            let transformed = ScratchMemory.floats(plan.positions * plan.inPlane, zeroed: true)
            let products = ScratchMemory.floats(plan.positions * plan.outPlane, zeroed: true)
            var reader = WinogradReader(input: input, channelsLast: inputIsChannelsLast, plan: plan)
            defer { ScratchMemory.release(transformed); ScratchMemory.release(products); reader.deallocate() }
            while let block = next() {
                let first = block * blockTiles, count = Swift.min(blockTiles, tileCount - first)
                transformInput(&reader, plan: plan, first: first, count: count, into: transformed)
                for position in 0..<plan.positions {
                    multiply(at: position, rows: (count + 3) / 4 * 4, plan: plan, transformed: transformed,
                             weight: transformedWeight, products: products)
                }
                transformOutput(products, plan: plan, first: first, count: count, bias: bias, into: output)
            }
        }
    }

    /// products[position] = transformed[position] · weight[position]: `rows` tiles (a multiple
    /// of 4) by the output channels, summed over the input channels.
    @inline(__always)
    static func multiply(at position: Int, rows: Int, plan: WinogradPlan, transformed: UnsafePointer<Float>,
                         weight: UnsafePointer<Float>, products: UnsafeMutablePointer<Float>) {
        MicroKernels.multiply(rows: rows, columns: plan.outPadded, depth: plan.inChannels,
                              a: transformed + position * plan.inPlane, aRowStride: plan.inStride, aDepthStride: 1,
                              b: weight + position * plan.weightPlane, bRowStride: plan.outStride,
                              c: products + position * plan.outPlane, cRowStride: plan.outStride, accumulate: false)
    }

    /// sums[position][c][o] += Σ over `tiles` tiles of transformed[position][tile][c] · upstream[position][tile][o]
    /// (`=` when not `accumulating`: the first block needs no zeroed sums; it writes every element
    /// `weightFromTransformed` reads).
    @inline(__always)
    static func accumulateWeightGradient(at position: Int, tiles: Int, plan: WinogradPlan, transformed: UnsafePointer<Float>,
                                         upstream: UnsafePointer<Float>, into sums: UnsafeMutablePointer<Float>, accumulating: Bool = true) {
        MicroKernels.multiply(rows: (plan.inChannels + 3) / 4 * 4, columns: plan.outPadded, depth: tiles,
                              a: transformed + position * plan.inPlane, aRowStride: 1, aDepthStride: plan.inStride,
                              b: upstream + position * plan.outPlane, bRowStride: plan.outStride,
                              c: sums + position * plan.weightPlane, cRowStride: plan.outStride, accumulate: accumulating)
    }

    /// d loss / d weight `[O, C, 3, 3]`: Σ over tiles of Gᵀ[(A dY Aᵀ) ⊙ (Bᵀ d B)]G,
    /// summed in the transformed domain as one matrix product per tile element and
    /// block of tiles (per-worker partial sums, added up by `weightFromTransformed`).
    static func weightGradient(input: UnsafePointer<Float>, inputIsChannelsLast: Bool, gradient: UnsafePointer<Float>, plan: WinogradPlan,
                               schedule: WinogradSchedule = .tileBlocks) -> Tensor {
        if schedule == .positions {
            return weightGradientByPosition(input: input, inputIsChannelsLast: inputIsChannelsLast, gradient: gradient, plan: plan)
        }
        let tileCount = plan.tileCount, blockTiles = plan.blockTiles, positions = plan.positions
        let blocks = (tileCount + blockTiles - 1) / blockTiles
        let weightPlane = plan.weightPlane
        // Each share's first block writes its sums, the later ones add to them; the partial sums
        // are added up in share order as the weight is transformed back (no zeroed total, no serial
        // merge; the blocks dealt to fixed shares, `forEachBlockDealt`, so the same bits every run).
        let partials = (0..<Convolution.dealtShares(blocks)).map { _ in ScratchMemory.floats(positions * weightPlane) }
        defer { partials.forEach { ScratchMemory.release($0) } }
        Convolution.forEachBlockDealt(blocks, shares: partials.count) { chunk, next in
            guard var block = next() else { return }
            let transformed = ScratchMemory.floats(positions * plan.inPlane, zeroed: true)
            let upstream = ScratchMemory.floats(positions * plan.outPlane, zeroed: true)
            let partial = partials[chunk]
            var reader = WinogradReader(input: input, channelsLast: inputIsChannelsLast, plan: plan)
            defer { ScratchMemory.release(transformed); ScratchMemory.release(upstream); reader.deallocate() }
            var accumulating = false
            while true {
                let first = block * blockTiles, count = Swift.min(blockTiles, tileCount - first)
                transformInput(&reader, plan: plan, first: first, count: count, into: transformed)
                transformGradient(gradient, plan: plan, first: first, count: count, into: upstream)
                for position in 0..<positions {
                    accumulateWeightGradient(at: position, tiles: count, plan: plan, transformed: transformed, upstream: upstream, into: partial,
                                             accumulating: accumulating)
                }
                accumulating = true
                guard let claimed = next() else { break }
                block = claimed
            }
        }
        if partials.isEmpty {
            let zeros = ScratchMemory.floats(positions * weightPlane, zeroed: true)
            defer { ScratchMemory.release(zeros) }
            return weightFromTransformed([zeros], plan: plan)
        }
        return weightFromTransformed(partials, plan: plan)
    }

    /// dW `[O, C, 3, 3]` = Gᵀ · dŴ · G for each channel pair, from the transformed-domain
    /// sums `[positions][inPadded][outStride]`: eight output channels at a time, one per lane.
    /// `sums` holds one or more partial sums, added here as they are read.
    static func weightFromTransformed(_ sums: [UnsafeMutablePointer<Float>], plan: WinogradPlan) -> Tensor {
        let size = plan.outputTile + 2
        let weightPlane = plan.weightPlane
        let matrix = (plan.outputTile == 2 ? kernelMatrix2 : kernelMatrix4).map {
            (Vector(repeating: $0.0), Vector(repeating: $0.1), Vector(repeating: $0.2))
        }
        let result = Tensor(uninitializedShape: [plan.outChannels, plan.inChannels, 3, 3])
        let out = result.floatPointer
        let inChannels = plan.inChannels
        let first = UnsafePointer(sums[0]), others = sums.dropFirst().map { UnsafePointer($0) }
        Convolution.forEachRange(inChannels, blockSize: 8) { channels in
            withUnsafeTemporaryAllocation(of: Vector.self, capacity: 3 * size) { scratch in
                let t = scratch.baseAddress!
                for channel in channels {
                    var outChannel = 0
                    while outChannel < plan.outChannels {
                        let offset = channel * plan.outStride + outChannel
                        // Gᵀ · m (3×size)
                        for column in 0..<size {
                            var sums = (Vector(), Vector(), Vector())
                            for i in 0..<size {
                                let element = offset + (size * i + column) * weightPlane
                                var value = MicroKernels.load(first + element)
                                for partial in others { value += MicroKernels.load(partial + element) }
                                sums.0 = sums.0.addingProduct(matrix[i].0, value)
                                sums.1 = sums.1.addingProduct(matrix[i].1, value)
                                sums.2 = sums.2.addingProduct(matrix[i].2, value)
                            }
                            t[column] = sums.0; t[size + column] = sums.1; t[2 * size + column] = sums.2
                        }
                        // (Gᵀ m) · G (3×3), lane l to output channel outChannel + l: the nine taps as vectors, the
                        // first eight transposed in registers so that each channel's taps 0–7 are one store.
                        var taps = (Vector(), Vector(), Vector(), Vector(), Vector(), Vector(), Vector(), Vector())
                        var last = Vector()
                        for k in 0..<3 {
                            var sums = (Vector(), Vector(), Vector())
                            for j in 0..<size {
                                let value = t[size * k + j]
                                sums.0 = sums.0.addingProduct(value, matrix[j].0)
                                sums.1 = sums.1.addingProduct(value, matrix[j].1)
                                sums.2 = sums.2.addingProduct(value, matrix[j].2)
                            }
                            switch k {
                            case 0: (taps.0, taps.1, taps.2) = sums
                            case 1: (taps.3, taps.4, taps.5) = sums
                            default: (taps.6, taps.7, last) = sums
                            }
                        }
                        let lanes = Swift.min(8, plan.outChannels - outChannel)
                        let target = out + (outChannel * inChannels + channel) * 9
                        MicroKernels.transpose(&taps)
                        withUnsafeBytes(of: &taps) { rows in
                            let rows = rows.bindMemory(to: Vector.self)
                            for lane in 0..<lanes {
                                let element = target + lane * inChannels * 9
                                MicroKernels.store(rows[lane], element)
                                element[8] = last[lane]
                            }
                        }
                        outChannel += 8
                    }
                }
            }
        }
        return result
    }
}
