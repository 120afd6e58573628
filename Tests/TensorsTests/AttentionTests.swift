import Tensors
import TestSupport
import XCTest

final class AttentionTests: XCTestCase {
    /// `softmax(Q Kᵀ · scale + mask) V` from matmul and softmax.
    private func reference(_ query: Tensor, _ key: Tensor, _ value: Tensor, mask: Tensor? = nil, scale: Float? = nil) -> Tensor {
        let factor = scale ?? 1 / Float(query.shape[query.rank - 1]).squareRoot()
        var scores = query.matmul(key.transposed()) * factor
        if let mask { scores = scores + mask }
        return scores.softmax().matmul(value)
    }

    /// Output and gradients of `Σ output · upstream` for each input.
    private func valueAndGradients(_ inputs: [Tensor], _ function: ([Tensor]) -> Tensor) -> (Tensor, [Tensor]) {
        let leaves = inputs.map { input -> Tensor in
            let leaf = input.contiguousCopy()
            leaf.requiresGrad = true
            return leaf
        }
        let output = function(leaves)
        var generator = RandomGenerator(seed: 99)
        (output * Tensor.randn(output.shape, generator: &generator)).sum().backward()
        return (output.detach(), leaves.map { $0.grad ?? Tensor.zeros($0.shape) })
    }

    private func checkAgainstReference(_ inputs: [Tensor], scale: Float? = nil, file: StaticString = #filePath, line: UInt = #line,
                                       prepare: @escaping ([Tensor]) -> [Tensor] = { $0 }) {
        let (fast, fastGradients) = valueAndGradients(inputs) { xs in
            let p = prepare(xs)
            return Tensor.scaledDotProductAttention(query: p[0], key: p[1], value: p[2], mask: p.count > 3 ? p[3] : nil, scale: scale)
        }
        let (expected, expectedGradients) = valueAndGradients(inputs) { xs in
            let p = prepare(xs)
            return reference(p[0], p[1], p[2], mask: p.count > 3 ? p[3] : nil, scale: scale)
        }
        assertClose(fast, expected, relative: 1e-4, absolute: 1e-5, "forward", file: file, line: line)
        for (index, (actual, wanted)) in zip(fastGradients, expectedGradients).enumerated() {
            assertClose(actual, wanted, relative: 1e-3, absolute: 1e-4, "gradient \(index)", file: file, line: line)
        }
    }

    func testHandComputed() {
        let query = Tensor([1, 0], shape: [1, 2])
        let key = Tensor([1, 0, 0, 1], shape: [2, 2])
        let value = Tensor([1, 2, 3, 4], shape: [2, 2])
        let output = Tensor.scaledDotProductAttention(query: query, key: key, value: value, scale: 1)
        let e = Float(M_E)
        let (first, second) = (e / (e + 1), 1 / (e + 1))
        assertClose(output.toArray(), [first * 1 + second * 3, first * 2 + second * 4], relative: 1e-6, absolute: 1e-6)
    }

    func testMatchesReferenceWithoutMask() {
        var generator = RandomGenerator(seed: 1)
        let inputs = [Tensor.randn([2, 3, 5, 8], generator: &generator),
                      Tensor.randn([2, 3, 7, 8], generator: &generator),
                      Tensor.randn([2, 3, 7, 6], generator: &generator)]
        checkAgainstReference(inputs)
        checkAgainstReference(inputs, scale: 0.7)
        checkAgainstReference([Tensor.randn([4, 19, 16], generator: &generator),
                               Tensor.randn([4, 33, 16], generator: &generator),
                               Tensor.randn([4, 33, 9], generator: &generator)])
    }

    func testMatchesReferenceWithMask() {
        var generator = RandomGenerator(seed: 2)
        let inputs = [Tensor.randn([2, 3, 5, 8], generator: &generator),
                      Tensor.randn([2, 3, 7, 8], generator: &generator),
                      Tensor.randn([2, 3, 7, 6], generator: &generator)]
        // Causal-style mask with -infinity (every row keeps at least one position).
        var values = [Float](repeating: 0, count: 5 * 7)
        for row in 0..<5 { for column in 0..<7 where column > row + 1 { values[row * 7 + column] = -.infinity } }
        let causal = Tensor(values, shape: [5, 7])
        checkAgainstReference(inputs + [causal])
        // A finite additive mask with batch dimensions, broadcast over heads.
        checkAgainstReference(inputs + [Tensor.randn([2, 1, 5, 7], generator: &generator)])
        // A key-padding mask broadcast over rows.
        var padding = [Float](repeating: 0, count: 2 * 7)
        padding[5] = -.infinity; padding[7 + 6] = -.infinity
        checkAgainstReference(inputs + [Tensor(padding, shape: [2, 1, 1, 7])])
    }

    func testBroadcastBatchDimensions() {
        var generator = RandomGenerator(seed: 3)
        checkAgainstReference([Tensor.randn([2, 3, 5, 8], generator: &generator),
                               Tensor.randn([7, 8], generator: &generator),
                               Tensor.randn([3, 7, 6], generator: &generator)])
        checkAgainstReference([Tensor.randn([1, 5, 8], generator: &generator),
                               Tensor.randn([4, 7, 8], generator: &generator),
                               Tensor.randn([4, 7, 8], generator: &generator)])
    }

    /// Heads split from `[B, L, H·E]` by reshape and permute are read in place.
    func testNonContiguousInputs() {
        var generator = RandomGenerator(seed: 4)
        let inputs = [Tensor.randn([2, 5, 24], generator: &generator),
                      Tensor.randn([2, 7, 24], generator: &generator),
                      Tensor.randn([2, 6, 7, 3], generator: &generator)]
        checkAgainstReference(inputs) { xs in
            [xs[0].reshaped([2, 5, 3, 8]).permuted(0, 2, 1, 3),
             xs[1].reshaped([2, 7, 3, 8]).permuted(0, 2, 1, 3),
             xs[2].permuted(0, 3, 2, 1)]
        }
    }

    /// Few batch items: query rows (forward, dS, dQ) and key rows (dV, dK) are split across workers.
    func testFewItemsSplitAcrossWorkers() {
        let saved = Parallel.threadCount
        defer { Parallel.threadCount = saved }
        var generator = RandomGenerator(seed: 8)
        let single = [Tensor.randn([1, 70, 8], generator: &generator), Tensor.randn([1, 45, 8], generator: &generator),
                      Tensor.randn([1, 45, 5], generator: &generator), Tensor.randn([70, 45], generator: &generator)]
        let three = [Tensor.randn([3, 40, 8], generator: &generator), Tensor.randn([3, 33, 8], generator: &generator),
                     Tensor.randn([3, 33, 8], generator: &generator)]
        for threads in [1, 2, 4] {
            Parallel.threadCount = threads
            checkAgainstReference(single)
            checkAgainstReference(Array(single.prefix(3)))
            checkAgainstReference(three)
            // Only the value needs a gradient.
            let value = three[2].contiguousCopy()
            value.requiresGrad = true
            Tensor.scaledDotProductAttention(query: three[0], key: three[1], value: value).sum().backward()
            let expected = noGrad { reference(three[0], three[1], three[2]).sum() }
            XCTAssertNotNil(value.grad)
            XCTAssertEqual(noGrad { Tensor.scaledDotProductAttention(query: three[0], key: three[1], value: three[2]).sum() }.item, expected.item, accuracy: 1e-3)
            let valueReference = three[2].contiguousCopy()
            valueReference.requiresGrad = true
            reference(three[0], three[1], valueReference).sum().backward()
            assertClose(value.grad!, valueReference.grad!, relative: 1e-4, absolute: 1e-5)
        }
    }

    func testFullyMaskedRowGivesZeros() {
        var generator = RandomGenerator(seed: 5)
        let query = Tensor.randn([2, 3, 4], generator: &generator)
        let key = Tensor.randn([2, 5, 4], generator: &generator)
        let value = Tensor.randn([2, 5, 4], generator: &generator)
        var values = [Float](repeating: 0, count: 3 * 5)
        for column in 0..<5 { values[5 + column] = -.infinity }
        let output = Tensor.scaledDotProductAttention(query: query, key: key, value: value, mask: Tensor(values, shape: [3, 5]))
        for batch in 0..<2 {
            for column in 0..<4 { XCTAssertEqual(output[batch, 1, column], 0) }
            XCTAssertFalse(output[batch, 0, 0].isNaN)
        }
    }

    func testGradientsFiniteDifferences() {
        var generator = RandomGenerator(seed: 6)
        let query = Tensor.randn([2, 4, 5], generator: &generator)
        let key = Tensor.randn([2, 6, 5], generator: &generator)
        let value = Tensor.randn([2, 6, 3], generator: &generator)
        let mask = Tensor.randn([4, 6], generator: &generator)
        GradientCheck.check([query, key, value]) { xs in
            Tensor.scaledDotProductAttention(query: xs[0], key: xs[1], value: xs[2])
        }
        GradientCheck.check([query, key, value, mask]) { xs in
            Tensor.scaledDotProductAttention(query: xs[0], key: xs[1], value: xs[2], mask: xs[3], scale: 0.5)
        }
    }

    func testInferenceMatchesRecordedForward() {
        var generator = RandomGenerator(seed: 7)
        let query = Tensor.randn([3, 9, 8], generator: &generator)
        query.requiresGrad = true
        let key = Tensor.randn([3, 11, 8], generator: &generator)
        let value = Tensor.randn([3, 11, 8], generator: &generator)
        let recorded = Tensor.scaledDotProductAttention(query: query, key: key, value: value)
        let inference = noGrad { Tensor.scaledDotProductAttention(query: query, key: key, value: value) }
        XCTAssertEqual(recorded.toArray(), inference.toArray())
    }
}

/// The fused depth-8 and depth-16 kernel against the GEMM path, at the course UNet's sizes and awkward ones.
final class SmallHeadAttentionTests: XCTestCase {
    private func run(_ inputs: [Tensor], smallHead: Bool, prepare: ([Tensor]) -> [Tensor]) -> [Tensor] {
        let saved = AttentionKernels.allowsSmallHead
        AttentionKernels.allowsSmallHead = smallHead
        defer { AttentionKernels.allowsSmallHead = saved }
        let leaves = inputs.map { input -> Tensor in
            let leaf = input.contiguousCopy()
            leaf.requiresGrad = true
            return leaf
        }
        let p = prepare(leaves)
        let output = Tensor.scaledDotProductAttention(query: p[0], key: p[1], value: p[2])
        var generator = RandomGenerator(seed: 5)
        (output * Tensor.randn(output.shape, generator: &generator)).sum().backward()
        return [output.detach()] + leaves.map { $0.grad! }
    }

    private func compare(_ inputs: [Tensor], absolute: Float = 1e-5, file: StaticString = #filePath, line: UInt = #line,
                         prepare: ([Tensor]) -> [Tensor] = { $0 }) {
        let fast = run(inputs, smallHead: true, prepare: prepare)
        let reference = run(inputs, smallHead: false, prepare: prepare)
        for (index, (actual, expected)) in zip(fast, reference).enumerated() {
            assertClose(actual, expected, relative: 1e-4, absolute: absolute, index == 0 ? "output" : "gradient \(index - 1)", file: file, line: line)
        }
    }

    func testCourseUNetShapes() {
        var generator = RandomGenerator(seed: 21)
        // [batch, heads, tokens, 8] split from [batch, tokens, heads·8], as diffusers' Attention does.
        compare([Tensor.randn([4, 49, 64], generator: &generator), Tensor.randn([4, 49, 64], generator: &generator),
                 Tensor.randn([4, 49, 64], generator: &generator)]) { xs in
            xs.map { $0.reshaped([4, 49, 8, 8]).permuted(0, 2, 1, 3) }
        }
        compare([Tensor.randn([2, 4, 196, 8], generator: &generator) * 3, Tensor.randn([2, 4, 196, 8], generator: &generator),
                 Tensor.randn([2, 4, 196, 8], generator: &generator)])
    }

    func testLengthsThatAreNotWholeBlocks() {
        compareLengthsThatAreNotWholeBlocks(depth: 8, seed: 22)
    }

    /// Query rows not a multiple of 8 (the kernel's block), keys not a multiple of 8 or 16, scores spread
    /// wide, a broadcast key and value, a transposed key; heads of `depth`.
    private func compareLengthsThatAreNotWholeBlocks(depth: Int, seed: UInt64, file: StaticString = #filePath, line: UInt = #line) {
        var generator = RandomGenerator(seed: seed)
        func randn(_ shape: [Int]) -> Tensor { Tensor.randn(shape, generator: &generator) }
        compare([randn([6, 13, depth]), randn([6, 37, depth]), randn([6, 37, depth])], file: file, line: line)
        compare([randn([4, 1, depth]), randn([4, 5, depth]), randn([4, 5, depth])], file: file, line: line)
        compare([randn([2, 3, depth]) * 4, randn([2, 16, depth]), randn([2, 16, depth])], file: file, line: line)
        // Scores spread over ±100 (standard deviation 25): many probabilities underflow (the exponential's
        // clamp at 2⁻¹²⁵), one key dominates most rows. dS of a dominant key is then a difference of
        // nearly equal numbers (dP − D), whose float32 rounding (≈ 10⁻⁷·|dP|) both implementations
        // make, times queries of size 10 over 21 rows: absolute agreement 10⁻⁴ on gradients of size 1.
        compare([randn([3, 21, depth]) * 5, randn([3, 30, depth]) * 5, randn([3, 30, depth])], absolute: 1e-4, file: file, line: line)
        // Broadcast key and value: their gradients sum over the query's batch.
        compare([randn([2, 4, 9, depth]), randn([4, 11, depth]), randn([4, 11, depth])], file: file, line: line)
        // A transposed key (column-major item): read through the gathering path.
        compare([randn([4, 10, depth]), randn([4, depth, 10]), randn([4, 10, depth])], file: file, line: line) { xs in
            [xs[0], xs[1].transposed(1, 2), xs[2]]
        }
    }

    /// On one thread the forward pass runs its items through a call of its own (`forwardItemsAtDepth8`
    /// and `…16`) rather than `Parallel.forEach`'s closure: the same results, for both depths.
    func testOneThreadGivesTheSameResults() {
        let saved = Parallel.threadCount
        Parallel.threadCount = 1
        defer { Parallel.threadCount = saved }
        var generator = RandomGenerator(seed: 28)
        for depth in [8, 16] {
            compare([Tensor.randn([3, 2, 13, depth], generator: &generator), Tensor.randn([3, 2, 11, depth], generator: &generator),
                     Tensor.randn([3, 2, 11, depth], generator: &generator)])
        }
    }

    /// Heads split from a `[B, L, heads · 8]` projection get the output in the same memory order, so
    /// merging the heads back (`transposed(1, 2).reshaped([B, L, 64])`) is a view, not a copy.
    func testOutputFollowsTheSplitLayout() {
        var generator = RandomGenerator(seed: 24)
        let projection = Tensor.randn([2, 49, 64], generator: &generator)
        let heads = projection.reshaped([2, 49, 8, 8]).transposed(1, 2)
        let output = Tensor.scaledDotProductAttention(query: heads, key: heads, value: heads)
        XCTAssertEqual(output.strides, heads.strides)
        XCTAssertTrue(output.transposed(1, 2).isContiguous)
        // A query that is not a dense view (every other row) falls back to row-major.
        let sparse = Tensor.randn([2, 8, 98, 8], generator: &generator).sliced(axis: 2, step: 2)
        XCTAssertTrue(Tensor.scaledDotProductAttention(query: sparse, key: heads, value: heads).isContiguous)
    }

    /// Heads of 16 (two chunks of 8): the small text-to-image UNet's 16-token self-attention and its
    /// cross-attention to 77 text tokens, split from `[B, L, heads · 16]`; the awkward lengths and layouts.
    func testDepthSixteen() {
        var generator = RandomGenerator(seed: 25)
        let split: ([Tensor]) -> [Tensor] = { xs in xs.map { $0.reshaped([3, $0.shape[1], 4, 16]).permuted(0, 2, 1, 3) } }
        compare([Tensor.randn([3, 16, 64], generator: &generator), Tensor.randn([3, 16, 64], generator: &generator),
                 Tensor.randn([3, 16, 64], generator: &generator)], prepare: split)
        compare([Tensor.randn([3, 16, 64], generator: &generator), Tensor.randn([3, 77, 64], generator: &generator),
                 Tensor.randn([3, 77, 64], generator: &generator)], prepare: split)
        compareLengthsThatAreNotWholeBlocks(depth: 16, seed: 27)
    }

    /// Heads of 16 take the fused path at short lengths (its output's bits differ from the GEMM path's)
    /// and not beyond 2,048 scores per item, where the tiled kernel or the GEMM path is the faster (the same bits
    /// whether the fused path is allowed or not).
    func testDepthSixteenTakesTheFusedPathOnlyForShortSequences() {
        var generator = RandomGenerator(seed: 26)
        func outputs(length: Int) -> (fast: [Float], reference: [Float]) {
            let query = Tensor.randn([4, length, 16], generator: &generator)
            let key = Tensor.randn([4, length, 16], generator: &generator) * 10
            let value = Tensor.randn([4, length, 16], generator: &generator)
            let saved = AttentionKernels.allowsSmallHead
            defer { AttentionKernels.allowsSmallHead = saved }
            AttentionKernels.allowsSmallHead = true
            let fast = Tensor.scaledDotProductAttention(query: query, key: key, value: value).toArray()
            AttentionKernels.allowsSmallHead = false
            return (fast, Tensor.scaledDotProductAttention(query: query, key: key, value: value).toArray())
        }
        let short = outputs(length: 16)
        XCTAssertFalse(short.fast == short.reference)
        assertClose(short.fast, short.reference, relative: 1e-4, absolute: 1e-5)
        let long = outputs(length: 64)
        XCTAssertTrue(long.fast == long.reference)
    }

    /// The fast path is really taken (a kernel that silently fell back would make the comparison vacuous).
    func testFastPathIsTakenForDepthEight() {
        var generator = RandomGenerator(seed: 23)
        let query = Tensor.randn([4, 9, 8], generator: &generator)
        // Large scores: the GEMM path and the fused path round differently, so equal bits would mean one path ran twice.
        let key = Tensor.randn([4, 9, 8], generator: &generator) * 10
        let value = Tensor.randn([4, 9, 8], generator: &generator)
        let saved = AttentionKernels.allowsSmallHead
        defer { AttentionKernels.allowsSmallHead = saved }
        AttentionKernels.allowsSmallHead = true
        let fast = Tensor.scaledDotProductAttention(query: query, key: key, value: value).toArray()
        AttentionKernels.allowsSmallHead = false
        let reference = Tensor.scaledDotProductAttention(query: query, key: key, value: value).toArray()
        XCTAssertNotEqual(fast, reference)
        assertClose(fast, reference, relative: 1e-4, absolute: 1e-5)
    }
}
