import Foundation

/// Attention for heads of depth 8, diffusers' default `attention_head_dim` (the course
/// UNet's 64 channels are 8 heads of 8), and 16 (the small text-to-image UNet's deeper
/// levels: 128 channels in 8 heads). With 8 or 16 products per score the GEMM path
/// (`AttentionProblem.forward`, two BLAS calls per item) spends its time packing and
/// writing an L×S score matrix per item that the softmax then reads and writes again.
///
/// Here the 8 SIMD lanes are 8 query rows ("key-major"): a block of 8 queries is held
/// transposed in 8 registers (one per depth element), and each key's 8 scores are one
/// vector, `Σₑ Qᵀₑ · K[s, e]`, 8 multiply-adds with the key's elements broadcast from
/// memory. The softmax over keys is then lane-wise (a running maximum and sum across the
/// key vectors, no horizontal reductions, no padding of S), and `P·V` accumulates the
/// output transposed in 8 registers the same way. Scores are kept in base 2 (the queries
/// carry `scale · log₂ e`) so the exponential is 2ˣ.
///
/// The backward pass recomputes each block's probabilities from the base-2 log-sum-exp
/// saved by the forward pass (flash attention's scheme); P, dS, dQᵀ, dV and dK are each a
/// pass over the keys with at most 10 vectors live, so nothing spills.
///
/// Heads of 16 are two chunks of 8 depth elements: each pass above runs once per chunk
/// (the scores and dP accumulate over the chunks), so the registers in use stay those of
/// depth 8.
///
/// Used when depth and value depth are equal and 8, or 16 with short sequences
/// (`maximumScoresAtDepth16`), there is no mask and the items alone keep
/// every worker busy (`AttentionProblem.rowBlocks == 1`); the GEMM path stays the
/// reference and the tests compare the two (`AttentionKernels.allowsSmallHead`).
enum SmallHeadAttention {
    typealias Vector = SIMD8<Float>
    /// Query rows per block: the lanes of a vector.
    static let rows = 8
    /// log₂ e: scores are kept in base-2 units; the saved log-sum-exp too.
    static let log2e: Float = 1.4426950408889634
    /// Most scores per item (queries × keys) with which heads of 16 take this path: beyond it the tiled
    /// kernel, whose 16-row register tiles have shorter dependency chains, is the faster (Zen 3, 2 threads,
    /// forward and backward of 32 × 8 heads: 16×16 0.86 against the GEMM path's 2.0 and the tiled kernel's
    /// 1.26 ms, 4×4 0.21 against 0.83 and 0.51 ms, 16×77 2.1–2.75 against 3.0–3.5 and 2.0–2.7 ms; at 32×32 a
    /// tie with the tiled kernel, at 64×64 6.1–6.8 against its 5.1–5.8 ms).
    static let maximumScoresAtDepth16 = 2048

    /// Whether `problem` takes this path.
    static func applies(to problem: AttentionProblem) -> Bool {
        guard problem.mask == nil, problem.depth == problem.valueDepth, problem.queryLength > 0, problem.keyLength > 0,
              problem.rowBlocks == 1 else { return false }
        switch problem.depth {
        case 8: return true
        case 16: return problem.queryLength * problem.keyLength <= maximumScoresAtDepth16
        default: return false
        }
    }

    /// Pointers and layouts of one item, read once so the loops see no reference counting.
    struct Item {
        let query: UnsafePointer<Float>, key: UnsafePointer<Float>, value: UnsafePointer<Float>
        let queryLayout: (transposed: Bool, leadingDimension: Int)
        let keyLayout: (transposed: Bool, leadingDimension: Int)
        let valueLayout: (transposed: Bool, leadingDimension: Int)

        init(_ problem: AttentionProblem, _ item: Int) {
            query = problem.query.pointer(item)
            key = problem.key.pointer(item)
            value = problem.value.pointer(item)
            queryLayout = (problem.query.transposed, problem.query.leadingDimension)
            keyLayout = (problem.key.transposed, problem.key.leadingDimension)
            valueLayout = (problem.value.transposed, problem.value.leadingDimension)
        }
    }

    /// Where a `[…, rows, depth]` result of the kernel lives (depth 8 or 16 here, any in `TiledAttention`): in the layout of the operand it belongs
    /// to when that is a dense view with the same shape (the output and dQ like the query, dK like
    /// the key, dV like the value), else row-major. A `[B, L, heads · 8]` projection split into
    /// heads (`reshaped([B, L, heads, 8]).transposed(1, 2)`) thus gets its output and gradients in
    /// its own memory order, so the transposes and reshapes around attention copy nothing.
    struct RowLayout {
        let shape: [Int], strides: [Int]
        /// Element offset of each item's first row, and the distance between rows.
        let itemOffsets: [Int]
        let rowStride: Int

        init(like operand: AttentionOperand, batchShape: [Int], rows: Int, depth: Int) {
            shape = batchShape + [rows, depth]
            let tensor = operand.tensor
            if !operand.transposed && tensor.dataType == .float32 && tensor.shape == shape && tensor.isDense && tensor.strides.last == 1 {
                strides = tensor.strides
                itemOffsets = operand.itemOffsets
                rowStride = operand.leadingDimension
            } else {
                strides = Shape.contiguousStrides(shape)
                itemOffsets = (0..<Shape.count(batchShape)).map { $0 * rows * depth }
                rowStride = depth
            }
        }

        func allocate() -> Tensor { Tensor(uninitializedShape: shape, strides: strides) }

        /// `tensor` (of this shape) in this layout: itself when it already is, else a copy.
        func arrange(_ tensor: Tensor) -> Tensor { Tensor.withStrides(tensor, strides) }
    }

    /// Eight vectors: a block's 8 rows, or its 8 columns.
    typealias Block = (Vector, Vector, Vector, Vector, Vector, Vector, Vector, Vector)

    // MARK: Loading and storing

    /// Elements `8 · chunk ..< 8 · chunk + 8` of row `row` of an item's operand.
    @inline(__always)
    static func row(_ base: UnsafePointer<Float>, _ layout: (transposed: Bool, leadingDimension: Int), _ row: Int, chunk: Int = 0) -> Vector {
        if !layout.transposed { return MicroKernels.load(base + row * layout.leadingDimension + 8 * chunk) }
        var result = Vector()
        for e in 0..<8 { result[e] = base[(8 * chunk + e) * layout.leadingDimension + row] }
        return result
    }

    /// `rows[s · depth + e]` = element (s, e) of an item's K or V.
    @inline(__always)
    static func pack(_ base: UnsafePointer<Float>, _ layout: (transposed: Bool, leadingDimension: Int), count: Int, depth: Int,
                     into rows: UnsafeMutablePointer<Float>) {
        for s in 0..<count {
            for chunk in 0..<depth / 8 { MicroKernels.store(row(base, layout, s, chunk: chunk), rows + s * depth + 8 * chunk) }
        }
    }

    /// `block[r · depth + e]` = `scale` · query row `first + r`, zero past the end; returns how many rows are real.
    @inline(__always)
    static func loadQueryRows(_ item: Item, first: Int, length: Int, depth: Int, scale: Float, into block: UnsafeMutablePointer<Float>) -> Int {
        let count = Swift.min(rows, length - first)
        for r in 0..<rows {
            for chunk in 0..<depth / 8 {
                let elements = r < count ? row(item.query, item.queryLayout, first + r, chunk: chunk) * scale : Vector()
                MicroKernels.store(elements, block + r * depth + 8 * chunk)
            }
        }
        return count
    }

    /// The 8 vectors at `pointer`, `pointer + rowStride`, ….
    @inline(__always)
    static func loadBlock(_ pointer: UnsafePointer<Float>, rowStride: Int = 8) -> Block {
        (MicroKernels.load(pointer), MicroKernels.load(pointer + rowStride), MicroKernels.load(pointer + 2 * rowStride),
         MicroKernels.load(pointer + 3 * rowStride), MicroKernels.load(pointer + 4 * rowStride), MicroKernels.load(pointer + 5 * rowStride),
         MicroKernels.load(pointer + 6 * rowStride), MicroKernels.load(pointer + 7 * rowStride))
    }

    /// The columns of the 8×8 matrix whose rows are at `pointer`, `pointer + rowStride`, ….
    @inline(__always)
    static func loadColumns(_ pointer: UnsafePointer<Float>, rowStride: Int = 8) -> Block {
        var c0 = Vector(), c1 = Vector(), c2 = Vector(), c3 = Vector(), c4 = Vector(), c5 = Vector(), c6 = Vector(), c7 = Vector()
        for r in 0..<8 {
            let row = pointer + r * rowStride
            c0[r] = row[0]; c1[r] = row[1]; c2[r] = row[2]; c3[r] = row[3]
            c4[r] = row[4]; c5[r] = row[5]; c6[r] = row[6]; c7[r] = row[7]
        }
        return (c0, c1, c2, c3, c4, c5, c6, c7)
    }

    /// Rows `0..<count` of the 8×8 matrix whose columns are `columns`, each times `factor`, to `target`,
    /// `target + rowStride`, ….
    @inline(__always)
    static func storeTransposed(_ columns: Block, count: Int, factor: Vector, to target: UnsafeMutablePointer<Float>, rowStride: Int) {
        let c = (columns.0 * factor, columns.1 * factor, columns.2 * factor, columns.3 * factor,
                 columns.4 * factor, columns.5 * factor, columns.6 * factor, columns.7 * factor)
        for r in 0..<count {
            let row = target + r * rowStride
            row[0] = c.0[r]; row[1] = c.1[r]; row[2] = c.2[r]; row[3] = c.3[r]
            row[4] = c.4[r]; row[5] = c.5[r]; row[6] = c.6[r]; row[7] = c.7[r]
        }
    }

    // MARK: Arithmetic

    /// 2ˣ for x ≤ 0 by `VectorMath.exp2Polynomial`, x clamped at −125 first (x below −125, −∞
    /// included, gives about 2⁻¹²⁵, which is 0 for every use here).
    @inline(__always)
    static func exp2(_ input: Vector) -> Vector {
        let floor = Vector(repeating: -125)
        return VectorMath.exp2Polynomial(input.replacing(with: floor, where: input .< floor))
    }

    /// `Σₑ columns.e · row[e]`: the 8 lanes' dot products with one row of 8 (broadcast from memory),
    /// in four short chains (latency, not throughput, limits these loops).
    @inline(__always)
    static func dot(_ columns: Block, _ row: UnsafePointer<Float>) -> Vector {
        let a = (columns.0 * Vector(repeating: row[0])).addingProduct(columns.4, Vector(repeating: row[4]))
        let b = (columns.1 * Vector(repeating: row[1])).addingProduct(columns.5, Vector(repeating: row[5]))
        let c = (columns.2 * Vector(repeating: row[2])).addingProduct(columns.6, Vector(repeating: row[6]))
        let d = (columns.3 * Vector(repeating: row[3])).addingProduct(columns.7, Vector(repeating: row[7]))
        return (a + b) + (c + d)
    }

    /// `sums.e += lanes · row[e]` for the 8 elements of one row (broadcast from memory).
    @inline(__always)
    static func accumulate(_ sums: inout Block, _ lanes: Vector, _ row: UnsafePointer<Float>) {
        sums.0 = sums.0.addingProduct(lanes, Vector(repeating: row[0]))
        sums.1 = sums.1.addingProduct(lanes, Vector(repeating: row[1]))
        sums.2 = sums.2.addingProduct(lanes, Vector(repeating: row[2]))
        sums.3 = sums.3.addingProduct(lanes, Vector(repeating: row[3]))
        sums.4 = sums.4.addingProduct(lanes, Vector(repeating: row[4]))
        sums.5 = sums.5.addingProduct(lanes, Vector(repeating: row[5]))
        sums.6 = sums.6.addingProduct(lanes, Vector(repeating: row[6]))
        sums.7 = sums.7.addingProduct(lanes, Vector(repeating: row[7]))
    }

    /// `target[0..<8] += Σᵣ weights[r] · rows.r`: one key's row of dK or dV gets the block's share.
    @inline(__always)
    static func accumulateRow(_ target: UnsafeMutablePointer<Float>, weights: UnsafePointer<Float>, rows: Block) {
        let a = (rows.0 * Vector(repeating: weights[0])).addingProduct(rows.4, Vector(repeating: weights[4]))
        let b = (rows.1 * Vector(repeating: weights[1])).addingProduct(rows.5, Vector(repeating: weights[5]))
        let c = (rows.2 * Vector(repeating: weights[2])).addingProduct(rows.6, Vector(repeating: weights[6]))
        let d = (rows.3 * Vector(repeating: weights[3])).addingProduct(rows.7, Vector(repeating: weights[7]))
        MicroKernels.store(MicroKernels.load(target) + ((a + b) + (c + d)), target)
    }

    /// `products[s · 8 + r]` = row r of `block` (8 rows of `depth`, row-major) · row s of `rows`
    /// (`count` rows of `depth`): one vector of 8 lanes per row of `rows`, summed over the chunks.
    @inline(__always)
    static func products(_ block: UnsafePointer<Float>, _ rows: UnsafePointer<Float>, count: Int, depth: Int,
                         into products: UnsafeMutablePointer<Float>) {
        let columns = loadColumns(block, rowStride: depth)
        for s in 0..<count { MicroKernels.store(dot(columns, rows + s * depth), products + s * 8) }
        for chunk in 1..<depth / 8 {
            let columns = loadColumns(block + 8 * chunk, rowStride: depth)
            for s in 0..<count {
                let sum = MicroKernels.load(products + s * 8) + dot(columns, rows + s * depth + 8 * chunk)
                MicroKernels.store(sum, products + s * 8)
            }
        }
    }

    /// Row `first + r` of an item's `[rows, depth]` result = column r of `Σₛ lanes(s) ⊗ rows(s)` times
    /// `factor` (the lanes `weights[s · 8 ..< s · 8 + 8]`, `count` rows of `rows`), chunk by chunk.
    @inline(__always)
    static func accumulateTransposed(_ weights: UnsafePointer<Float>, _ rows: UnsafePointer<Float>, count: Int, depth: Int,
                                     factor: Vector, realRows: Int, to target: UnsafeMutablePointer<Float>, rowStride: Int) {
        for chunk in 0..<depth / 8 {
            var sums: Block = (Vector(), Vector(), Vector(), Vector(), Vector(), Vector(), Vector(), Vector())
            for s in 0..<count { accumulate(&sums, MicroKernels.load(weights + s * 8), rows + s * depth + 8 * chunk) }
            storeTransposed(sums, count: realRows, factor: factor, to: target + 8 * chunk, rowStride: rowStride)
        }
    }

    /// `sums[s · depth ..< (s + 1) · depth] += Σᵣ weights[s · 8 + r] · block row r`, for the `count` rows of
    /// `sums` (dK and dV), chunk by chunk.
    @inline(__always)
    static func accumulateRows(_ sums: UnsafeMutablePointer<Float>, weights: UnsafePointer<Float>, block: UnsafePointer<Float>,
                               count: Int, depth: Int) {
        for chunk in 0..<depth / 8 {
            let blockRows = loadBlock(block + 8 * chunk, rowStride: depth)
            for s in 0..<count { accumulateRow(sums + s * depth + 8 * chunk, weights: weights + s * 8, rows: blockRows) }
        }
    }

    // MARK: Forward

    /// The output `[…, L, depth]` (laid out like the query, `RowLayout`) and, when `keepsLogSumExp`,
    /// the log-sum-exp of every score row `[…, L]` in base 2 (log₂ Σₛ 2^(scores · log₂ e)),
    /// which is what `backward` takes.
    static func forward(_ problem: AttentionProblem, keepsLogSumExp: Bool) -> (output: Tensor, logSumExp: Tensor?) {
        let (L, D) = (problem.queryLength, problem.depth)
        let scale = problem.scale * log2e
        let layout = RowLayout(like: problem.query, batchShape: problem.batchShape, rows: L, depth: D)
        let output = layout.allocate()
        // Only a recorded graph's backward reads it.
        let logSumExp = keepsLogSumExp ? Tensor(uninitializedShape: problem.batchShape + [L]) : nil
        let out = output.floatPointer, lse = logSumExp?.floatPointer
        let target = ForwardTarget(layout: layout, output: out, logSumExp: lse, scale: scale)
        if Parallel.threadCount == 1 || problem.batch == 1 {
            // What `Parallel.forEach` would inline here: a call instead (see `forwardItemsAtDepth8`).
            if D == 8 { forwardItemsAtDepth8(problem, 0..<problem.batch, target) } else { forwardItemsAtDepth16(problem, 0..<problem.batch, target) }
            return (output, logSumExp)
        }
        Parallel.forEach(problem.batch) { items in
            if D == 8 { forwardItems(problem, items, depth: 8, target) } else { forwardItems(problem, items, depth: 16, target) }
        }
        return (output, logSumExp)
    }

    /// Where `forward` writes: the output's layout and memory, the log-sum-exp (if kept), the queries' factor.
    struct ForwardTarget {
        let layout: RowLayout
        let output: UnsafeMutablePointer<Float>
        let logSumExp: UnsafeMutablePointer<Float>?
        let scale: Float
    }

    /// `forwardItems` for one depth each, never inlined, for one thread: inlined into `forward` (as a
    /// one-thread `Parallel.forEach` does with its body) the function outgrew the optimizer's budget
    /// and its vector loads and stores stayed calls (3.4% of a one-thread DDIM sampling run, perf;
    /// `attention-fwd:16:8:196:196:8` on one thread 10.5 → 4.2 ms). With more threads the loops stay
    /// in `forEach`'s closure, where they compile well (called from there, they measured 2–3% slower).
    @inline(never)
    static func forwardItemsAtDepth8(_ problem: AttentionProblem, _ items: Range<Int>, _ target: ForwardTarget) {
        forwardItems(problem, items, depth: 8, target)
    }

    @inline(never)
    static func forwardItemsAtDepth16(_ problem: AttentionProblem, _ items: Range<Int>, _ target: ForwardTarget) {
        forwardItems(problem, items, depth: 16, target)
    }

    /// The forward pass over `items`, the depth a constant in each caller so that the loops are specialised for it.
    @inline(__always)
    static func forwardItems(_ problem: AttentionProblem, _ items: Range<Int>, depth D: Int, _ target: ForwardTarget) {
        let (L, S) = (problem.queryLength, problem.keyLength)
        let (layout, out, lse, scale) = (target.layout, target.output, target.logSumExp, target.scale)
        let keys = UnsafeMutablePointer<Float>.allocate(capacity: D * S)
        let values = UnsafeMutablePointer<Float>.allocate(capacity: D * S)
        let scores = UnsafeMutablePointer<Float>.allocate(capacity: 8 * S)
        let block = UnsafeMutablePointer<Float>.allocate(capacity: 8 * D)
        defer { keys.deallocate(); values.deallocate(); scores.deallocate(); block.deallocate() }
        for itemIndex in items {
            let item = Item(problem, itemIndex)
            pack(item.key, item.keyLayout, count: S, depth: D, into: keys)
            pack(item.value, item.valueLayout, count: S, depth: D, into: values)
            var first = 0
            while first < L {
                let count = loadQueryRows(item, first: first, length: L, depth: D, scale: scale, into: block)
                // Scores, one key (8 rows) at a time, then each row's largest.
                products(block, keys, count: S, depth: D, into: scores)
                var largest = Vector(repeating: -.infinity)
                for s in 0..<S {
                    let score = MicroKernels.load(scores + s * 8)
                    largest = largest.replacing(with: score, where: score .> largest)
                }
                // P = 2^(scores − largest) in place and its row sums (a pass of its own: the
                // exponential's long dependency chain would stall the accumulation below).
                var sum = Vector()
                for s in 0..<S {
                    let probability = exp2(MicroKernels.load(scores + s * 8) - largest)
                    MicroKernels.store(probability, scores + s * 8)
                    sum += probability
                }
                // Oᵀ = Vᵀ·Pᵀ, unnormalised.
                accumulateTransposed(scores, values, count: S, depth: D, factor: 1 / sum, realRows: count,
                                     to: out + layout.itemOffsets[itemIndex] + first * layout.rowStride, rowStride: layout.rowStride)
                if let lse {
                    for r in 0..<count { lse[itemIndex * L + first + r] = largest[r] + Foundation.log2(sum[r]) }
                }
                first += rows
            }
        }
    }

    // MARK: Backward

    /// dQ, dK and dV (each `nil` unless asked for), shaped `[…, L, depth]`, `[…, S, depth]`, `[…, S, depth]`,
    /// from `forward`'s base-2 log-sum-exp. Per block of 8 query rows, passes over the keys:
    /// P = 2^(scores − lse); dP = dO·Vᵀ with D = rowsum(P ∘ dP); dS = P ∘ (dP − D);
    /// dQᵀ = scale · Kᵀ·dSᵀ; dV += Pᵀ·dO; dK += scale · dSᵀ·Q.
    static func backward(_ problem: AttentionProblem, logSumExp: Tensor, outputGradient: Tensor,
                         needsQuery: Bool, needsKey: Bool, needsValue: Bool) -> (Tensor?, Tensor?, Tensor?) {
        let (L, S, D) = (problem.queryLength, problem.keyLength, problem.depth)
        let scale = problem.scale
        let queryLayout = RowLayout(like: problem.query, batchShape: problem.batchShape, rows: L, depth: D)
        let keyLayout = RowLayout(like: problem.key, batchShape: problem.batchShape, rows: S, depth: D)
        let valueLayout = RowLayout(like: problem.value, batchShape: problem.batchShape, rows: S, depth: D)
        let queryGradient = needsQuery ? queryLayout.allocate() : nil
        let keyGradient = needsKey ? keyLayout.allocate() : nil
        let valueGradient = needsValue ? valueLayout.allocate() : nil
        // dO in the output's layout (the query's), as it usually arrives.
        let arrangedGradient = queryLayout.arrange(outputGradient)
        let dO = UnsafePointer(arrangedGradient.floatPointer), lse = UnsafePointer(logSumExp.floatPointer)
        let dQ = queryGradient?.floatPointer, dK = keyGradient?.floatPointer, dV = valueGradient?.floatPointer
        // One task's items, the depth a constant in each call below so that the loops are specialised for it.
        @inline(__always) func run(_ items: Range<Int>, depth D: Int) {
            let keys = UnsafeMutablePointer<Float>.allocate(capacity: D * S)
            let values = UnsafeMutablePointer<Float>.allocate(capacity: D * S)
            let probabilities = UnsafeMutablePointer<Float>.allocate(capacity: 8 * S)
            let scoreGradients = UnsafeMutablePointer<Float>.allocate(capacity: 8 * S)
            let keySums = UnsafeMutablePointer<Float>.allocate(capacity: D * S)
            let valueSums = UnsafeMutablePointer<Float>.allocate(capacity: D * S)
            let block = UnsafeMutablePointer<Float>.allocate(capacity: 8 * D)
            let gradientBlock = UnsafeMutablePointer<Float>.allocate(capacity: 8 * D)
            defer {
                for buffer in [keys, values, probabilities, scoreGradients, keySums, valueSums, block, gradientBlock] { buffer.deallocate() }
            }
            for itemIndex in items {
                let item = Item(problem, itemIndex)
                pack(item.key, item.keyLayout, count: S, depth: D, into: keys)
                pack(item.value, item.valueLayout, count: S, depth: D, into: values)
                // dK and dV accumulate in S×D buffers, copied to their layouts at the end of the item.
                if dK != nil { keySums.update(repeating: 0, count: S * D) }
                if dV != nil { valueSums.update(repeating: 0, count: S * D) }
                var first = 0
                while first < L {
                    // The block's queries (times scale · log₂ e) and output gradients, zero rows past the
                    // end, whose lse is +∞ so that their P (2⁻¹²⁵) and dS (P · 0) add nothing.
                    let count = loadQueryRows(item, first: first, length: L, depth: D, scale: scale * log2e, into: block)
                    var shifts = Vector(repeating: .infinity)
                    for r in 0..<rows {
                        let gradientRow = gradientBlock + r * D
                        guard r < count else { gradientRow.update(repeating: 0, count: D); continue }
                        MicroKernels.copyRow(dO + queryLayout.itemOffsets[itemIndex] + (first + r) * queryLayout.rowStride, into: gradientRow, count: D)
                        shifts[r] = lse[itemIndex * L + first + r]
                    }
                    // P, the forward pass's probabilities, recomputed.
                    products(block, keys, count: S, depth: D, into: probabilities)
                    for s in 0..<S {
                        MicroKernels.store(exp2(MicroKernels.load(probabilities + s * 8) - shifts), probabilities + s * 8)
                    }
                    // dP = dO·Vᵀ and D = rowsum(P ∘ dP), then dS = P ∘ (dP − D). (D = rowsum(dO ∘ O)
                    // would save a pass but loses the cancellation when one key takes nearly all
                    // of a row: dS must then be ≈ 0, and the output's rounding is not.)
                    products(gradientBlock, values, count: S, depth: D, into: scoreGradients)
                    var dots = Vector()
                    for s in 0..<S {
                        dots = dots.addingProduct(MicroKernels.load(probabilities + s * 8), MicroKernels.load(scoreGradients + s * 8))
                    }
                    for s in 0..<S {
                        let product = MicroKernels.load(scoreGradients + s * 8) - dots
                        MicroKernels.store(MicroKernels.load(probabilities + s * 8) * product, scoreGradients + s * 8)
                    }
                    // dQ rows = scale · dS·K.
                    if let dQ {
                        accumulateTransposed(scoreGradients, keys, count: S, depth: D, factor: Vector(repeating: scale), realRows: count,
                                             to: dQ + queryLayout.itemOffsets[itemIndex] + first * queryLayout.rowStride,
                                             rowStride: queryLayout.rowStride)
                    }
                    // dV += Pᵀ·dO and dK += dSᵀ·(scale · log₂ e · Q) (times ln 2 at the end), key by key.
                    if dV != nil { accumulateRows(valueSums, weights: probabilities, block: gradientBlock, count: S, depth: D) }
                    if dK != nil { accumulateRows(keySums, weights: scoreGradients, block: block, count: S, depth: D) }
                    first += rows
                }
                if let dK {
                    let target = dK + keyLayout.itemOffsets[itemIndex], ln2 = Vector(repeating: 1 / log2e)
                    for s in 0..<S {
                        for chunk in 0..<D / 8 {
                            let sums = MicroKernels.load(keySums + s * D + 8 * chunk) * ln2
                            MicroKernels.store(sums, target + s * keyLayout.rowStride + 8 * chunk)
                        }
                    }
                }
                if let dV {
                    let target = dV + valueLayout.itemOffsets[itemIndex]
                    for s in 0..<S { MicroKernels.copyRow(valueSums + s * D, into: target + s * valueLayout.rowStride, count: D) }
                }
            }
        }
        Parallel.forEach(problem.batch) { items in
            if D == 8 { run(items, depth: 8) } else { run(items, depth: 16) }
        }
        return (queryGradient, keyGradient, valueGradient)
    }
}
