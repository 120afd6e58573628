import Tensors
import TestSupport
import XCTest

final class NormalizationTests: XCTestCase {
    // MARK: Helpers

    /// Runs `function` on fresh leaves and returns its output and the gradients
    /// of `Σ output · upstream` for every leaf.
    private func valueAndGradients(_ inputs: [Tensor], upstream: Tensor, _ function: ([Tensor]) -> Tensor) -> (Tensor, [Tensor]) {
        let leaves = inputs.map { input -> Tensor in
            let leaf = input.contiguousCopy()
            leaf.requiresGrad = true
            return leaf
        }
        let output = function(leaves)
        (output * upstream).sum().backward()
        return (output.detach(), leaves.map { $0.grad ?? Tensor.zeros($0.shape) })
    }

    /// Compares the fused group norm with the composed reference, forward and backward.
    private func checkGroupNormAgainstReference(shape: [Int], groups: Int, affine: Bool, channelsLast: Bool,
                                                offset: Float = 0, file: StaticString = #filePath, line: UInt = #line) {
        var generator = RandomGenerator(seed: 11)
        let x = Tensor.randn(shape, generator: &generator) + offset
        let weight = Tensor.randn([shape[1]], generator: &generator)
        let bias = Tensor.randn([shape[1]], generator: &generator)
        let upstream = Tensor.randn(shape, generator: &generator)
        let inputs = affine ? [x, weight, bias] : [x]
        func prepare(_ tensor: Tensor) -> Tensor { channelsLast ? tensor.withLayout(.channelsLast) : tensor }
        let (fast, fastGradients) = valueAndGradients(inputs, upstream: upstream) { xs in
            let output = prepare(xs[0]).groupNorm(groupCount: groups, weight: affine ? xs[1] : nil, bias: affine ? xs[2] : nil)
            XCTAssertEqual(output.layout, channelsLast ? .channelsLast : .contiguous, "output layout", file: file, line: line)
            return output
        }
        let (reference, referenceGradients) = valueAndGradients(inputs, upstream: upstream) { xs in
            prepare(xs[0]).groupNormReference(groupCount: groups, weight: affine ? xs[1] : nil, bias: affine ? xs[2] : nil)
        }
        assertClose(fast, reference, relative: 1e-4, absolute: 1e-4, "forward", file: file, line: line)
        for (index, (actual, expected)) in zip(fastGradients, referenceGradients).enumerated() {
            assertClose(actual, expected, relative: 2e-3, absolute: 2e-3, "gradient \(index)", file: file, line: line)
        }
    }

    // MARK: Group norm

    func testGroupNormHandComputed() {
        let x = Tensor([1, 2, 3, 4, 10, 20, 30, 40], shape: [1, 4, 2])
        let y = x.groupNorm(groupCount: 2, weight: Tensor([1, 1, 2, 2]), bias: Tensor([0, 0, 1, 1]))
        let deviation1 = (1.25 + 1e-5 as Float).squareRoot()
        let deviation2 = (125 + 1e-5 as Float).squareRoot()
        let expected: [Float] = [-1.5 / deviation1, -0.5 / deviation1, 0.5 / deviation1, 1.5 / deviation1,
                                 1 + 2 * -15 / deviation2, 1 + 2 * -5 / deviation2, 1 + 2 * 5 / deviation2, 1 + 2 * 15 / deviation2]
        assertClose(y.toArray(), expected, relative: 1e-5, absolute: 1e-5)
    }

    func testGroupNormMatchesReferenceContiguous() {
        checkGroupNormAgainstReference(shape: [3, 12, 5, 7], groups: 4, affine: true, channelsLast: false)
        checkGroupNormAgainstReference(shape: [3, 12, 5, 7], groups: 4, affine: false, channelsLast: false)
        checkGroupNormAgainstReference(shape: [2, 10, 33], groups: 5, affine: true, channelsLast: false)
        checkGroupNormAgainstReference(shape: [4, 6], groups: 3, affine: true, channelsLast: false)
        checkGroupNormAgainstReference(shape: [2, 64, 9, 9], groups: 32, affine: true, channelsLast: false)
    }

    func testGroupNormMatchesReferenceChannelsLast() {
        checkGroupNormAgainstReference(shape: [3, 12, 5, 7], groups: 4, affine: true, channelsLast: true)
        checkGroupNormAgainstReference(shape: [3, 12, 5, 7], groups: 4, affine: false, channelsLast: true)
        checkGroupNormAgainstReference(shape: [2, 10, 4, 3], groups: 2, affine: true, channelsLast: true)
        checkGroupNormAgainstReference(shape: [2, 64, 9, 9], groups: 32, affine: true, channelsLast: true)
    }

    /// Channels-last samples split into pieces across workers (few samples, many pixels).
    func testGroupNormChannelsLastSplitAcrossThreads() {
        let saved = Parallel.threadCount
        defer { Parallel.threadCount = saved }
        for threads in [1, 2, 4] {
            Parallel.threadCount = threads
            checkGroupNormAgainstReference(shape: [1, 12, 16, 9], groups: 3, affine: true, channelsLast: true)
            checkGroupNormAgainstReference(shape: [3, 20, 16, 16], groups: 5, affine: true, channelsLast: true)
            checkGroupNormAgainstReference(shape: [1, 12, 16, 9], groups: 3, affine: true, channelsLast: false)
        }
    }

    /// A large common offset must not cancel the variance away.
    func testGroupNormLargeMeanIsStable() {
        checkGroupNormAgainstReference(shape: [2, 12, 6, 6], groups: 3, affine: true, channelsLast: false, offset: 0)
        var generator = RandomGenerator(seed: 5)
        let x = Tensor.randn([2, 12, 6, 6], generator: &generator)
        for channelsLast in [false, true] {
            let shifted = (x + 1000).withLayout(channelsLast ? .channelsLast : .contiguous)
            assertClose(shifted.groupNorm(groupCount: 3), x.groupNorm(groupCount: 3), relative: 0, absolute: 2e-3)
        }
    }

    func testGroupNormGradientsContiguous() {
        var generator = RandomGenerator(seed: 3)
        let x = Tensor.randn([2, 6, 3, 5], generator: &generator)
        let weight = Tensor.randn([6], generator: &generator)
        let bias = Tensor.randn([6], generator: &generator)
        GradientCheck.check([x, weight, bias]) { xs in xs[0].groupNorm(groupCount: 3, weight: xs[1], bias: xs[2]) }
        GradientCheck.check([x]) { xs in xs[0].groupNorm(groupCount: 2) }
        GradientCheck.check([x, bias]) { xs in xs[0].groupNorm(groupCount: 6, bias: xs[1]) }
    }

    func testGroupNormGradientsChannelsLast() {
        var generator = RandomGenerator(seed: 4)
        let x = Tensor.randn([2, 10, 4, 3], generator: &generator)
        let weight = Tensor.randn([10], generator: &generator)
        let bias = Tensor.randn([10], generator: &generator)
        GradientCheck.check([x, weight, bias]) { xs in
            xs[0].withLayout(.channelsLast).groupNorm(groupCount: 5, weight: xs[1], bias: xs[2])
        }
        GradientCheck.check([x, weight]) { xs in xs[0].withLayout(.channelsLast).groupNorm(groupCount: 2, weight: xs[1]) }
    }

    /// Only the affine parameters need gradients.
    func testGroupNormWeightGradientWithoutInputGradient() {
        var generator = RandomGenerator(seed: 8)
        let x = Tensor.randn([2, 6, 4, 4], generator: &generator)
        let weight = Tensor.randn([6], generator: &generator)
        weight.requiresGrad = true
        let bias = Tensor.randn([6], generator: &generator)
        bias.requiresGrad = true
        x.withLayout(.channelsLast).groupNorm(groupCount: 3, weight: weight, bias: bias).sum().backward()
        let expectedWeight = noGrad { x.groupNormReference(groupCount: 3).sum(axes: [0, 2, 3]) }
        assertClose(weight.grad!, expectedWeight, relative: 1e-4, absolute: 1e-4)
        assertClose(bias.grad!, Tensor.full(32, [6]), relative: 1e-5, absolute: 1e-4)
    }

    // MARK: Layer norm

    func testLayerNormHandComputed() {
        let x = Tensor([1, 2, 3, 4, -2, 0, 2, 4], shape: [2, 4])
        let y = x.layerNorm(weight: Tensor([1, 2, 1, 1]), bias: Tensor([0, 0, 0, 1]))
        let first = (1.25 + 1e-5 as Float).squareRoot(), second = (5 + 1e-5 as Float).squareRoot()
        let expected: [Float] = [-1.5 / first, 2 * -0.5 / first, 0.5 / first, 1 + 1.5 / first,
                                 -3 / second, 2 * -1 / second, 1 / second, 1 + 3 / second]
        assertClose(y.toArray(), expected, relative: 1e-5, absolute: 1e-5)
    }

    func testLayerNormMatchesReference() {
        var generator = RandomGenerator(seed: 21)
        for (shape, normalizedRank) in [([4, 7, 37], 1), ([3, 5, 6], 2), ([2, 3, 64], 1), ([300, 20], 1)] {
            let normalizedShape = Array(shape.suffix(normalizedRank))
            let x = Tensor.randn(shape, generator: &generator) + 50
            let weight = Tensor.randn(normalizedShape, generator: &generator)
            let bias = Tensor.randn(normalizedShape, generator: &generator)
            let upstream = Tensor.randn(shape, generator: &generator)
            for affine in [true, false] {
                let inputs = affine ? [x, weight, bias] : [x]
                let (fast, fastGradients) = valueAndGradients(inputs, upstream: upstream) { xs in
                    xs[0].layerNorm(normalizedRank: normalizedRank, weight: affine ? xs[1] : nil, bias: affine ? xs[2] : nil)
                }
                let (reference, referenceGradients) = valueAndGradients(inputs, upstream: upstream) { xs in
                    xs[0].layerNormReference(normalizedRank: normalizedRank, weight: affine ? xs[1] : nil, bias: affine ? xs[2] : nil)
                }
                assertClose(fast, reference, relative: 1e-4, absolute: 1e-4, "forward \(shape)")
                for (index, (actual, expected)) in zip(fastGradients, referenceGradients).enumerated() {
                    assertClose(actual, expected, relative: 2e-3, absolute: 2e-3, "gradient \(index) \(shape)")
                }
            }
        }
    }

    func testLayerNormGradients() {
        var generator = RandomGenerator(seed: 22)
        let x = Tensor.randn([3, 2, 11], generator: &generator)
        let weight = Tensor.randn([11], generator: &generator)
        let bias = Tensor.randn([11], generator: &generator)
        GradientCheck.check([x, weight, bias]) { xs in xs[0].layerNorm(weight: xs[1], bias: xs[2]) }
        GradientCheck.check([x]) { xs in xs[0].layerNorm() }
        let weight2 = Tensor.randn([2, 11], generator: &generator)
        GradientCheck.check([x, weight2]) { xs in xs[0].layerNorm(normalizedRank: 2, weight: xs[1]) }
        // A transposed (non-contiguous) input.
        GradientCheck.check([x, bias]) { xs in xs[0].transposed(0, 2).layerNorm(bias: xs[1].narrowed(axis: 0, start: 0, length: 3)) }
    }
}
