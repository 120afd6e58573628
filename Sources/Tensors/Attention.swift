import Foundation

extension Tensor {
    /// Scaled dot-product attention, `softmax(Q·Kᵀ·scale + mask)·V` (PyTorch's
    /// `F.scaled_dot_product_attention`). Shapes `[…, L, E]`, `[…, S, E]`,
    /// `[…, S, Ev]`; `mask` is added to the scores and broadcasts to `[…, L, S]`
    /// (use `-infinity` to hide a position); `scale` defaults to `1/√E`.
    ///
    /// The batch dimensions of query, key and value broadcast together. A row
    /// whose positions are all hidden gives zeros (as PyTorch's safe softmax).
    /// Every batch item runs two single-threaded GEMMs with the fused
    /// scale–mask–softmax between them; the items are spread over the workers.
    /// The probabilities are kept for the backward pass. Heads of depth 8 and 16 take the fused
    /// `SmallHeadAttention`; longer sequences the tiled online-softmax kernel `TiledAttention`
    /// (FlashAttention's scheme: no L×S matrix, only each row's log-sum-exp kept).
    public static func scaledDotProductAttention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor? = nil, scale: Float? = nil) -> Tensor {
        func shapes() -> String {
            "query \(query.shape), key \(key.shape), value \(value.shape)" + (mask.map { ", mask \($0.shape)" } ?? "")
        }
        guard query.rank >= 2, key.rank >= 2, value.rank >= 2 else {
            fatalError("scaledDotProductAttention: inputs need at least 2 dimensions, got \(shapes())")
        }
        let queryLength = query.shape[query.rank - 2], depth = query.shape[query.rank - 1]
        let keyLength = key.shape[key.rank - 2]
        let valueDepth = value.shape[value.rank - 1]
        guard key.shape[key.rank - 1] == depth, value.shape[value.rank - 2] == keyLength else {
            fatalError("scaledDotProductAttention: shapes do not fit [..., L, E], [..., S, E], [..., S, Ev]: \(shapes())")
        }
        let batchShape = broadcastBatchShape([query, key, value], shapes: shapes)
        let scoreShape = batchShape + [queryLength, keyLength]
        if let mask {
            let extra = scoreShape.count - mask.rank
            let fits = extra >= 0 && (0..<mask.rank).allSatisfy { mask.shape[$0] == 1 || mask.shape[$0] == scoreShape[$0 + extra] }
            guard fits else {
                fatalError("scaledDotProductAttention: mask does not broadcast to the scores \(scoreShape): \(shapes())")
            }
        }
        if let scale, !scale.isFinite {
            fatalError("scaledDotProductAttention: scale \(scale) is not finite (\(shapes()))")
        }
        let factor = scale ?? 1 / Float(depth).squareRoot()
        let problem = AttentionProblem(batchShape: batchShape, queryLength: queryLength, keyLength: keyLength,
                                       depth: depth, valueDepth: valueDepth, scale: factor,
                                       query: AttentionOperand(query, batchShape: batchShape),
                                       key: AttentionOperand(key, batchShape: batchShape),
                                       value: AttentionOperand(value, batchShape: batchShape),
                                       mask: mask.map { AttentionMask($0, scoreShape: scoreShape) })
        var inputs = [query, key, value]
        if let mask { inputs.append(mask) }
        let recording = GradientMode.isEnabled && inputs.contains { $0.needsGradient }
        if AttentionKernels.allowsSmallHead && SmallHeadAttention.applies(to: problem) {
            let (output, logSumExp) = SmallHeadAttention.forward(problem, keepsLogSumExp: recording)
            guard recording, let logSumExp else { return output }
            return record(output, .kernel(AttentionBackward(problem: problem, probabilities: nil, logSumExp: logSumExp,
                                                            inputShapes: inputs.map(\.shape))), inputs: inputs)
        }
        // bfloat16 inference (opt-in, AVX512-BF16): the same scheme on bfloat16 products.
        if BFloat16Attention.applies(to: problem, recording: recording) {
            return BFloat16Attention.forward(problem)
        }
        // Long sequences (and mid-sized ones, where it is the faster): the tiled kernel, which
        // never holds the L×S scores. A mask that needs a gradient (an L×S one) takes the GEMM path.
        let maskNeedsGradient = recording && (mask?.needsGradient ?? false)
        if !maskNeedsGradient && TiledAttention.applies(to: problem) {
            let (output, logSumExp) = TiledAttention.forward(problem, keepsLogSumExp: recording)
            guard recording, let logSumExp else { return output }
            return record(output, .kernel(AttentionBackward(problem: problem, probabilities: nil, logSumExp: logSumExp,
                                                            tiledOutput: output.detach(), inputShapes: inputs.map(\.shape))), inputs: inputs)
        }
        // With many items the backward pass recomputes each item's probabilities in a
        // scratch buffer (as flash attention does): keeping them costs L·S floats per
        // item, 157 MB per layer for the course UNet at batch 128.
        let keep = recording && problem.rowBlocks > 1
        let (output, probabilities) = problem.forward(keepProbabilities: keep)
        guard recording else { return output }
        return record(output, .kernel(AttentionBackward(problem: problem, probabilities: probabilities, logSumExp: nil,
                                                        inputShapes: inputs.map(\.shape))), inputs: inputs)
    }

    static func broadcastBatchShape(_ tensors: [Tensor], shapes: () -> String) -> [Int] {
        let batches = tensors.map { Array($0.shape.dropLast(2)) }
        let rank = batches.map(\.count).max() ?? 0
        var result = [Int](repeating: 1, count: rank)
        for batch in batches {
            for (index, size) in batch.enumerated() {
                let axis = index + rank - batch.count
                if size == result[axis] || size == 1 { continue }
                guard result[axis] == 1 else {
                    fatalError("scaledDotProductAttention: batch dimensions do not broadcast: \(shapes())")
                }
                result[axis] = size
            }
        }
        return result
    }
}

/// Which attention kernels may run.
public enum AttentionKernels {
    /// Whether heads of depth 8 or 16 (no mask, many items) take the fused kernel
    /// `SmallHeadAttention`; off, they take the GEMM path it is tested against.
    /// `DIFFUSE_ATTENTION=gemm` turns it off for a whole process.
    public nonisolated(unsafe) static var allowsSmallHead = ProcessInfo.processInfo.environment["DIFFUSE_ATTENTION"] != "gemm"

    /// Whether long sequences take the tiled online-softmax kernel `TiledAttention` (memory
    /// linear in the lengths; `TiledAttention.applies` has the rule); off, they take the GEMM
    /// path it is tested against. `DIFFUSE_ATTENTION=gemm` turns it off for a whole process.
    public nonisolated(unsafe) static var allowsTiled = ProcessInfo.processInfo.environment["DIFFUSE_ATTENTION"] != "gemm"

    /// Whether, in ``ComputePrecision/bfloat16`` inference on a CPU with AVX512-BF16, long
    /// sequences take the bfloat16 kernel `BFloat16Attention` (off: the float32 tiled kernel).
    /// `DIFFUSE_ATTENTION=gemm` or `DIFFUSE_BF16_ATTENTION=never` turns it off for a whole process.
    public nonisolated(unsafe) static var allowsBFloat16 = ProcessInfo.processInfo.environment["DIFFUSE_ATTENTION"] != "gemm"
        && ProcessInfo.processInfo.environment["DIFFUSE_BF16_ATTENTION"] != "never"
}

/// One input of attention as a BLAS operand per batch item: the last two
/// dimensions are a row-major matrix or its transpose with some leading
/// dimension; the batch dimensions have any strides (zero where broadcast).
struct AttentionOperand {
    /// Keeps the memory alive.
    let tensor: Tensor
    let transposed: Bool
    let leadingDimension: Int
    /// Element offset of each batch item from `tensor.floatPointer`.
    let itemOffsets: [Int]

    init(_ source: Tensor, batchShape: [Int]) {
        func layout(_ tensor: Tensor) -> (transposed: Bool, leadingDimension: Int)? {
            guard tensor.dataType == .float32 else { return nil }
            let rows = tensor.shape[tensor.rank - 2], columns = tensor.shape[tensor.rank - 1]
            let rowStride = tensor.strides[tensor.rank - 2], columnStride = tensor.strides[tensor.rank - 1]
            if columnStride == 1 || columns == 1 {
                if rows == 1 { return (false, Swift.max(columns, 1)) }
                if rowStride >= Swift.max(columns, 1) { return (false, rowStride) }
            }
            if rowStride == 1 || rows == 1 {
                if columns == 1 { return (true, Swift.max(rows, 1)) }
                if columnStride >= Swift.max(rows, 1) { return (true, columnStride) }
            }
            return nil
        }
        var tensor = source.detach()
        var found = layout(tensor)
        if found == nil {
            tensor = source.contiguousCopy()
            found = layout(tensor)
        }
        self.tensor = tensor
        self.transposed = found!.transposed
        self.leadingDimension = found!.leadingDimension
        let batchRank = tensor.rank - 2
        let strides = Shape.broadcastStrides(shape: Array(tensor.shape.prefix(batchRank)), strides: Array(tensor.strides.prefix(batchRank)), to: batchShape)
        itemOffsets = AttentionOperand.offsets(batchShape: batchShape, strides: strides)
    }

    /// The offset of every item of `batchShape` (row-major order) under `strides`.
    static func offsets(batchShape: [Int], strides: [Int]) -> [Int] {
        var result = [0]
        for (size, stride) in zip(batchShape, strides) {
            var next: [Int] = []
            next.reserveCapacity(result.count * size)
            for base in result {
                for index in 0..<size { next.append(base + index * stride) }
            }
            result = next
        }
        return result
    }

    @inline(__always)
    func pointer(_ item: Int) -> UnsafePointer<Float> {
        UnsafePointer(tensor.floatPointer + itemOffsets[item])
    }
}

/// The additive mask, read through broadcast strides.
struct AttentionMask {
    let tensor: Tensor
    let itemOffsets: [Int]
    let rowStride: Int
    let columnStride: Int

    init(_ source: Tensor, scoreShape: [Int]) {
        let tensor = source.dataType == .float32 ? source.detach() : source.contiguousCopy()
        let strides = Shape.broadcastStrides(shape: tensor.shape, strides: tensor.strides, to: scoreShape)
        let batchRank = scoreShape.count - 2
        self.tensor = tensor
        rowStride = strides[batchRank]
        columnStride = strides[batchRank + 1]
        itemOffsets = AttentionOperand.offsets(batchShape: Array(scoreShape.prefix(batchRank)), strides: Array(strides.prefix(batchRank)))
    }
}

/// The sizes and operands of one attention call.
struct AttentionProblem {
    let batchShape: [Int]
    let queryLength: Int, keyLength: Int, depth: Int, valueDepth: Int
    let scale: Float
    let query: AttentionOperand, key: AttentionOperand, value: AttentionOperand
    let mask: AttentionMask?

    var batch: Int { Shape.count(batchShape) }

    /// Query-row blocks per batch item: 1 when the items alone keep every
    /// worker busy, else enough blocks (of at least 16 rows) to share them out.
    var rowBlocks: Int {
        let threads = Parallel.threadCount
        if threads <= 1 || batch >= 2 * threads || batch % threads == 0 { return 1 }
        return Swift.max(1, Swift.min((2 * threads + batch - 1) / batch, queryLength / 16))
    }

    /// Rows `block` of `blocks` of a length-`count` dimension.
    @inline(__always)
    static func block(_ block: Int, of blocks: Int, _ count: Int) -> Range<Int> {
        (count * block / blocks)..<(count * (block + 1) / blocks)
    }

    /// `softmax(scale · Q Kᵀ + mask)` for query rows `rows` of one item, into `scores`
    /// (row `rows.lowerBound` first, rows of length S).
    func computeProbabilities(item: Int, rows: Range<Int>, into scores: UnsafeMutablePointer<Float>) {
        let (S, E) = (keyLength, depth)
        let queryRows = query.pointer(item) + (query.transposed ? rows.lowerBound : rows.lowerBound * query.leadingDimension)
        Gemm.serial(GemmArguments(transposeA: query.transposed, transposeB: !key.transposed, m: rows.count, n: S, k: E, alpha: scale,
                                  a: queryRows, lda: query.leadingDimension,
                                  b: key.pointer(item), ldb: key.leadingDimension,
                                  c: scores, ldc: Swift.max(S, 1)))
        if E == 0 { scores.update(repeating: 0, count: rows.count * S) }
        for row in rows {
            let maskRow = mask.map { UnsafePointer($0.tensor.floatPointer + $0.itemOffsets[item] + row * $0.rowStride) }
            AttentionKernel.maskedSoftmaxRow(scores + (row - rows.lowerBound) * S, S, mask: maskRow, maskStride: mask?.columnStride ?? 0)
        }
    }

    /// Output `[…, L, Ev]` and, when asked, the probabilities `[…, L, S]`.
    func forward(keepProbabilities: Bool) -> (Tensor, Tensor?) {
        let (L, S, Ev) = (queryLength, keyLength, valueDepth)
        let output = Tensor(uninitializedShape: batchShape + [L, Ev])
        let probabilities = keepProbabilities ? Tensor(uninitializedShape: batchShape + [L, S]) : nil
        if output.count == 0 { return (output, probabilities) }
        let out = output.floatPointer
        let kept = probabilities?.floatPointer
        let blocks = rowBlocks
        Parallel.forEach(batch * blocks) { range in
            let scratch = kept == nil ? UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(((L + blocks - 1) / blocks) * S, 1)) : nil
            defer { scratch?.deallocate() }
            for unit in range {
                let item = unit / blocks
                let rows = AttentionProblem.block(unit % blocks, of: blocks, L)
                if rows.isEmpty { continue }
                let scores = kept.map { $0 + (item * L + rows.lowerBound) * S } ?? scratch!
                computeProbabilities(item: item, rows: rows, into: scores)
                // out = P V
                let target = out + (item * L + rows.lowerBound) * Ev
                Gemm.serial(GemmArguments(transposeB: value.transposed, m: rows.count, n: Ev, k: S,
                                          a: scores, lda: Swift.max(S, 1),
                                          b: value.pointer(item), ldb: value.leadingDimension,
                                          c: target, ldc: Swift.max(Ev, 1)))
                if S == 0 { target.update(repeating: 0, count: rows.count * Ev) }
            }
        }
        return (output, probabilities)
    }
}

enum AttentionKernel {
    typealias Vector = SIMD8<Float>

    /// `exp(x)` for softmax rows: round-to-integer by the 1.5·2²³ shifter,
    /// Cody–Waite reduction, degree-5 polynomial (about 1e-7 relative error),
    /// exactly 0 below −87 (so −∞ gives 0). Inputs are ≤ 0 here; no overflow handling.
    @inline(__always)
    static func exp(_ input: Vector) -> Vector {
        // (`pointwiseMax` is not vectorised by the compiler; a masked select is.)
        let floor = Vector(repeating: -87)
        let x = input.replacing(with: floor, where: input .< floor)
        let shifter = Vector(repeating: 12582912)
        let biased = x * Vector(repeating: 1.4426950408889634) + shifter
        let n = biased - shifter
        var r = x.addingProduct(n, Vector(repeating: -0.693359375))
        r = r.addingProduct(n, Vector(repeating: 2.12194440e-4))
        var p = Vector(repeating: 1.3981999507e-3).addingProduct(Vector(repeating: 1.9875691500e-4), r)
        p = Vector(repeating: 8.3334519073e-3).addingProduct(p, r)
        p = Vector(repeating: 4.1665795894e-2).addingProduct(p, r)
        p = Vector(repeating: 1.6666665459e-1).addingProduct(p, r)
        p = Vector(repeating: 5.0000001201e-1).addingProduct(p, r)
        let y = (r + 1).addingProduct(p, r * r)
        let exponent = (unsafeBitCast(biased, to: SIMD8<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
        return (y * unsafeBitCast(exponent, to: Vector.self)).replacing(with: 0, where: input .< floor)
    }

    /// In place: `row ← softmax(row + mask)`; a row with no visible position becomes zeros.
    @inline(__always)
    static func maskedSoftmaxRow(_ row: UnsafeMutablePointer<Float>, _ length: Int, mask: UnsafePointer<Float>?, maskStride: Int) {
        if let mask {
            if maskStride == 1 {
                var index = 0
                while index + 8 <= length {
                    let sum = UnsafeRawPointer(row + index).loadUnaligned(as: Vector.self) + UnsafeRawPointer(mask + index).loadUnaligned(as: Vector.self)
                    UnsafeMutableRawPointer(row + index).storeBytes(of: sum, as: Vector.self)
                    index += 8
                }
                while index < length { row[index] += mask[index]; index += 1 }
            } else {
                for index in 0..<length { row[index] += mask[index * maskStride] }
            }
        }
        var largestLanes = Vector(repeating: -.infinity)
        var index = 0
        while index + 8 <= length {
            let value = UnsafeRawPointer(row + index).loadUnaligned(as: Vector.self)
            largestLanes.replace(with: value, where: value .> largestLanes)
            index += 8
        }
        var largest = -Float.infinity
        for lane in 0..<8 where largestLanes[lane] > largest { largest = largestLanes[lane] }
        while index < length { largest = Swift.max(largest, row[index]); index += 1 }
        guard largest > -.infinity else {
            row.update(repeating: 0, count: length)
            return
        }
        let shift = Vector(repeating: largest)
        var lanes = Vector()
        index = 0
        while index + 8 <= length {
            let value = exp(UnsafeRawPointer(row + index).loadUnaligned(as: Vector.self) - shift)
            UnsafeMutableRawPointer(row + index).storeBytes(of: value, as: Vector.self)
            lanes += value
            index += 8
        }
        var total = lanes.sum()
        while index < length {
            let value = Foundation.exp(row[index] - largest)
            row[index] = value
            total += value
            index += 1
        }
        let factor = Vector(repeating: 1 / total)
        index = 0
        while index + 8 <= length {
            let value = UnsafeRawPointer(row + index).loadUnaligned(as: Vector.self) * factor
            UnsafeMutableRawPointer(row + index).storeBytes(of: value, as: Vector.self)
            index += 8
        }
        while index < length { row[index] *= factor[0]; index += 1 }
    }

    /// In place: `dP ← P ∘ (dP − Σ dP∘P)` for one row.
    @inline(__always)
    static func softmaxBackwardRow(_ gradient: UnsafeMutablePointer<Float>, _ probabilities: UnsafePointer<Float>, _ length: Int) {
        var lanes = Vector()
        var index = 0
        while index + 8 <= length {
            lanes = lanes.addingProduct(UnsafeRawPointer(gradient + index).loadUnaligned(as: Vector.self),
                                        UnsafeRawPointer(probabilities + index).loadUnaligned(as: Vector.self))
            index += 8
        }
        var dot = lanes.sum()
        while index < length { dot += gradient[index] * probabilities[index]; index += 1 }
        let shift = Vector(repeating: dot)
        index = 0
        while index + 8 <= length {
            let value = UnsafeRawPointer(probabilities + index).loadUnaligned(as: Vector.self)
                * (UnsafeRawPointer(gradient + index).loadUnaligned(as: Vector.self) - shift)
            UnsafeMutableRawPointer(gradient + index).storeBytes(of: value, as: Vector.self)
            index += 8
        }
        while index < length { gradient[index] = probabilities[index] * (gradient[index] - dot); index += 1 }
    }
}

/// Saved state of attention: the operands and, for few items, the softmax
/// probabilities (recomputed per item otherwise).
struct AttentionBackward: BackwardContext {
    var name: String { "scaledDotProductAttention" }
    let problem: AttentionProblem
    let probabilities: Tensor?
    /// Each score row's base-2 log-sum-exp when the forward pass ran `SmallHeadAttention` or `TiledAttention`.
    let logSumExp: Tensor?
    /// The output (detached) when the forward pass ran `TiledAttention`, for D = rowsum(dO ∘ O).
    var tiledOutput: Tensor? = nil
    /// Shapes of query, key, value (and mask), to sum broadcast gradients back.
    let inputShapes: [[Int]]

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        let p = problem
        let (L, S, E, Ev) = (p.queryLength, p.keyLength, p.depth, p.valueDepth)
        let needsQuery = inputs[0] != nil, needsKey = inputs[1] != nil, needsValue = inputs[2] != nil
        let needsMask = inputs.count > 3 && inputs[3] != nil
        if let logSumExp, let tiledOutput {
            let (dQ, dK, dV) = TiledAttention.backward(p, output: tiledOutput, logSumExp: logSumExp, outputGradient: gradient,
                                                       needsQuery: needsQuery, needsKey: needsKey, needsValue: needsValue)
            var result = [dQ?.summed(toShape: inputShapes[0]), dK?.summed(toShape: inputShapes[1]), dV?.summed(toShape: inputShapes[2])]
            if inputShapes.count > 3 { result.append(nil) }
            return result
        }
        if let logSumExp {
            let (dQ, dK, dV) = SmallHeadAttention.backward(p, logSumExp: logSumExp, outputGradient: gradient,
                                                           needsQuery: needsQuery, needsKey: needsKey, needsValue: needsValue)
            return [dQ?.summed(toShape: inputShapes[0]), dK?.summed(toShape: inputShapes[1]), dV?.summed(toShape: inputShapes[2])]
        }
        let outputGradient = gradient.contiguousData()
        let queryGradient = needsQuery ? Tensor(uninitializedShape: p.batchShape + [L, E]) : nil
        let keyGradient = needsKey ? Tensor(uninitializedShape: p.batchShape + [S, E]) : nil
        let valueGradient = needsValue ? Tensor(uninitializedShape: p.batchShape + [S, Ev]) : nil
        let maskGradient = needsMask ? Tensor(uninitializedShape: p.batchShape + [L, S]) : nil
        let needsScores = needsQuery || needsKey || needsMask
        let dO = UnsafePointer(outputGradient.floatPointer)
        let probabilityPointer = probabilities.map { UnsafePointer($0.floatPointer) }
        let dQ = queryGradient?.floatPointer, dK = keyGradient?.floatPointer, dV = valueGradient?.floatPointer
        let dMask = maskGradient?.floatPointer
        for tensor in [queryGradient, keyGradient, valueGradient, maskGradient] {
            if let tensor, tensor.count > 0, L == 0 || S == 0 || Ev == 0 { memset(tensor.storage.bytes, 0, tensor.count * 4) }
        }

        /// dV rows `keys` = Pᵀ dO and dK rows `keys` = scale · dSᵀ Q, for one item
        /// whose probabilities are at `probabilitiesItem`.
        func keyGradients(item: Int, keys: Range<Int>, scores: UnsafePointer<Float>?, probabilitiesItem: UnsafePointer<Float>) {
            let outputItem = dO + item * L * Ev
            if let dV {
                Gemm.serial(GemmArguments(transposeA: true, m: keys.count, n: Ev, k: L,
                                          a: probabilitiesItem + keys.lowerBound, lda: Swift.max(S, 1), b: outputItem, ldb: Swift.max(Ev, 1),
                                          c: dV + (item * S + keys.lowerBound) * Ev, ldc: Swift.max(Ev, 1)))
            }
            if let dK, let scores, E > 0, L > 0 {
                Gemm.serial(GemmArguments(transposeA: true, transposeB: p.query.transposed, m: keys.count, n: E, k: L, alpha: p.scale,
                                          a: scores + keys.lowerBound, lda: S, b: p.query.pointer(item), ldb: p.query.leadingDimension,
                                          c: dK + (item * S + keys.lowerBound) * E, ldc: E))
            }
        }

        /// dS rows `rows` = P ∘ (dP − rowsum(dP ∘ P)) with dP = dO Vᵀ into `scores`
        /// (row `rows.lowerBound` first), then dQ rows = scale · dS K.
        func queryGradients(item: Int, rows: Range<Int>, scores: UnsafeMutablePointer<Float>, probabilitiesItem: UnsafePointer<Float>) {
            if Ev > 0 {
                Gemm.serial(GemmArguments(transposeB: !p.value.transposed, m: rows.count, n: S, k: Ev,
                                          a: dO + (item * L + rows.lowerBound) * Ev, lda: Ev, b: p.value.pointer(item), ldb: p.value.leadingDimension,
                                          c: scores, ldc: S))
            } else {
                scores.update(repeating: 0, count: rows.count * S)
            }
            for row in rows {
                AttentionKernel.softmaxBackwardRow(scores + (row - rows.lowerBound) * S, probabilitiesItem + row * S, S)
            }
            if let dMask {
                let target = dMask + (item * L + rows.lowerBound) * S
                if target != scores { target.update(from: scores, count: rows.count * S) }
            }
            if let dQ, E > 0 {
                Gemm.serial(GemmArguments(transposeB: p.key.transposed, m: rows.count, n: E, k: S, alpha: p.scale,
                                          a: scores, lda: S, b: p.key.pointer(item), ldb: p.key.leadingDimension,
                                          c: dQ + (item * L + rows.lowerBound) * E, ldc: E))
            }
        }

        let blocks = p.rowBlocks
        if probabilityPointer == nil || blocks == 1 || L == 0 || S == 0 {
            // Each item on one worker: P recomputed (unless kept), dS in a scratch, then dQ, dK and dV.
            Parallel.forEach(p.batch) { range in
                let scratch = needsScores ? UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(L * S, 1)) : nil
                let recomputed = probabilityPointer == nil ? UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(L * S, 1)) : nil
                defer { scratch?.deallocate(); recomputed?.deallocate() }
                for item in range {
                    let probabilitiesItem: UnsafePointer<Float>
                    if let recomputed {
                        if L > 0 && S > 0 { p.computeProbabilities(item: item, rows: 0..<L, into: recomputed) }
                        probabilitiesItem = UnsafePointer(recomputed)
                    } else {
                        probabilitiesItem = probabilityPointer! + item * L * S
                    }
                    guard let scores = scratch, L > 0, S > 0 else {
                        keyGradients(item: item, keys: 0..<S, scores: nil, probabilitiesItem: probabilitiesItem)
                        continue
                    }
                    queryGradients(item: item, rows: 0..<L, scores: scores, probabilitiesItem: probabilitiesItem)
                    keyGradients(item: item, keys: 0..<S, scores: scores, probabilitiesItem: probabilitiesItem)
                }
            }
        } else {
            // Few items: split query rows for dS and dQ, then key rows for dV and dK.
            let allScores = needsScores ? (maskGradient ?? Tensor(uninitializedShape: p.batchShape + [L, S])) : nil
            let scoresPointer = allScores?.floatPointer
            if let scoresPointer {
                Parallel.forEach(p.batch * blocks) { range in
                    for unit in range {
                        let item = unit / blocks
                        let rows = AttentionProblem.block(unit % blocks, of: blocks, L)
                        if !rows.isEmpty {
                            queryGradients(item: item, rows: rows, scores: scoresPointer + (item * L + rows.lowerBound) * S,
                                           probabilitiesItem: probabilityPointer! + item * L * S)
                        }
                    }
                }
            }
            let keyBlocks = Swift.max(1, Swift.min(blocks, S / 16))
            Parallel.forEach(p.batch * keyBlocks) { range in
                for unit in range {
                    let item = unit / keyBlocks
                    let keys = AttentionProblem.block(unit % keyBlocks, of: keyBlocks, S)
                    if !keys.isEmpty {
                        keyGradients(item: item, keys: keys, scores: scoresPointer.map { UnsafePointer($0 + item * L * S) },
                                     probabilitiesItem: probabilityPointer! + item * L * S)
                    }
                }
            }
            withExtendedLifetime(allScores) {}
        }
        var result: [Tensor?] = [queryGradient?.summed(toShape: inputShapes[0]),
                                 keyGradient?.summed(toShape: inputShapes[1]),
                                 valueGradient?.summed(toShape: inputShapes[2])]
        if inputShapes.count > 3 { result.append(maskGradient?.summed(toShape: inputShapes[3])) }
        return result
    }
}
