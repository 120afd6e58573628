import Foundation

/// Attention for long sequences without the L×S score matrix (the FlashAttention scheme):
/// per block of 16 query rows, the keys are visited in blocks of `keyBlock`; each block's
/// scores go to a small buffer, the softmax runs online (a running maximum and sum per
/// row, the output accumulated so far rescaled when the maximum grows), and the output
/// accumulates transposed, `Oᵀ[Ev][16]`, in a per-task scratch. Memory is O(L + S) per
/// worker, not O(L·S), and the forward pass saves only each row's log-sum-exp (base 2).
///
/// The 16 query rows of a block are the lanes of two vectors ("row lanes", as in
/// `SmallHeadAttention`, whose depth-8 case this generalises): the queries are packed
/// transposed, `Qᵀ[E][16]`, scaled by `scale · log₂ e`, and every product is a register
/// tile of broadcast key or value elements times those lanes (`TiledAttentionKernels`).
/// So the softmax needs no horizontal reductions and any head size works; 40, 64, 80 and
/// 160 (Stable Diffusion's) fill the 6-wide tiles all but the last.
///
/// The backward pass (`TiledAttention.backward`, in AttentionTiledBackward.swift)
/// recomputes each block's probabilities from the log-sum-exp. The GEMM path
/// (`AttentionProblem`) stays the reference; `DIFFUSE_ATTENTION=gemm` forces it.
enum TiledAttention {
    typealias Vector = SIMD8<Float>
    typealias Kernels = TiledAttentionKernels
    /// Query rows per block (the lanes of two vectors).
    static let rows = TiledAttentionKernels.rows
    /// Keys per block: the block's scores (`keyBlock × 16` floats, 8 KB) stay in L1 (64 and 128 measured alike).
    static let keyBlock = 128

    /// Whether `problem` can take this path (every size can; empty ones take the GEMM path).
    static func supports(_ problem: AttentionProblem) -> Bool {
        problem.queryLength > 0 && problem.keyLength > 0 && problem.depth > 0 && problem.valueDepth > 0
    }

    /// Whether `problem` should take this path: from `minimumScores` scores per item. There the
    /// GEMM path's L×S matrix (per worker, and for every item when recorded with few items)
    /// starts to cost memory, and this kernel is as fast or faster: measured on 32 items at
    /// 2 threads (Zen 4, AVX2), it takes 0.8–1.0 of the GEMM path's time forward and 0.9–1.0
    /// forward and backward at 128×128 for heads of 40, 64, 80 and 160, 0.5–0.9 from 512×512,
    /// but up to 1.4 (backward) at 64×64. `AttentionKernels.allowsTiled` turns it off.
    static func applies(to problem: AttentionProblem) -> Bool {
        guard AttentionKernels.allowsTiled, supports(problem) else { return false }
        return problem.queryLength * problem.keyLength >= minimumScores
    }

    /// Scores per item from which the tiled kernel is used (see `applies`).
    nonisolated(unsafe) static var minimumScores = 128 * 128

    /// Pointers and layouts of one item (the small-head kernel's).
    typealias Item = SmallHeadAttention.Item

    // MARK: Packing

    /// An operand's item as row-major rows: in place when it is row-major, else copied to
    /// `scratch` (`rows × depth` floats). Returns the first row and the row stride.
    static func rowMajor(_ base: UnsafePointer<Float>, _ layout: (transposed: Bool, leadingDimension: Int), rows: Int, depth: Int,
                         scratch: UnsafeMutablePointer<Float>) -> (UnsafePointer<Float>, Int) {
        guard layout.transposed else { return (base, layout.leadingDimension) }
        for row in 0..<rows {
            for element in 0..<depth { scratch[row * depth + element] = base[element * layout.leadingDimension + row] }
        }
        return (UnsafePointer(scratch), depth)
    }

    /// `block[e · 16 + r] = factor · X[first + r, e]` for the rows `first..<first + count`, zero for r ≥ count.
    @inline(__always)
    static func packTransposed(_ base: UnsafePointer<Float>, _ layout: (transposed: Bool, leadingDimension: Int), first: Int, count: Int,
                               depth: Int, factor: Float, into block: UnsafeMutablePointer<Float>) {
        let (rowStride, elementStride) = layout.transposed ? (1, layout.leadingDimension) : (layout.leadingDimension, 1)
        for r in 0..<rows {
            guard r < count else {
                for e in 0..<depth { block[e * rows + r] = 0 }
                continue
            }
            let row = base + (first + r) * rowStride
            for e in 0..<depth { block[e * rows + r] = factor * row[e * elementStride] }
        }
    }

    /// `block[r · width + e] = X[first + r, e]` for the rows `first..<first + count`, zero elsewhere
    /// (rows r ≥ count and elements e ≥ depth, up to `width`).
    @inline(__always)
    static func packRows(_ base: UnsafePointer<Float>, _ layout: (transposed: Bool, leadingDimension: Int), first: Int, count: Int,
                         depth: Int, width: Int, into block: UnsafeMutablePointer<Float>) {
        let (rowStride, elementStride) = layout.transposed ? (1, layout.leadingDimension) : (layout.leadingDimension, 1)
        block.update(repeating: 0, count: rows * width)
        for r in 0..<count {
            let row = base + (first + r) * rowStride
            for e in 0..<depth { block[r * width + e] = row[e * elementStride] }
        }
    }

    /// Adds `mask[first + r, keyStart + s] · log₂ e` to `scores[s · 16 + r]` for the real rows.
    @inline(__always)
    static func addMask(_ mask: UnsafePointer<Float>, rowStride: Int, columnStride: Int, first: Int, count: Int,
                        keyStart: Int, keys: Int, to scores: UnsafeMutablePointer<Float>) {
        for r in 0..<count {
            let maskRow = mask + (first + r) * rowStride + keyStart * columnStride
            for s in 0..<keys { scores[s * rows + r] += Kernels.log2e * maskRow[s * columnStride] }
        }
    }

    /// The lane-wise largest of `scores[0..<keys · 16]`.
    @inline(__always)
    static func largest(_ scores: UnsafePointer<Float>, keys: Int) -> (Vector, Vector) {
        var low = Vector(repeating: -.infinity), high = Vector(repeating: -.infinity)
        for s in 0..<keys {
            let a = MicroKernels.load(scores + s * rows), b = MicroKernels.load(scores + s * rows + 8)
            low.replace(with: a, where: a .> low)
            high.replace(with: b, where: b .> high)
        }
        return (low, high)
    }

    /// How the work is cut: `units` (item, query block) pairs in `tasks` contiguous runs,
    /// handed out to whichever worker is free (the machine is shared; runs even out).
    static func taskCount(units: Int) -> Int {
        Swift.min(units, Swift.max(1, Parallel.threadCount * 8))
    }

    // MARK: Forward

    /// The output `[…, L, Ev]` (laid out like the query when that is a dense view of the same
    /// shape, `SmallHeadAttention.RowLayout`) and, when `keepsLogSumExp`, each score row's
    /// base-2 log-sum-exp `[…, L]` (+∞ for a row whose every position is masked).
    static func forward(_ problem: AttentionProblem, keepsLogSumExp: Bool) -> (output: Tensor, logSumExp: Tensor?) {
        let (L, S, E, Ev) = (problem.queryLength, problem.keyLength, problem.depth, problem.valueDepth)
        let queryScale = problem.scale * Kernels.log2e
        let layout = SmallHeadAttention.RowLayout(like: problem.query, batchShape: problem.batchShape, rows: L, depth: Ev)
        let output = layout.allocate()
        let logSumExp = keepsLogSumExp ? Tensor(uninitializedShape: problem.batchShape + [L]) : nil
        let out = output.floatPointer, lse = logSumExp?.floatPointer
        let mask = problem.mask
        let maskBase = mask.map { UnsafePointer($0.tensor.floatPointer) }
        let queryBlocks = (L + rows - 1) / rows
        let units = problem.batch * queryBlocks
        let tasks = taskCount(units: units)
        Parallel.forEachTask(tasks) { task in
            let queries = ScratchMemory.floats(E * rows)
            let scores = ScratchMemory.floats(keyBlock * rows)
            let accumulator = ScratchMemory.floats(Ev * rows)
            let keyCopy = problem.key.transposed ? ScratchMemory.floats(S * E) : nil
            let valueCopy = problem.value.transposed ? ScratchMemory.floats(S * Ev) : nil
            defer {
                for buffer in [queries, scores, accumulator] { ScratchMemory.release(buffer) }
                keyCopy.map(ScratchMemory.release); valueCopy.map(ScratchMemory.release)
            }
            var loadedItem = -1
            var keys = (UnsafePointer(scores), 0), values = (UnsafePointer(scores), 0)
            for unit in AttentionProblem.block(task, of: tasks, units) {
                let itemIndex = unit / queryBlocks, first = (unit % queryBlocks) * rows
                let count = Swift.min(rows, L - first)
                let item = Item(problem, itemIndex)
                if itemIndex != loadedItem {
                    keys = rowMajor(item.key, item.keyLayout, rows: S, depth: E, scratch: keyCopy ?? scores)
                    values = rowMajor(item.value, item.valueLayout, rows: S, depth: Ev, scratch: valueCopy ?? scores)
                    loadedItem = itemIndex
                }
                packTransposed(item.query, item.queryLayout, first: first, count: count, depth: E, factor: queryScale, into: queries)
                accumulator.update(repeating: 0, count: Ev * rows)
                var maximum = (Vector(repeating: -.infinity), Vector(repeating: -.infinity))
                var sum = (Vector(), Vector())
                var keyStart = 0
                while keyStart < S {
                    let n = Swift.min(keyBlock, S - keyStart)
                    Kernels.products(rows: keys.0 + keyStart * keys.1, rowStride: keys.1, count: n,
                                     columns: queries, depth: E, into: scores)
                    if let mask, let maskBase {
                        addMask(maskBase + mask.itemOffsets[itemIndex], rowStride: mask.rowStride, columnStride: mask.columnStride,
                                first: first, count: count, keyStart: keyStart, keys: n, to: scores)
                    }
                    // The running maximum, and the shift the exponentials use (0 while a row has seen
                    // only −∞, so that −∞ − shift stays −∞ and gives 0, not NaN).
                    let blockLargest = largest(scores, keys: n)
                    let newLow = maximum.0.replacing(with: blockLargest.0, where: blockLargest.0 .> maximum.0)
                    let newHigh = maximum.1.replacing(with: blockLargest.1, where: blockLargest.1 .> maximum.1)
                    let negativeInfinity = Vector(repeating: -.infinity)
                    let shiftLow = newLow.replacing(with: 0, where: newLow .== negativeInfinity)
                    let shiftHigh = newHigh.replacing(with: 0, where: newHigh .== negativeInfinity)
                    let correction = (Kernels.exp2(maximum.0 - shiftLow), Kernels.exp2(maximum.1 - shiftHigh))
                    var blockSumLow = Vector(), blockSumHigh = Vector()
                    for s in 0..<n {
                        let pointer = scores + s * rows
                        let low = Kernels.exp2(MicroKernels.load(pointer) - shiftLow), high = Kernels.exp2(MicroKernels.load(pointer + 8) - shiftHigh)
                        MicroKernels.store(low, pointer); MicroKernels.store(high, pointer + 8)
                        blockSumLow += low; blockSumHigh += high
                    }
                    sum = (sum.0 * correction.0 + blockSumLow, sum.1 * correction.1 + blockSumHigh)
                    maximum = (newLow, newHigh)
                    Kernels.accumulateColumns(rows: values.0 + keyStart * values.1, rowStride: values.1, count: n, weights: scores,
                                              depth: Ev, factor: correction, into: accumulator)
                    keyStart += n
                }
                // O = Oᵀ / sum, transposed into the output rows; a row with no visible position gives zeros.
                let target = out + layout.itemOffsets[itemIndex] + first * layout.rowStride
                for r in 0..<count {
                    let total = r < 8 ? sum.0[r] : sum.1[r - 8]
                    let factor: Float = total > 0 ? 1 / total : 0
                    let row = target + r * layout.rowStride
                    for d in 0..<Ev { row[d] = accumulator[d * rows + r] * factor }
                    if let lse {
                        let largest = r < 8 ? maximum.0[r] : maximum.1[r - 8]
                        lse[itemIndex * L + first + r] = total > 0 ? largest + Foundation.log2(total) : .infinity
                    }
                }
            }
        }
        return (output, logSumExp)
    }
}
