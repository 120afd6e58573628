@testable import Tensors
import TestSupport
import XCTest

/// `Tensor.gatedGELU` (GEGLU's activation in one pass) against the composite `hidden * gate.gelu()`:
/// the same float operations, so values and d hidden agree bit for bit; d gate too, except where the
/// composite's GELU backward takes its scalar reference (a range's last elements short of a vector of 8),
/// which agrees with the vector derivative within 1.4e-7 absolute (VectorGELUTests); and finite differences.
final class GatedGELUTests: XCTestCase {
    private func operands(_ shape: [Int], seed: UInt64) -> (Tensor, Tensor, Tensor) {
        var generator = RandomGenerator(seed: seed)
        // Gates over GELU's whole interesting range, including the far tails.
        let gate = Tensor.randn(shape, generator: &generator) * 3
        let hidden = Tensor.randn(shape, generator: &generator)
        let upstream = Tensor.randn(shape, generator: &generator)
        return (hidden, gate, upstream)
    }

    /// Values, d hidden and d gate of `function` for leaves copied from the operands.
    private func run(_ hidden: Tensor, _ gate: Tensor, _ upstream: Tensor, needs: (hidden: Bool, gate: Bool) = (true, true),
                     _ function: (Tensor, Tensor) -> Tensor) -> ([Float], [Float]?, [Float]?) {
        let h = hidden.contiguousCopy(), g = gate.contiguousCopy()
        h.requiresGrad = needs.hidden
        g.requiresGrad = needs.gate
        let output = function(h, g)
        output.backward(upstream)
        return (output.toArray(), h.grad?.toArray(), g.grad?.toArray())
    }

    func testMatchesTheCompositeBitForBit() {
        // 1,003 elements: whole vectors and a tail of 3, over several workers' ranges.
        for (shape, seed) in [([17, 59], UInt64(1)), ([2, 64, 256], 2), ([5], 3)] {
            let (hidden, gate, upstream) = operands(shape, seed: seed)
            let fused = run(hidden, gate, upstream) { Tensor.gatedGELU(hidden: $0, gate: $1) }
            let composite = run(hidden, gate, upstream) { Tensor.gatedGELUReference(hidden: $0, gate: $1) }
            XCTAssertTrue(fused.0 == composite.0, "values, shape \(shape)")
            XCTAssertTrue(fused.1 == composite.1, "d hidden, shape \(shape)")
            assertGateGradientsAgree(fused.2, composite.2, hidden: hidden, upstream: upstream, "shape \(shape)")
        }
    }

    /// On the two halves of one projection (`[…, 2·n]`, GEGLU's layout): the same bits as on the halves given
    /// apart, values and both gradients, the gradient coming back as one tensor with the halves side by side.
    func testHalvesOfOneProjectionMatchTheHalvesApart() {
        for (shape, seed) in [([17, 118], UInt64(6)), ([2, 64, 512], 7), ([3, 10], 8)] {
            var generator = RandomGenerator(seed: seed)
            let projection = Tensor.randn(shape, generator: &generator) * 3
            let upstream = Tensor.randn(Array(shape.dropLast()) + [shape.last! / 2], generator: &generator)
            let fusedLeaf = projection.contiguousCopy(), apartLeaf = projection.contiguousCopy()
            fusedLeaf.requiresGrad = true
            apartLeaf.requiresGrad = true
            let fused = Tensor.gatedGELU(halves: fusedLeaf)
            fused.backward(upstream)
            let parts = apartLeaf.chunked(2, axis: -1)
            let apart = Tensor.gatedGELU(hidden: parts[0], gate: parts[1])
            apart.backward(upstream)
            XCTAssertEqual(fused.shape, apart.shape)
            XCTAssertTrue(fused.toArray() == apart.toArray(), "values, shape \(shape)")
            XCTAssertTrue(fusedLeaf.grad!.toArray() == apartLeaf.grad!.toArray(), "gradients, shape \(shape)")
        }
    }

    func testOnlyTheNeededGradients() {
        let (hidden, gate, upstream) = operands([3, 11], seed: 4)
        for needs in [(hidden: true, gate: false), (hidden: false, gate: true)] {
            let fused = run(hidden, gate, upstream, needs: needs) { Tensor.gatedGELU(hidden: $0, gate: $1) }
            let composite = run(hidden, gate, upstream, needs: needs) { Tensor.gatedGELUReference(hidden: $0, gate: $1) }
            XCTAssertEqual(fused.1 == nil, !needs.hidden)
            XCTAssertEqual(fused.2 == nil, !needs.gate)
            XCTAssertTrue(fused.1 == composite.1)
            assertGateGradientsAgree(fused.2, composite.2, hidden: hidden, upstream: upstream, "needs \(needs)")
        }
    }

    /// d gate = (dY · h) · gelu′(g): equal, or within the derivative's 1.4e-7 (2e-7 here) times |dY · h|;
    /// and equal bit for bit on at least all but the last 7 elements.
    private func assertGateGradientsAgree(_ fused: [Float]?, _ composite: [Float]?, hidden: Tensor, upstream: Tensor, _ label: String,
                                          file: StaticString = #filePath, line: UInt = #line) {
        guard let fused, let composite else {
            XCTAssertTrue(fused == nil && composite == nil, "d gate present on one side only, \(label)", file: file, line: line)
            return
        }
        let h = hidden.toArray(), dy = upstream.toArray()
        var different = 0, worst: Float = 0
        for index in fused.indices where fused[index] != composite[index] {
            different += 1
            worst = Swift.max(worst, Swift.abs(fused[index] - composite[index]) / Swift.max(Swift.abs(dy[index] * h[index]), 1e-30))
        }
        XCTAssertLessThanOrEqual(different, 7, "d gate elements that differ, \(label)", file: file, line: line)
        XCTAssertLessThanOrEqual(worst, 2e-7, "d gate's largest difference over |dY·h|, \(label)", file: file, line: line)
    }

    func testStridedHalvesOfOneProjection() {
        // GEGLU with a LoRA adapter splits one projection's output: two strided views.
        var generator = RandomGenerator(seed: 5)
        let both = Tensor.randn([4, 6, 40], generator: &generator)
        let halves = both.chunked(2, axis: -1)
        XCTAssertTrue(Tensor.gatedGELU(hidden: halves[0], gate: halves[1]).toArray()
                      == Tensor.gatedGELUReference(hidden: halves[0], gate: halves[1]).toArray())
    }

    func testFiniteDifferences() {
        let (hidden, gate, _) = operands([6, 13], seed: 6)
        GradientCheck.check([hidden, gate], step: 1e-2, tolerance: 1e-2) { xs in Tensor.gatedGELU(hidden: xs[0], gate: xs[1]) }
    }

    func testOtherDataTypesTakeTheComposite() {
        let (hidden, gate, _) = operands([2, 9], seed: 7)
        let half = gate.converted(to: .bfloat16)
        XCTAssertTrue(Tensor.gatedGELU(hidden: hidden, gate: half).toArray()
                      == Tensor.gatedGELUReference(hidden: hidden, gate: half).toArray())
    }
}
