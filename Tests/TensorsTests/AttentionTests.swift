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
