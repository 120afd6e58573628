import Foundation
import Tensors
import TestSupport
import XCTest

/// Finite-difference checks for every differentiable op of the core table,
/// on shapes that broadcast and on non-contiguous views.
final class GradientCheckTests: XCTestCase {
    private func random(_ shape: [Int], seed: UInt64, low: Float = -1, high: Float = 1) -> Tensor {
        var generator = RandomGenerator(seed: seed)
        return Tensor.rand(shape, low: low, high: high, generator: &generator)
    }

    func testBroadcastingArithmetic() {
        let a = random([2, 3, 4], seed: 1)
        let b = random([3, 1], seed: 2)
        let positive = random([1, 4], seed: 3, low: 0.5, high: 2)
        GradientCheck.check([a, b]) { x in x[0] + x[1] }
        GradientCheck.check([a, b]) { x in x[0] - x[1] }
        GradientCheck.check([a, b]) { x in x[0] * x[1] }
        GradientCheck.check([a, positive]) { x in x[0] / x[1] }
        GradientCheck.check([a]) { x in -x[0] * 3 + 2 }
        GradientCheck.check([a]) { x in 1 - x[0] / 4 }
    }

    func testNonContiguousViews() {
        let a = random([3, 4, 5], seed: 4)
        let b = random([4, 5], seed: 5)
        // A transposed operand against a plain one, a slice with a step, a permuted 3-d view.
        GradientCheck.check([a, b]) { x in x[0].transposed(1, 2) * x[1].transposed() }
        GradientCheck.check([a]) { x in x[0].sliced(axis: 2, start: 1, end: 5, step: 2).exp() }
        GradientCheck.check([a]) { x in x[0].permuted(2, 0, 1).reshaped([5, 12]).sum(axis: 1) }
        GradientCheck.check([a]) { x in x[0].narrowed(axis: 1, start: 1, length: 2).sigmoid() }
        GradientCheck.check([a]) { x in x[0].transposed(0, 2).contiguous().tanh() }
        GradientCheck.check([b]) { x in x[0].transposed().unsqueezed(0).expanded([3, 5, 4]) * a.transposed(1, 2) }
        GradientCheck.check([random([4, 1, 3], seed: 6)]) { x in x[0].squeezed().flattened() }
    }

    func testPointwiseFunctions() {
        let x = random([3, 7], seed: 8, low: -2, high: 2)
        let positive = random([3, 7], seed: 9, low: 0.3, high: 3)
        for function in [PointwiseFunction.exp, .sin, .cos, .tanh, .sigmoid, .silu, .geluExact, .geluTanh, .quickGelu] {
            GradientCheck.check([x]) { inputs in inputs[0].apply(function) }
        }
        GradientCheck.check([random([3, 7], seed: 10, low: -0.9, high: 0.9)], step: 1e-3) { inputs in inputs[0].asin() }
        for function in [PointwiseFunction.log, .sqrt, .rsqrt] {
            GradientCheck.check([positive], step: 1e-3) { inputs in inputs[0].apply(function) }
        }
        // abs and relu away from their kink.
        let awayFromZero = Tensor.select(x.abs().less(0.1), x + 0.5, x)
        GradientCheck.check([awayFromZero]) { inputs in inputs[0].abs() }
        GradientCheck.check([awayFromZero]) { inputs in inputs[0].relu() }
        GradientCheck.check([positive]) { inputs in inputs[0].pow(2.5) }
        GradientCheck.check([x]) { inputs in inputs[0].pow(2) }
        GradientCheck.check([x]) { inputs in inputs[0].pow(3) }
    }

    func testClampAndWhere() {
        let x = Tensor([-2, -0.6, -0.2, 0.3, 0.7, 1.5], shape: [2, 3])
        GradientCheck.check([x], step: 1e-3) { inputs in inputs[0].clamped(min: -0.5, max: 0.5) }
        let condition = Tensor([1, 0, 1])
        let y = random([2, 3], seed: 10)
        GradientCheck.check([x, y]) { inputs in Tensor.select(condition, inputs[0], inputs[1]) }
        GradientCheck.check([x, random([1], seed: 11)]) { inputs in Tensor.select(condition, inputs[0], inputs[1]) }
    }

    func testReductions() {
        let x = random([3, 4, 5], seed: 12)
        GradientCheck.check([x]) { inputs in inputs[0].sum(axes: [0, 2], keepDims: true) }
        GradientCheck.check([x]) { inputs in inputs[0].sum() }
        GradientCheck.check([x]) { inputs in inputs[0].mean(axes: [1]) }
        GradientCheck.check([x]) { inputs in inputs[0].mean(axes: [0, 2]) }
        GradientCheck.check([x]) { inputs in inputs[0].variance(axes: [1, 2], correction: 1) }
        GradientCheck.check([x]) { inputs in inputs[0].variance(axes: [0], correction: 0, keepDims: true) }
        GradientCheck.check([x], step: 1e-3) { inputs in inputs[0].max(axes: [2]) }
        GradientCheck.check([x], step: 1e-3) { inputs in inputs[0].min(axes: [0, 1], keepDims: true) }
        GradientCheck.check([x]) { inputs in inputs[0].transposed(0, 2).sum(axes: [1]) }
    }

    func testMatmulShapes() {
        GradientCheck.check([random([5, 7], seed: 13), random([7, 3], seed: 14)]) { x in x[0].matmul(x[1]) }
        GradientCheck.check([random([2, 4, 6], seed: 15), random([2, 6, 5], seed: 16)]) { x in x[0].matmul(x[1]) }
        GradientCheck.check([random([3, 4, 5], seed: 17), random([5, 2], seed: 18)]) { x in x[0].matmul(x[1]) }
        GradientCheck.check([random([4, 5], seed: 19), random([3, 5, 2], seed: 20)]) { x in x[0].matmul(x[1]) }
        GradientCheck.check([random([2, 5, 4], seed: 21), random([2, 6, 4], seed: 22)]) { x in x[0].matmul(x[1].transposed()) }
        GradientCheck.check([random([4, 6], seed: 23), random([6], seed: 24)]) { x in x[0].matmul(x[1]) }
    }

    func testSoftmaxFamily() {
        let x = random([2, 3, 4], seed: 25, low: -3, high: 3)
        GradientCheck.check([x]) { inputs in inputs[0].softmax(axis: -1) }
        GradientCheck.check([x]) { inputs in inputs[0].softmax(axis: 1) }
        GradientCheck.check([x]) { inputs in inputs[0].logSoftmax(axis: -1) }
        GradientCheck.check([x]) { inputs in inputs[0].logSoftmax(axis: 0) }
    }

    func testIndexingJoiningPadding() {
        let x = random([3, 4, 2], seed: 26)
        let y = random([3, 2, 2], seed: 27)
        GradientCheck.check([x]) { inputs in inputs[0].indexSelect(axis: 1, indices: [3, 0, 3]) }
        GradientCheck.check([x]) { inputs in inputs[0].gather(axis: 1, index: Tensor([0, 3, 1, 1, 2, 2], shape: [3, 1, 2])) }
        GradientCheck.check([x, y]) { inputs in Tensor.concatenate([inputs[0], inputs[1]], axis: 1) }
        GradientCheck.check([y, y]) { inputs in Tensor.stack([inputs[0], inputs[1].exp()], axis: 2) }
        GradientCheck.check([x]) { inputs in
            let pieces = inputs[0].chunked(2, axis: 1)
            return pieces[0] * pieces[1].exp()
        }
        GradientCheck.check([x]) { inputs in inputs[0].padded([(1, 2), (0, 1)], value: 0.5) }
        let table = random([5, 3], seed: 28)
        GradientCheck.check([table]) { inputs in inputs[0].embedding(indices: [4, 0, 4, 2], indexShape: [2, 2]) }
    }

    func testGradientsWithRespectToInputs() {
        // Guidance needs d loss / d x without touching parameter gradients.
        let x = Tensor([1, 2, 3])
        x.requiresGrad = true
        let weight = Tensor([0.5, -1, 2])
        weight.requiresGrad = true
        let loss = (x * weight).pow(2).sum()
        let gradientsOfX = gradients(of: loss, withRespectTo: [x])[0]
        // d/dx Σ (x w)² = 2 x w²
        XCTAssertEqual(gradientsOfX.toArray(), [0.5, 4, 24])
        XCTAssertNil(x.grad)
    }

    func testGradientsAccumulateAndNoGradScopes() {
        let x = Tensor([1, 2])
        x.requiresGrad = true
        (x * x).sum().backward()
        (x * 3).sum().backward()
        XCTAssertEqual(x.grad?.toArray(), [5, 7])
        let y = noGrad { x * 2 }
        XCTAssertTrue(y.isLeaf)
        XCTAssertFalse(y.requiresGrad)
        let detached = (x * 2).detach()
        XCTAssertTrue(detached.isLeaf)
    }

    func testLeafGradientsNeverShareMemory() {
        // add's backward hands the same gradient to both inputs; each leaf must get its own.
        let a = Tensor([1, 2]), b = Tensor([3, 4])
        a.requiresGrad = true
        b.requiresGrad = true
        (a + b).sum().backward()
        XCTAssertFalse(a.grad!.storage === b.grad!.storage)
        // A caller's seed is never adopted as a leaf's gradient.
        let c = Tensor([1, 2])
        c.requiresGrad = true
        let seed = Tensor([5, 6])
        c.reshaped([2]).backward(seed)
        let d = c * 1
        _ = d
        XCTAssertFalse(c.grad!.storage === seed.storage)
        seed.floatPointer[0] = 100
        XCTAssertEqual(c.grad!.toArray(), [5, 6])
        // A fresh gradient from a kernel is adopted without a copy and stays correct.
        let x = Tensor([1, 2, 3])
        x.requiresGrad = true
        (x * x).sum().backward()
        XCTAssertEqual(x.grad!.toArray(), [2, 4, 6])
    }

    func testGraphIsFreedAfterBackward() {
        weak var savedStorage: Storage?
        weak var unsavedStorage: Storage?
        let x = Tensor.ones([256, 256])
        x.requiresGrad = true
        let loss: Tensor
        do {
            let scaled = x * 2            // feeds exp, whose backward needs only its output
            let hidden = scaled.exp()     // saved by the multiply below
            unsavedStorage = scaled.storage
            savedStorage = hidden.storage
            loss = (hidden * hidden).sum()
        }
        XCTAssertNil(unsavedStorage, "the graph kept an activation no backward rule needs")
        XCTAssertNotNil(savedStorage, "the graph should hold the saved activation before backward")
        loss.backward()
        XCTAssertNil(savedStorage, "the graph kept an activation alive after backward")
        XCTAssertTrue(loss.isLeaf)
        XCTAssertEqual(x.grad!.toArray()[0], 4 * Foundation.exp(4), accuracy: 1e-2)
    }
}

final class FusedOperationTests: XCTestCase {
    func testGroupNormSiLUEqualsTheTwoOps() {
        var generator = RandomGenerator(seed: 31)
        for layout in [TensorLayout.contiguous, .channelsLast] {
            let x = Tensor.randn([2, 6, 5, 3], generator: &generator).withLayout(layout)
            let weight = Tensor.randn([6], generator: &generator), bias = Tensor.randn([6], generator: &generator)
            let fused = x.groupNormSiLU(groupCount: 3, weight: weight, bias: bias)
            let separate = x.groupNorm(groupCount: 3, weight: weight, bias: bias).silu()
            assertClose(fused, separate, relative: 1e-6, absolute: 1e-6, "\(layout)")
            GradientCheck.check([x, weight, bias]) { inputs in
                inputs[0].withLayout(layout).groupNormSiLU(groupCount: 3, weight: inputs[1], bias: inputs[2])
            }
        }
    }

    /// The fused backward (SiLU's gradient recomputed from the saved statistics in one pass) against
    /// the two ops' own backward rules, with 20 channels so that channels-last rows take the vector
    /// loop and its tail, and 15 pixels so that contiguous runs do.
    func testGroupNormSiLUGradientsEqualTheTwoOps() {
        // [1, 20, 12, 12]: one sample split into pieces over the workers (channels-last sums combined).
        for shape in [[2, 20, 3, 5], [1, 20, 12, 12]] {
            checkGroupNormSiLUGradients(shape: shape)
        }
    }

    private func checkGroupNormSiLUGradients(shape: [Int]) {
        var generator = RandomGenerator(seed: 32)
        let source = Tensor.randn(shape, generator: &generator) * 2 + 0.5
        let weightSource = Tensor.randn([20], generator: &generator), biasSource = Tensor.randn([20], generator: &generator)
        let upstream = Tensor.randn(shape, generator: &generator)
        for layout in [TensorLayout.contiguous, .channelsLast] {
            func gradients(fused: Bool) -> [Tensor] {
                let leaves = [source, weightSource, biasSource].map { tensor -> Tensor in
                    let leaf = tensor.contiguousCopy()
                    leaf.requiresGrad = true
                    return leaf
                }
                let x = leaves[0].withLayout(layout)
                let output = fused
                    ? x.groupNormSiLU(groupCount: 4, weight: leaves[1], bias: leaves[2])
                    : x.groupNorm(groupCount: 4, weight: leaves[1], bias: leaves[2]).silu()
                (output * upstream).sum().backward()
                return leaves.map { $0.grad! }
            }
            for (index, (fused, separate)) in zip(gradients(fused: true), gradients(fused: false)).enumerated() {
                assertClose(fused, separate, relative: 1e-5, absolute: 1e-5, "\(shape) \(layout) gradient \(index)")
            }
        }
    }
}
