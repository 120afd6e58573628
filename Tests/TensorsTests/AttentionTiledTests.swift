@testable import Tensors
import TestSupport
import XCTest

/// The tiled online-softmax kernel (`TiledAttention`) against the GEMM path, its reference:
/// output and the three gradients, for Stable Diffusion's head sizes and awkward ones.
final class AttentionTiledTests: XCTestCase {
    /// Runs attention with the tiled kernel on (for every size) or off; the small-head kernel
    /// is off in both, so that depth 8 compares the tiled kernel too.
    private func run(_ inputs: [Tensor], tiled: Bool, scale: Float? = nil, prepare: ([Tensor]) -> [Tensor]) -> [Tensor] {
        let saved = (AttentionKernels.allowsTiled, AttentionKernels.allowsSmallHead, TiledAttention.minimumScores)
        AttentionKernels.allowsTiled = tiled
        AttentionKernels.allowsSmallHead = false
        TiledAttention.minimumScores = 0
        defer { (AttentionKernels.allowsTiled, AttentionKernels.allowsSmallHead, TiledAttention.minimumScores) = saved }
        // The mask (a fourth input) is a constant: a mask that needs a gradient takes the GEMM path.
        let leaves = inputs.enumerated().map { index, input -> Tensor in
            let leaf = input.contiguousCopy()
            leaf.requiresGrad = index < 3
            return leaf
        }
        let p = prepare(leaves)
        let output = Tensor.scaledDotProductAttention(query: p[0], key: p[1], value: p[2], mask: p.count > 3 ? p[3] : nil, scale: scale)
        var generator = RandomGenerator(seed: 5)
        (output * Tensor.randn(output.shape, generator: &generator)).sum().backward()
        return [output.detach()] + leaves.prefix(3).map { $0.grad! }
    }

    private func compare(_ inputs: [Tensor], scale: Float? = nil, relative: Float = 2e-5, absolute: Float = 2e-5,
                         file: StaticString = #filePath, line: UInt = #line, prepare: ([Tensor]) -> [Tensor] = { $0 }) {
        let fast = run(inputs, tiled: true, scale: scale, prepare: prepare)
        let reference = run(inputs, tiled: false, scale: scale, prepare: prepare)
        for (index, (actual, expected)) in zip(fast, reference).enumerated() {
            XCTAssertFalse(actual.toArray().contains { $0.isNaN }, "NaN in \(index)", file: file, line: line)
            assertClose(actual, expected, relative: relative, absolute: absolute,
                        index == 0 ? "output" : "gradient \(index - 1)", file: file, line: line)
        }
    }

    private func randn(_ shape: [Int], _ generator: inout RandomGenerator, times factor: Float = 1) -> Tensor {
        Tensor.randn(shape, generator: &generator) * factor
    }

    func testHeadSizes() {
        var generator = RandomGenerator(seed: 31)
        for depth in [8, 13, 40, 64, 80, 160] {
            // 37 queries (two blocks of 16 and a partial one), 150 keys (three key blocks, the last partial).
            compare([randn([2, 3, 37, depth], &generator, times: 2), randn([2, 3, 150, depth], &generator),
                     randn([2, 3, 150, depth], &generator)])
        }
    }

    func testOddLengths() {
        var generator = RandomGenerator(seed: 32)
        compare([randn([2, 13, 40], &generator), randn([2, 13, 40], &generator), randn([2, 13, 40], &generator)])
        compare([randn([2, 77, 40], &generator), randn([2, 77, 40], &generator), randn([2, 77, 40], &generator)])
        compare([randn([3, 1, 64], &generator), randn([3, 5, 64], &generator), randn([3, 5, 64], &generator)])
        // Large scores: one key takes most of many rows, and the running maximum moves between key blocks.
        compare([randn([2, 40, 16], &generator, times: 4), randn([2, 200, 16], &generator, times: 4),
                 randn([2, 200, 16], &generator)], relative: 1e-4, absolute: 1e-4)
    }

    /// Stable Diffusion's cross-attention: 77 text tokens as keys, a value depth of its own.
    func testCrossAttention() {
        var generator = RandomGenerator(seed: 33)
        compare([randn([2, 4, 100, 40], &generator), randn([2, 4, 77, 40], &generator), randn([2, 4, 77, 40], &generator)])
        compare([randn([2, 100, 40], &generator), randn([2, 77, 40], &generator), randn([2, 77, 24], &generator)])
        compare([randn([2, 30, 80], &generator), randn([2, 77, 80], &generator), randn([2, 77, 5], &generator)], scale: 0.3)
    }

    func testMasks() {
        var generator = RandomGenerator(seed: 34)
        let inputs = [randn([2, 3, 37, 40], &generator), randn([2, 3, 90, 40], &generator), randn([2, 3, 90, 40], &generator)]
        // Causal-style with −∞ (every row keeps a position; some key blocks are wholly hidden from some rows).
        var causal = [Float](repeating: 0, count: 37 * 90)
        for row in 0..<37 { for column in 0..<90 where column > 2 * row { causal[row * 90 + column] = -.infinity } }
        compare(inputs + [Tensor(causal, shape: [37, 90])])
        // A finite additive mask with batch dimensions, broadcast over heads.
        compare(inputs + [randn([2, 1, 37, 90], &generator)])
        // A key-padding mask broadcast over rows.
        var padding = [Float](repeating: 0, count: 2 * 90)
        for column in 70..<90 { padding[column] = -.infinity }
        padding[90 + 3] = -.infinity
        compare(inputs + [Tensor(padding, shape: [2, 1, 1, 90])])
        // A transposed mask (column stride ≠ 1).
        compare(inputs + [randn([90, 37], &generator).transposed()])
    }

    func testFullyMaskedRowGivesZeros() {
        var generator = RandomGenerator(seed: 35)
        var values = [Float](repeating: 0, count: 20 * 70)
        for column in 0..<70 { values[3 * 70 + column] = -.infinity }
        let inputs = [randn([2, 20, 40], &generator), randn([2, 70, 40], &generator), randn([2, 70, 40], &generator),
                      Tensor(values, shape: [20, 70])]
        let fast = run(inputs, tiled: true, prepare: { $0 })
        for batch in 0..<2 { for column in 0..<40 { XCTAssertEqual(fast[0][batch, 3, column], 0) } }
        compare(inputs)
    }

    func testBroadcastBatchDimensions() {
        var generator = RandomGenerator(seed: 36)
        compare([randn([2, 3, 21, 40], &generator), randn([70, 40], &generator), randn([3, 70, 40], &generator)])
        compare([randn([1, 21, 64], &generator), randn([4, 70, 64], &generator), randn([4, 70, 64], &generator)])
    }

    /// Heads split from `[B, L, H·E]` (read in place), a transposed key and value (copied per item).
    func testTransposedAndStridedOperands() {
        var generator = RandomGenerator(seed: 37)
        compare([randn([2, 50, 160], &generator), randn([2, 70, 160], &generator), randn([2, 70, 160], &generator)]) { xs in
            xs.map { $0.reshaped([2, $0.shape[1], 4, 40]).permuted(0, 2, 1, 3) }
        }
        compare([randn([2, 50, 40], &generator), randn([2, 40, 70], &generator), randn([2, 24, 70], &generator)]) { xs in
            [xs[0], xs[1].transposed(1, 2), xs[2].transposed(1, 2)]
        }
        compare([randn([2, 40, 50], &generator), randn([2, 70, 40], &generator), randn([2, 70, 40], &generator)]) { xs in
            [xs[0].transposed(1, 2), xs[1], xs[2]]
        }
    }

    /// Few items: the backward pass splits each item's query blocks and adds the runs' dK and dV.
    func testFewItemsSplitAcrossWorkers() {
        let saved = Parallel.threadCount
        defer { Parallel.threadCount = saved }
        var generator = RandomGenerator(seed: 38)
        let inputs = [randn([1, 90, 40], &generator), randn([1, 70, 40], &generator), randn([1, 70, 40], &generator)]
        let three = [randn([3, 50, 64], &generator), randn([3, 33, 64], &generator), randn([3, 33, 64], &generator)]
        for threads in [1, 2, 4] {
            Parallel.threadCount = threads
            compare(inputs)
            compare(three)
        }
    }

    func testGradientsFiniteDifferences() {
        var generator = RandomGenerator(seed: 39)
        let saved = (AttentionKernels.allowsTiled, TiledAttention.minimumScores)
        defer { (AttentionKernels.allowsTiled, TiledAttention.minimumScores) = saved }
        AttentionKernels.allowsTiled = true
        TiledAttention.minimumScores = 0
        let query = randn([2, 5, 13], &generator), key = randn([2, 9, 13], &generator), value = randn([2, 9, 7], &generator)
        let mask = randn([5, 9], &generator)
        GradientCheck.check([query, key, value]) { xs in
            Tensor.scaledDotProductAttention(query: xs[0], key: xs[1], value: xs[2])
        }
        GradientCheck.check([query, key, value]) { xs in
            Tensor.scaledDotProductAttention(query: xs[0], key: xs[1], value: xs[2], mask: mask, scale: 0.5)
        }
    }

    /// The tiled path is really taken (equal bits would mean one path ran twice) and not when turned off.
    func testTiledPathIsTaken() {
        var generator = RandomGenerator(seed: 40)
        let inputs = [randn([2, 30, 40], &generator), randn([2, 70, 40], &generator, times: 3), randn([2, 70, 40], &generator)]
        let fast = run(inputs, tiled: true, prepare: { $0 }), reference = run(inputs, tiled: false, prepare: { $0 })
        XCTAssertNotEqual(fast[0].toArray(), reference[0].toArray())
        // The default rule: Stable Diffusion's 4,096-token self-attention is tiled; a 16×16 one is not.
        func problem(_ length: Int) -> AttentionProblem {
            let tensor = Tensor.zeros([1, length, 40])
            return AttentionProblem(batchShape: [1], queryLength: length, keyLength: length, depth: 40, valueDepth: 40, scale: 1,
                                    query: AttentionOperand(tensor, batchShape: [1]), key: AttentionOperand(tensor, batchShape: [1]),
                                    value: AttentionOperand(tensor, batchShape: [1]), mask: nil)
        }
        XCTAssertTrue(TiledAttention.applies(to: problem(4096)) || !AttentionKernels.allowsTiled)
        XCTAssertFalse(TiledAttention.applies(to: problem(16)))
    }

    /// Forward and backward at 4,096 tokens hold far less than the 4096² scores per item, and
    /// doubling the length doubles (not quadruples) the memory beyond the inputs: measured as the
    /// buffer pool's high-water mark (every tensor and kernel scratch of 64 KiB and more).
    func testPeakMemoryIsLinear() {
        let saved = AttentionKernels.allowsTiled
        defer { AttentionKernels.allowsTiled = saved }
        AttentionKernels.allowsTiled = true
        let pool = BufferPool.shared
        func extraBytes(length: Int) -> Int {
            var generator = RandomGenerator(seed: 41)
            let (batch, heads, depth) = (1, 2, 40)
            let leaves = (0..<3).map { _ -> Tensor in
                let leaf = Tensor.randn([batch, heads, length, depth], generator: &generator)
                leaf.requiresGrad = true
                return leaf
            }
            let upstream = Tensor.randn([batch, heads, length, depth], generator: &generator)
            pool.resetMeasuredPeak()
            let before = pool.requestedLiveBytes
            Tensor.scaledDotProductAttention(query: leaves[0], key: leaves[1], value: leaves[2]).backward(upstream)
            XCTAssertNotNil(leaves[2].grad)
            return pool.measuredPeakBytes - before
        }
        let half = extraBytes(length: 2048), full = extraBytes(length: 4096)
        let scoresPerItem = 4096 * 4096 * MemoryLayout<Float>.stride
        print("tiled attention peak extra memory: 2,048 tokens \(half) B, 4,096 tokens \(full) B; 4096² floats = \(scoresPerItem) B")
        XCTAssertLessThan(full, scoresPerItem / 8)
        XCTAssertLessThan(Double(full), 2.5 * Double(half))
    }
}
