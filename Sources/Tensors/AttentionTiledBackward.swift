import Foundation

extension TiledAttention {
    /// dQ, dK and dV (each `nil` unless asked for), laid out like the query, key and value
    /// (`SmallHeadAttention.RowLayout`), from the forward pass's output and base-2 log-sum-exp.
    ///
    /// Per block of 16 query rows and per block of keys: P = 2^(scores − lse) recomputed;
    /// dP = dO·Vᵀ; dS = P ∘ (dP − D); dQᵀ += Kᵀ·dSᵀ (in a scratch, stored once per query block);
    /// dV += Pᵀ·dO and dK += dSᵀ·Q into the task's S-row accumulators. Memory: O(S·E) per task.
    ///
    /// D = rowsum(dO ∘ O), one dot product per row from the saved output, as FlashAttention does.
    /// rowsum(P ∘ dP) would need the whole row of P and dP before any dS: a second pass over the
    /// keys (recomputing two of the five products, 40% more work) or an S×16 buffer per block
    /// (what `SmallHeadAttention`, with 8 products per score, affords). The two agree to rounding:
    /// O = Σ P·V is rounded once more than dP, so where one key takes nearly all of a row, dS
    /// there is about 10⁻⁷·|dO|·|V| instead of nearly 0, the size of dP's own rounding.
    ///
    /// The work is (item, run of query blocks) tasks: one run per item when the items alone keep
    /// the workers busy, else each item's query blocks are split and the runs' dK and dV added
    /// together under a lock (once per task).
    static func backward(_ problem: AttentionProblem, output: Tensor, logSumExp: Tensor, outputGradient: Tensor,
                         needsQuery: Bool, needsKey: Bool, needsValue: Bool) -> (Tensor?, Tensor?, Tensor?) {
        let (L, S, E, Ev) = (problem.queryLength, problem.keyLength, problem.depth, problem.valueDepth)
        let scale = problem.scale, queryScale = scale * Kernels.log2e
        let (width, valueWidth) = ((E + 7) / 8 * 8, (Ev + 7) / 8 * 8)
        let queryLayout = SmallHeadAttention.RowLayout(like: problem.query, batchShape: problem.batchShape, rows: L, depth: E)
        let outputLayout = SmallHeadAttention.RowLayout(like: problem.query, batchShape: problem.batchShape, rows: L, depth: Ev)
        let keyLayout = SmallHeadAttention.RowLayout(like: problem.key, batchShape: problem.batchShape, rows: S, depth: E)
        let valueLayout = SmallHeadAttention.RowLayout(like: problem.value, batchShape: problem.batchShape, rows: S, depth: Ev)
        let queryGradient = needsQuery ? queryLayout.allocate() : nil
        let keyGradient = needsKey ? keyLayout.allocate() : nil
        let valueGradient = needsValue ? valueLayout.allocate() : nil
        // dO and O in the output's layout (`forward` allocated O so).
        let arrangedGradient = outputLayout.arrange(outputGradient)
        let arrangedOutput = outputLayout.arrange(output)
        let dO = UnsafePointer(arrangedGradient.floatPointer), O = UnsafePointer(arrangedOutput.floatPointer)
        let lse = UnsafePointer(logSumExp.floatPointer)
        let dQ = queryGradient?.floatPointer, dK = keyGradient?.floatPointer, dV = valueGradient?.floatPointer
        let needsScoreGradient = needsQuery || needsKey
        let mask = problem.mask
        let maskBase = mask.map { UnsafePointer($0.tensor.floatPointer) }

        let queryBlocks = (L + rows - 1) / rows
        let threads = Parallel.threadCount
        let splits = threads == 1 || problem.batch % threads == 0
            ? 1 : Swift.max(1, Swift.min(queryBlocks, (4 * threads + problem.batch - 1) / problem.batch))
        // With several tasks per item, each task keeps its dK and dV sums and they are added per item
        // in split order after all tasks (added as tasks finished, their rounding followed the timing).
        let tasks = problem.batch * splits
        let keptKeySums = UnsafeMutablePointer<UnsafeMutablePointer<Float>?>.allocate(capacity: tasks)
        let keptValueSums = UnsafeMutablePointer<UnsafeMutablePointer<Float>?>.allocate(capacity: tasks)
        keptKeySums.initialize(repeating: nil, count: tasks)
        keptValueSums.initialize(repeating: nil, count: tasks)
        defer {
            for task in 0..<tasks {
                keptKeySums[task].map(ScratchMemory.release)
                keptValueSums[task].map(ScratchMemory.release)
            }
            keptKeySums.deallocate()
            keptValueSums.deallocate()
        }

        /// Rows `keyRows` of one item's dK (times scale) and dV from its tasks' sums, added in split order.
        func writeKeyAndValueGradients(_ itemIndex: Int, keyParts: UnsafePointer<UnsafeMutablePointer<Float>?>,
                                       valueParts: UnsafePointer<UnsafeMutablePointer<Float>?>, count: Int, keyRows: Range<Int>) {
            func write(_ target: UnsafeMutablePointer<Float>, rowStride: Int, parts: UnsafePointer<UnsafeMutablePointer<Float>?>,
                       width: Int, depth: Int, factor: Float) {
                for s in keyRows {
                    let row = target + s * rowStride
                    guard let first = parts[0] else { continue }
                    for e in 0..<depth { row[e] = first[s * width + e] }
                    for part in 1..<count {
                        guard let source = parts[part] else { continue }
                        for e in 0..<depth { row[e] += source[s * width + e] }
                    }
                    if factor != 1 { for e in 0..<depth { row[e] *= factor } }
                }
            }
            if let dK { write(dK + keyLayout.itemOffsets[itemIndex], rowStride: keyLayout.rowStride, parts: keyParts, width: width, depth: E, factor: scale) }
            if let dV { write(dV + valueLayout.itemOffsets[itemIndex], rowStride: valueLayout.rowStride, parts: valueParts, width: valueWidth, depth: Ev, factor: 1) }
        }

        Parallel.forEachTask(problem.batch * splits) { task in
            let itemIndex = task / splits
            let blocks = AttentionProblem.block(task % splits, of: splits, queryBlocks)
            let item = Item(problem, itemIndex)
            let queries = ScratchMemory.floats(E * rows), queryRows = ScratchMemory.floats(rows * width)
            let gradients = ScratchMemory.floats(Ev * rows), gradientRows = ScratchMemory.floats(rows * valueWidth)
            let probabilities = ScratchMemory.floats(keyBlock * rows), scoreGradients = ScratchMemory.floats(keyBlock * rows)
            let queryGradientBlock = ScratchMemory.floats(E * rows)
            let keySums = needsKey ? ScratchMemory.floats(S * width, zeroed: true) : nil
            let valueSums = needsValue ? ScratchMemory.floats(S * valueWidth, zeroed: true) : nil
            let keyCopy = problem.key.transposed ? ScratchMemory.floats(S * E) : nil
            let valueCopy = problem.value.transposed ? ScratchMemory.floats(S * Ev) : nil
            defer {
                for buffer in [queries, queryRows, gradients, gradientRows, probabilities, scoreGradients, queryGradientBlock] {
                    ScratchMemory.release(buffer)
                }
                if splits > 1 {
                    keptKeySums[task] = keySums
                    keptValueSums[task] = valueSums
                } else {
                    for buffer in [keySums, valueSums] { buffer.map(ScratchMemory.release) }
                }
                for buffer in [keyCopy, valueCopy] { buffer.map(ScratchMemory.release) }
            }
            let keys = rowMajor(item.key, item.keyLayout, rows: S, depth: E, scratch: keyCopy ?? probabilities)
            let values = rowMajor(item.value, item.valueLayout, rows: S, depth: Ev, scratch: valueCopy ?? probabilities)
            let gradientItem = dO + outputLayout.itemOffsets[itemIndex], outputItem = O + outputLayout.itemOffsets[itemIndex]
            let gradientLayout = (false, outputLayout.rowStride)

            for block in blocks {
                let first = block * rows, count = Swift.min(rows, L - first)
                packTransposed(item.query, item.queryLayout, first: first, count: count, depth: E, factor: queryScale, into: queries)
                packTransposed(gradientItem, gradientLayout, first: first, count: count, depth: Ev, factor: 1, into: gradients)
                if needsKey { packRows(item.query, item.queryLayout, first: first, count: count, depth: E, width: width, into: queryRows) }
                if needsValue {
                    packRows(gradientItem, gradientLayout, first: first, count: count, depth: Ev, width: valueWidth, into: gradientRows)
                }
                // The rows' log-sum-exp (+∞ past the end: P = 0 there) and D = rowsum(dO ∘ O).
                var shift = (Vector(repeating: .infinity), Vector(repeating: .infinity))
                var dots = (Vector(), Vector())
                for r in 0..<count {
                    let gradientRow = gradientItem + (first + r) * outputLayout.rowStride
                    let outputRow = outputItem + (first + r) * outputLayout.rowStride
                    var dot: Float = 0
                    for d in 0..<Ev { dot += gradientRow[d] * outputRow[d] }
                    let value = lse[itemIndex * L + first + r]
                    if r < 8 { shift.0[r] = value; dots.0[r] = dot } else { shift.1[r - 8] = value; dots.1[r - 8] = dot }
                }
                if needsQuery { queryGradientBlock.update(repeating: 0, count: E * rows) }

                var keyStart = 0
                while keyStart < S {
                    let n = Swift.min(keyBlock, S - keyStart)
                    // P, the forward pass's probabilities, recomputed.
                    Kernels.products(rows: keys.0 + keyStart * keys.1, rowStride: keys.1, count: n,
                                     columns: queries, depth: E, into: probabilities)
                    if let mask, let maskBase {
                        addMask(maskBase + mask.itemOffsets[itemIndex], rowStride: mask.rowStride, columnStride: mask.columnStride,
                                first: first, count: count, keyStart: keyStart, keys: n, to: probabilities)
                    }
                    for s in 0..<n {
                        let pointer = probabilities + s * rows
                        MicroKernels.store(Kernels.exp2(MicroKernels.load(pointer) - shift.0), pointer)
                        MicroKernels.store(Kernels.exp2(MicroKernels.load(pointer + 8) - shift.1), pointer + 8)
                    }
                    if needsScoreGradient {
                        // dS = P ∘ (dO·Vᵀ − D).
                        Kernels.products(rows: values.0 + keyStart * values.1, rowStride: values.1, count: n,
                                         columns: gradients, depth: Ev, into: scoreGradients)
                        for s in 0..<n {
                            let pointer = scoreGradients + s * rows, weight = probabilities + s * rows
                            MicroKernels.store(MicroKernels.load(weight) * (MicroKernels.load(pointer) - dots.0), pointer)
                            MicroKernels.store(MicroKernels.load(weight + 8) * (MicroKernels.load(pointer + 8) - dots.1), pointer + 8)
                        }
                        if needsQuery {
                            Kernels.accumulateColumns(rows: keys.0 + keyStart * keys.1, rowStride: keys.1, count: n, weights: scoreGradients,
                                                      depth: E, factor: (Vector(repeating: 1), Vector(repeating: 1)), into: queryGradientBlock)
                        }
                        if let keySums {
                            Kernels.accumulateRows(weights: scoreGradients, count: n, rows: queryRows, width: width,
                                                   into: keySums + keyStart * width)
                        }
                    }
                    if let valueSums {
                        Kernels.accumulateRows(weights: probabilities, count: n, rows: gradientRows, width: valueWidth,
                                               into: valueSums + keyStart * valueWidth)
                    }
                    keyStart += n
                }
                if let dQ {
                    let target = dQ + queryLayout.itemOffsets[itemIndex] + first * queryLayout.rowStride
                    for r in 0..<count {
                        let row = target + r * queryLayout.rowStride
                        for e in 0..<E { row[e] = queryGradientBlock[e * rows + r] * scale }
                    }
                }
            }

            // This task's dK (times scale) and dV, written when it is the item's only task.
            if splits == 1 {
                var (keyPart, valuePart) = (keySums, valueSums)
                writeKeyAndValueGradients(itemIndex, keyParts: &keyPart, valueParts: &valuePart, count: 1, keyRows: 0..<S)
            }
        }
        if splits > 1 {
            // Over the workers by rows of keys, whatever the number of items.
            Parallel.forEach(problem.batch * S, grain: 64) { rows in
                var row = rows.lowerBound
                while row < rows.upperBound {
                    let itemIndex = row / S, end = Swift.min(rows.upperBound, (itemIndex + 1) * S)
                    writeKeyAndValueGradients(itemIndex, keyParts: keptKeySums + itemIndex * splits, valueParts: keptValueSums + itemIndex * splits,
                                              count: splits, keyRows: (row - itemIndex * S)..<(end - itemIndex * S))
                    row = end
                }
            }
        }
        return (queryGradient, keyGradient, valueGradient)
    }
}
