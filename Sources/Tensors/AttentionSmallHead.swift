import Foundation

/// Attention for heads of depth 8, diffusers' default `attention_head_dim` (the course
/// UNet's 64 channels are 8 heads of 8). With 8 products per score the GEMM path
/// (`AttentionProblem.forward`, two BLAS calls per item) spends its time packing and
/// writing an L×S score matrix per item that the softmax then reads and writes again.
/// Here four query rows at a time are done in registers and a 4×S buffer that stays in
/// L1: the scores 16 keys at a time from a transposed copy of K, the softmax, then `P·V`
/// as broadcast multiply-adds over V's rows of 8. The backward pass recomputes each
/// row block's probabilities from the log-sum-exp saved by the forward pass (flash
/// attention's scheme) and accumulates dK and dV of an item in two S×8 buffers.
///
/// Used when depth and value depth are 8, there is no mask and the items alone keep
/// every worker busy (`AttentionProblem.rowBlocks == 1`); the GEMM path stays the
/// reference and the tests compare the two (`AttentionKernels.allowsSmallHead`).
enum SmallHeadAttention {
    typealias Vector = SIMD8<Float>
    /// The one depth handled here.
    static let depth = 8
    /// Query rows per block.
    static let rows = 4

    /// Whether `problem` takes this path.
    static func applies(to problem: AttentionProblem) -> Bool {
        problem.mask == nil && problem.depth == depth && problem.valueDepth == depth
            && problem.queryLength > 0 && problem.keyLength > 0 && problem.rowBlocks == 1
    }

    /// Pointers and sizes of one item, read once so the loops see no reference counting.
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

    /// Row `row` (8 elements) of an item's operand.
    @inline(__always)
    static func row(_ base: UnsafePointer<Float>, _ layout: (transposed: Bool, leadingDimension: Int), _ row: Int) -> Vector {
        if !layout.transposed { return MicroKernels.load(base + row * layout.leadingDimension) }
        var result = Vector()
        for e in 0..<8 { result[e] = base[e * layout.leadingDimension + row] }
        return result
    }

    /// `transposed[e · paddedKeys + s]` = element (s, e), zero for the padding keys.
    @inline(__always)
    static func packTransposed(_ base: UnsafePointer<Float>, _ layout: (transposed: Bool, leadingDimension: Int), keys: Int, paddedKeys: Int,
                               into transposed: UnsafeMutablePointer<Float>) {
        for s in 0..<keys {
            let vector = row(base, layout, s)
            for e in 0..<8 { transposed[e * paddedKeys + s] = vector[e] }
        }
        for s in keys..<paddedKeys {
            for e in 0..<8 { transposed[e * paddedKeys + s] = 0 }
        }
    }

    /// `rows[s · 8 + e]` = element (s, e), zero for the padding keys.
    @inline(__always)
    static func pack(_ base: UnsafePointer<Float>, _ layout: (transposed: Bool, leadingDimension: Int), keys: Int, paddedKeys: Int,
                     into rows: UnsafeMutablePointer<Float>) {
        for s in 0..<keys { MicroKernels.store(row(base, layout, s), rows + s * 8) }
        for s in keys..<paddedKeys { MicroKernels.store(Vector(), rows + s * 8) }
    }

    /// `block[r]` = `scale` · query row `first + r`, zero past the last row; returns how many are real.
    @inline(__always)
    static func loadQueryBlock(_ item: Item, first: Int, length: Int, scale: Float, into block: UnsafeMutablePointer<Float>) -> Int {
        let count = Swift.min(rows, length - first)
        for r in 0..<rows {
            MicroKernels.store(r < count ? row(item.query, item.queryLayout, first + r) * scale : Vector(), block + r * 8)
        }
        return count
    }

    /// Stores the first `count` of a block's four rows of 8, one after another from `target`.
    @inline(__always)
    static func storeRows(_ block: (Vector, Vector, Vector, Vector), count: Int, to target: UnsafeMutablePointer<Float>) {
        MicroKernels.store(block.0, target)
        if count > 1 { MicroKernels.store(block.1, target + 8) }
        if count > 2 { MicroKernels.store(block.2, target + 16) }
        if count > 3 { MicroKernels.store(block.3, target + 24) }
    }

    /// `target[0..<8] += Σᵣ weights.r · vectors.r`: one key's row of dK or dV gets the 4 query rows' share.
    @inline(__always)
    static func accumulate(_ target: UnsafeMutablePointer<Float>, weights: (Float, Float, Float, Float),
                           vectors: (Vector, Vector, Vector, Vector)) {
        var sum = MicroKernels.load(target)
        sum = sum.addingProduct(Vector(repeating: weights.0), vectors.0)
        sum = sum.addingProduct(Vector(repeating: weights.1), vectors.1)
        sum = sum.addingProduct(Vector(repeating: weights.2), vectors.2)
        sum = sum.addingProduct(Vector(repeating: weights.3), vectors.3)
        MicroKernels.store(sum, target)
    }

    // MARK: Kernels

    /// `out[r · paddedKeys + s] = Σₑ block[r · 8 + e] · transposed[e · paddedKeys + s]` for the 4
    /// rows of `block` and every (padded) key: 16 keys at a time, 8 accumulators.
    @inline(__always)
    static func products(_ block: UnsafePointer<Float>, _ transposed: UnsafePointer<Float>, paddedKeys: Int,
                         into out: UnsafeMutablePointer<Float>) {
        var chunk = 0
        while chunk + 16 <= paddedKeys {
            var a0 = Vector(), a1 = Vector(), a2 = Vector(), a3 = Vector()
            var b0 = Vector(), b1 = Vector(), b2 = Vector(), b3 = Vector()
            for e in 0..<8 {
                let k0 = MicroKernels.load(transposed + e * paddedKeys + chunk), k1 = MicroKernels.load(transposed + e * paddedKeys + chunk + 8)
                var q = Vector(repeating: block[e])
                a0 = a0.addingProduct(q, k0); b0 = b0.addingProduct(q, k1)
                q = Vector(repeating: block[8 + e])
                a1 = a1.addingProduct(q, k0); b1 = b1.addingProduct(q, k1)
                q = Vector(repeating: block[16 + e])
                a2 = a2.addingProduct(q, k0); b2 = b2.addingProduct(q, k1)
                q = Vector(repeating: block[24 + e])
                a3 = a3.addingProduct(q, k0); b3 = b3.addingProduct(q, k1)
            }
            MicroKernels.store(a0, out + chunk); MicroKernels.store(b0, out + chunk + 8)
            MicroKernels.store(a1, out + paddedKeys + chunk); MicroKernels.store(b1, out + paddedKeys + chunk + 8)
            MicroKernels.store(a2, out + 2 * paddedKeys + chunk); MicroKernels.store(b2, out + 2 * paddedKeys + chunk + 8)
            MicroKernels.store(a3, out + 3 * paddedKeys + chunk); MicroKernels.store(b3, out + 3 * paddedKeys + chunk + 8)
            chunk += 16
        }
        if chunk < paddedKeys {
            var a0 = Vector(), a1 = Vector(), a2 = Vector(), a3 = Vector()
            for e in 0..<8 {
                let k = MicroKernels.load(transposed + e * paddedKeys + chunk)
                a0 = a0.addingProduct(Vector(repeating: block[e]), k)
                a1 = a1.addingProduct(Vector(repeating: block[8 + e]), k)
                a2 = a2.addingProduct(Vector(repeating: block[16 + e]), k)
                a3 = a3.addingProduct(Vector(repeating: block[24 + e]), k)
            }
            MicroKernels.store(a0, out + chunk); MicroKernels.store(a1, out + paddedKeys + chunk)
            MicroKernels.store(a2, out + 2 * paddedKeys + chunk); MicroKernels.store(a3, out + 3 * paddedKeys + chunk)
        }
    }

    /// The 4 rows `Σₛ weights[r · paddedKeys + s] · rows[s]` (rows of 8), over the padded keys.
    @inline(__always)
    static func weightedSums(_ weights: UnsafePointer<Float>, paddedKeys: Int, rows: UnsafePointer<Float>) -> (Vector, Vector, Vector, Vector) {
        var a0 = Vector(), a1 = Vector(), a2 = Vector(), a3 = Vector()
        var b0 = Vector(), b1 = Vector(), b2 = Vector(), b3 = Vector()
        let w0 = weights, w1 = weights + paddedKeys, w2 = weights + 2 * paddedKeys, w3 = weights + 3 * paddedKeys
        var s = 0
        while s < paddedKeys {  // paddedKeys is a multiple of 8
            let v0 = MicroKernels.load(rows + s * 8), v1 = MicroKernels.load(rows + s * 8 + 8)
            a0 = a0.addingProduct(Vector(repeating: w0[s]), v0); b0 = b0.addingProduct(Vector(repeating: w0[s + 1]), v1)
            a1 = a1.addingProduct(Vector(repeating: w1[s]), v0); b1 = b1.addingProduct(Vector(repeating: w1[s + 1]), v1)
            a2 = a2.addingProduct(Vector(repeating: w2[s]), v0); b2 = b2.addingProduct(Vector(repeating: w2[s + 1]), v1)
            a3 = a3.addingProduct(Vector(repeating: w3[s]), v0); b3 = b3.addingProduct(Vector(repeating: w3[s + 1]), v1)
            s += 2
        }
        return (a0 + b0, a1 + b1, a2 + b2, a3 + b3)
    }

    /// In place `row[s] ← exp(row[s] − m)` over the real keys and 0 over the padding, `m` the
    /// row's largest score; returns `m` and the sum.
    @inline(__always)
    static func exponentiate(_ row: UnsafeMutablePointer<Float>, keys: Int, paddedKeys: Int) -> (largest: Float, total: Float) {
        for s in keys..<paddedKeys { row[s] = -.infinity }
        var lanes = Vector(repeating: -.infinity)
        var chunk = 0
        while chunk < paddedKeys {
            let value = MicroKernels.load(row + chunk)
            lanes.replace(with: value, where: value .> lanes)
            chunk += 8
        }
        let largest = lanes.max()
        let shift = Vector(repeating: largest)
        var sum = Vector()
        chunk = 0
        while chunk < paddedKeys {
            let value = AttentionKernel.exp(MicroKernels.load(row + chunk) - shift)
            MicroKernels.store(value, row + chunk)
            sum += value
            chunk += 8
        }
        return (largest, sum.sum())
    }

    // MARK: Forward

    /// The output `[…, L, 8]` and the log-sum-exp of every score row `[…, L]`.
    static func forward(_ problem: AttentionProblem) -> (output: Tensor, logSumExp: Tensor) {
        let (L, S) = (problem.queryLength, problem.keyLength)
        let paddedKeys = (S + 7) / 8 * 8
        let scale = problem.scale
        let output = Tensor(uninitializedShape: problem.batchShape + [L, depth])
        let logSumExp = Tensor(uninitializedShape: problem.batchShape + [L])
        let out = output.floatPointer, lse = logSumExp.floatPointer
        Parallel.forEach(problem.batch) { items in
            let transposedKeys = UnsafeMutablePointer<Float>.allocate(capacity: 8 * paddedKeys)
            let values = UnsafeMutablePointer<Float>.allocate(capacity: 8 * paddedKeys)
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: rows * paddedKeys)
            let block = UnsafeMutablePointer<Float>.allocate(capacity: rows * 8)
            defer { transposedKeys.deallocate(); values.deallocate(); scores.deallocate(); block.deallocate() }
            for itemIndex in items {
                let item = Item(problem, itemIndex)
                packTransposed(item.key, item.keyLayout, keys: S, paddedKeys: paddedKeys, into: transposedKeys)
                pack(item.value, item.valueLayout, keys: S, paddedKeys: paddedKeys, into: values)
                var first = 0
                while first < L {
                    let count = loadQueryBlock(item, first: first, length: L, scale: scale, into: block)
                    products(block, transposedKeys, paddedKeys: paddedKeys, into: scores)
                    var inverse = Vector()
                    for r in 0..<rows {
                        let row = scores + r * paddedKeys
                        if r < count {
                            let (largest, total) = exponentiate(row, keys: S, paddedKeys: paddedKeys)
                            lse[itemIndex * L + first + r] = largest + Foundation.log(total)
                            inverse[r] = 1 / total
                        } else {
                            row.update(repeating: 0, count: paddedKeys)
                        }
                    }
                    let (o0, o1, o2, o3) = weightedSums(scores, paddedKeys: paddedKeys, rows: values)
                    storeRows((o0 * inverse[0], o1 * inverse[1], o2 * inverse[2], o3 * inverse[3]), count: count,
                              to: out + (itemIndex * L + first) * 8)
                    first += rows
                }
            }
        }
        return (output, logSumExp)
    }

    // MARK: Backward

    /// dQ, dK and dV (each `nil` unless asked for), shaped `[…, L, 8]`, `[…, S, 8]`, `[…, S, 8]`.
    static func backward(_ problem: AttentionProblem, logSumExp: Tensor, outputGradient: Tensor,
                         needsQuery: Bool, needsKey: Bool, needsValue: Bool) -> (Tensor?, Tensor?, Tensor?) {
        let (L, S) = (problem.queryLength, problem.keyLength)
        let paddedKeys = (S + 7) / 8 * 8
        let scale = problem.scale
        let queryGradient = needsQuery ? Tensor(uninitializedShape: problem.batchShape + [L, depth]) : nil
        let keyGradient = needsKey ? Tensor(uninitializedShape: problem.batchShape + [S, depth]) : nil
        let valueGradient = needsValue ? Tensor(uninitializedShape: problem.batchShape + [S, depth]) : nil
        let dO = UnsafePointer(outputGradient.floatPointer), lse = UnsafePointer(logSumExp.floatPointer)
        let dQ = queryGradient?.floatPointer, dK = keyGradient?.floatPointer, dV = valueGradient?.floatPointer
        Parallel.forEach(problem.batch) { items in
            let transposedKeys = UnsafeMutablePointer<Float>.allocate(capacity: 8 * paddedKeys)
            let transposedValues = UnsafeMutablePointer<Float>.allocate(capacity: 8 * paddedKeys)
            let keys = UnsafeMutablePointer<Float>.allocate(capacity: 8 * paddedKeys)
            let keySums = UnsafeMutablePointer<Float>.allocate(capacity: 8 * paddedKeys)
            let valueSums = UnsafeMutablePointer<Float>.allocate(capacity: 8 * paddedKeys)
            let probabilities = UnsafeMutablePointer<Float>.allocate(capacity: rows * paddedKeys)
            let scoreGradients = UnsafeMutablePointer<Float>.allocate(capacity: rows * paddedKeys)
            let block = UnsafeMutablePointer<Float>.allocate(capacity: rows * 8)
            let outputBlock = UnsafeMutablePointer<Float>.allocate(capacity: rows * 8)
            defer {
                for buffer in [transposedKeys, transposedValues, keys, keySums, valueSums, probabilities, scoreGradients, block, outputBlock] {
                    buffer.deallocate()
                }
            }
            for itemIndex in items {
                let item = Item(problem, itemIndex)
                packTransposed(item.key, item.keyLayout, keys: S, paddedKeys: paddedKeys, into: transposedKeys)
                packTransposed(item.value, item.valueLayout, keys: S, paddedKeys: paddedKeys, into: transposedValues)
                if dQ != nil { pack(item.key, item.keyLayout, keys: S, paddedKeys: paddedKeys, into: keys) }
                keySums.update(repeating: 0, count: 8 * paddedKeys)
                valueSums.update(repeating: 0, count: 8 * paddedKeys)
                var first = 0
                while first < L {
                    // The block's scaled queries and output gradients (zero rows past the end).
                    let count = loadQueryBlock(item, first: first, length: L, scale: scale, into: block)
                    for r in 0..<rows {
                        MicroKernels.store(r < count ? MicroKernels.load(dO + (itemIndex * L + first + r) * 8) : Vector(), outputBlock + r * 8)
                    }
                    // P = exp(scores − lse): the forward pass's probabilities, recomputed.
                    products(block, transposedKeys, paddedKeys: paddedKeys, into: probabilities)
                    for r in 0..<rows {
                        let row = probabilities + r * paddedKeys
                        guard r < count else { row.update(repeating: 0, count: paddedKeys); continue }
                        let shift = Vector(repeating: lse[itemIndex * L + first + r])
                        var chunk = 0
                        while chunk < paddedKeys {
                            MicroKernels.store(AttentionKernel.exp(MicroKernels.load(row + chunk) - shift), row + chunk)
                            chunk += 8
                        }
                        for s in S..<paddedKeys { row[s] = 0 }
                    }
                    // dP = dO·Vᵀ, then dS = P ∘ (dP − Σₛ P∘dP) in place.
                    products(outputBlock, transposedValues, paddedKeys: paddedKeys, into: scoreGradients)
                    for r in 0..<rows {
                        AttentionKernel.softmaxBackwardRow(scoreGradients + r * paddedKeys, probabilities + r * paddedKeys, paddedKeys)
                    }
                    // dQ rows = scale · dS·K.
                    if let dQ {
                        let (g0, g1, g2, g3) = weightedSums(scoreGradients, paddedKeys: paddedKeys, rows: keys)
                        storeRows((g0 * scale, g1 * scale, g2 * scale, g3 * scale), count: count, to: dQ + (itemIndex * L + first) * 8)
                    }
                    // dK += dSᵀ·(scale·Q) and dV += Pᵀ·dO, key by key.
                    let queries = (MicroKernels.load(block), MicroKernels.load(block + 8), MicroKernels.load(block + 16), MicroKernels.load(block + 24))
                    let outputs = (MicroKernels.load(outputBlock), MicroKernels.load(outputBlock + 8),
                                   MicroKernels.load(outputBlock + 16), MicroKernels.load(outputBlock + 24))
                    let g0 = scoreGradients, g1 = scoreGradients + paddedKeys, g2 = scoreGradients + 2 * paddedKeys, g3 = scoreGradients + 3 * paddedKeys
                    let p0 = probabilities, p1 = probabilities + paddedKeys, p2 = probabilities + 2 * paddedKeys, p3 = probabilities + 3 * paddedKeys
                    for s in 0..<S {
                        accumulate(keySums + s * 8, weights: (g0[s], g1[s], g2[s], g3[s]), vectors: queries)
                        accumulate(valueSums + s * 8, weights: (p0[s], p1[s], p2[s], p3[s]), vectors: outputs)
                    }
                    first += rows
                }
                if let dK { (dK + itemIndex * S * 8).update(from: keySums, count: S * 8) }
                if let dV { (dV + itemIndex * S * 8).update(from: valueSums, count: S * 8) }
            }
        }
        return (queryGradient, keyGradient, valueGradient)
    }
}
