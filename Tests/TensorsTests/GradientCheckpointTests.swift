import Foundation
@testable import Tensors
import TestSupport
import XCTest

/// `checkpoint(_:parameters:_:)`: the same gradients as the plain graph (exactly where the
/// recomputation runs the same kernels), a finite-difference check through it, dropout
/// replayed, and less memory held for backward.
final class GradientCheckpointTests: XCTestCase {
    private func random(_ shape: [Int], seed: UInt64, scale: Float = 1) -> Tensor {
        var generator = RandomGenerator(seed: seed)
        return Tensor.randn(shape, generator: &generator) * scale
    }

    private func leaf(_ tensor: Tensor) -> Tensor {
        let result = tensor.contiguousCopy()
        result.requiresGrad = true
        return result
    }

    /// A small multilayer perceptron block: `x + W2 · silu(W1 · x + b1)`.
    private struct Block {
        let first: Tensor, bias: Tensor, second: Tensor
        init(width: Int, seed: UInt64, leafs make: (Tensor) -> Tensor) {
            var generator = RandomGenerator(seed: seed)
            first = make(Tensor.randn([width * 2, width], generator: &generator) * 0.3)
            bias = make(Tensor.randn([width * 2], generator: &generator) * 0.1)
            second = make(Tensor.randn([width, width * 2], generator: &generator) * 0.3)
        }
        var parameters: [Tensor] { [first, bias, second] }
        func callAsFunction(_ input: Tensor) -> Tensor {
            input + input.linear(weight: first, bias: bias).silu().linear(weight: second, bias: nil)
        }
    }

    private func maximumDifference(_ lhs: Tensor?, _ rhs: Tensor?) -> Float {
        guard let lhs, let rhs else { XCTFail("missing gradient"); return .infinity }
        XCTAssertEqual(lhs.shape, rhs.shape)
        return zip(lhs.toArray(), rhs.toArray()).map { abs($0 - $1) }.max() ?? 0
    }

    /// Runs four blocks (plain or checkpointed) and an MSE loss; returns the gradients of the input and every parameter.
    private func runBlocks(checkpointed: Bool, inputNeedsGradient: Bool = true) -> (loss: Float, gradients: [Tensor?]) {
        let blocks = (0..<4).map { Block(width: 24, seed: UInt64(10 * $0 + 1), leafs: leaf) }
        let input = random([6, 24], seed: 99)
        input.requiresGrad = inputNeedsGradient
        var hidden = input
        for block in blocks {
            hidden = checkpointed ? checkpoint([hidden], parameters: block.parameters) { block($0[0]) } : block(hidden)
        }
        let loss = Tensor.mseLoss(hidden.tanh(), random([6, 24], seed: 98))
        loss.backward()
        return (loss.item, [input.grad] + blocks.flatMap(\.parameters).map(\.grad))
    }

    func testGradientsEqualThePlainGraphExactly() {
        let plain = runBlocks(checkpointed: false), checkpointed = runBlocks(checkpointed: true)
        XCTAssertEqual(plain.loss, checkpointed.loss)
        XCTAssertEqual(plain.gradients.count, 13)
        for (index, (lhs, rhs)) in zip(plain.gradients, checkpointed.gradients).enumerated() {
            XCTAssertNotNil(rhs, "gradient \(index)")
            XCTAssertEqual(lhs?.toArray(), rhs?.toArray(), "gradient \(index) differs by \(maximumDifference(lhs, rhs))")
        }
    }

    func testParametersGetGradientsWhenTheInputNeedsNone() {
        let plain = runBlocks(checkpointed: false, inputNeedsGradient: false)
        let checkpointed = runBlocks(checkpointed: true, inputNeedsGradient: false)
        XCTAssertNil(checkpointed.gradients[0])
        for (lhs, rhs) in zip(plain.gradients.dropFirst(), checkpointed.gradients.dropFirst()) {
            XCTAssertNotNil(rhs)
            XCTAssertEqual(lhs?.toArray(), rhs?.toArray())
        }
    }

    func testConvolutionBlockMatchesThePlainGraph() {
        // A resnet-like block: x + conv(silu(groupNorm(conv(x)))), channels-last kernels included.
        let weights = [leaf(random([8, 8, 3, 3], seed: 3, scale: 0.2)), leaf(random([8, 8, 3, 3], seed: 4, scale: 0.2))]
        let scale = leaf(random([8], seed: 5, scale: 0.1) + 1), shift = leaf(random([8], seed: 6, scale: 0.1))
        let parameters = weights + [scale, shift]
        func block(_ x: Tensor) -> Tensor {
            x + x.conv2d(weight: weights[0], padding: 1).groupNorm(groupCount: 4, weight: scale, bias: shift).silu()
                .conv2d(weight: weights[1], padding: 1)
        }
        func run(_ checkpointed: Bool) -> [Tensor?] {
            parameters.forEach { $0.grad = nil }
            let input = leaf(random([2, 8, 6, 6], seed: 7))
            let output = checkpointed ? checkpoint([input], parameters: parameters) { block($0[0]) } : block(input)
            (output * random([2, 8, 6, 6], seed: 8)).sum().backward()
            return [input.grad] + parameters.map(\.grad)
        }
        let plain = run(false), checkpointed = run(true)
        for (index, (lhs, rhs)) in zip(plain, checkpointed).enumerated() {
            let size = lhs?.toArray().map(abs).max() ?? 0
            // The first run is not recorded, so a kernel may take its inference path: equal up to float rounding.
            XCTAssertLessThanOrEqual(maximumDifference(lhs, rhs), 1e-5 * max(1, size), "gradient \(index)")
        }
    }

    func testFiniteDifferencesThroughACheckpoint() {
        let weight = random([5, 4], seed: 21, scale: 0.5)
        GradientCheck.check([random([3, 4], seed: 22), weight]) { x in
            checkpoint([x[0]], parameters: [x[1]]) { inner in inner[0].linear(weight: x[1], bias: nil).tanh() * inner[0].sum() }
        }
        // Nested checkpoints, and an input used twice.
        GradientCheck.check([random([3, 4], seed: 23)]) { x in
            checkpoint([x[0], x[0]], parameters: []) { outer in
                checkpoint([outer[0]], parameters: []) { $0[0].sigmoid() } * outer[1].exp()
            }
        }
    }

    func testFunctionalGradientsSeeTheCheckpointedParameters() {
        let block = Block(width: 8, seed: 31, leafs: leaf)
        let input = random([2, 8], seed: 32)
        let plain = gradients(of: block(input).square().sum(), withRespectTo: block.parameters)
        let checkpointed = gradients(of: checkpoint([input], parameters: block.parameters) { block($0[0]) }.square().sum(),
                                     withRespectTo: block.parameters)
        for (lhs, rhs) in zip(plain, checkpointed) { XCTAssertEqual(lhs.toArray(), rhs.toArray()) }
        XCTAssertTrue(block.parameters.allSatisfy { $0.grad == nil })
    }

    func testDropoutDrawsAreReplayedAndTheGeneratorAdvancesOnce() {
        final class Box { var generator = RandomGenerator(seed: 77) }
        let weight = leaf(random([16, 16], seed: 41, scale: 0.3))
        func run(_ checkpointed: Bool) -> (gradients: [Float], generator: RandomGenerator) {
            weight.grad = nil
            let box = Box()
            let input = leaf(random([4, 16], seed: 42))
            func body(_ x: Tensor) -> Tensor {
                x.linear(weight: weight, bias: nil).dropout(probability: 0.5, generator: &box.generator).silu()
                    + Tensor.randn([4, 16], generator: &box.generator)
            }
            let output = checkpointed ? checkpoint([input], parameters: [weight]) { body($0[0]) } : body(input)
            (output * output).sum().backward()
            return ((input.grad?.toArray() ?? []) + (weight.grad?.toArray() ?? []), box.generator)
        }
        let plain = run(false), checkpointed = run(true)
        XCTAssertEqual(plain.gradients.count, 4 * 16 + 16 * 16)
        XCTAssertEqual(plain.gradients, checkpointed.gradients)
        XCTAssertEqual(plain.generator, checkpointed.generator)
    }

    func testLessMemoryIsHeldForBackward() {
        // Eight blocks on [1024, 128] activations (512 KiB each, pooled sizes).
        let pool = BufferPool.shared
        let blocks = (0..<8).map { Block(width: 128, seed: UInt64(100 + 10 * $0), leafs: leaf) }
        func measure(_ checkpointed: Bool) -> (graphBytes: Int, peakBytes: Int) {
            blocks.flatMap(\.parameters).forEach { $0.grad = nil }
            let input = leaf(random([1024, 128], seed: 5))
            let target = random([1024, 128], seed: 6)
            pool.resetMeasuredPeak()
            let before = pool.requestedLiveBytes
            var hidden = input
            for block in blocks {
                hidden = checkpointed ? checkpoint([hidden], parameters: block.parameters) { block($0[0]) } : block(hidden)
            }
            let loss = Tensor.mseLoss(hidden, target)
            let graphBytes = GraphMemory.report(for: loss).reduce(0) { $0 + $1.bytes }
            loss.backward()
            XCTAssertNotNil(input.grad)
            return (graphBytes, pool.measuredPeakBytes - before)
        }
        _ = measure(false)  // warm the pool
        let plain = measure(false), checkpointed = measure(true)
        print("checkpoint memory: graph holds \(plain.graphBytes) B plain, \(checkpointed.graphBytes) B checkpointed; "
              + "pool peak over the step \(plain.peakBytes) B plain, \(checkpointed.peakBytes) B checkpointed")
        // Parameters are held by both graphs (8 × 32,768 floats); the activations only by the plain one.
        XCTAssertLessThan(Double(checkpointed.graphBytes), 0.6 * Double(plain.graphBytes))
        XCTAssertLessThan(Double(checkpointed.peakBytes), 0.6 * Double(plain.peakBytes))
    }
}
