@testable import Tensors
import TestSupport
import XCTest

/// `linear` (bias added inside the product) against `matmul` + `+`, forward and every gradient.
final class LinearOperationTests: XCTestCase {
    func testMatchesMatmulPlusBias() {
        var generator = RandomGenerator(seed: 21)
        // (input shape, out features): 3-d and 2-d inputs; shapes the small-operand GEMM takes and ones it leaves to BLAS.
        for (shape, outFeatures) in [([3, 50, 64], 64), ([7, 12], 16), ([2, 9, 5], 3), ([600, 24], 40)] {
            let inFeatures = shape.last!
            let x = Tensor.randn(shape, generator: &generator)
            let w = Tensor.randn([outFeatures, inFeatures], generator: &generator) * 0.3
            let b = Tensor.randn([outFeatures], generator: &generator)
            let upstream = Tensor.randn(Array(shape.dropLast()) + [outFeatures], generator: &generator)
            func run(_ body: (Tensor, Tensor, Tensor) -> Tensor) -> [Tensor] {
                let (input, weight, bias) = (x.detach(), w.detach(), b.detach())
                for tensor in [input, weight, bias] { tensor.requiresGrad = true }
                let output = body(input, weight, bias)
                output.backward(upstream)
                return [output.detach(), input.grad!, weight.grad!, bias.grad!]
            }
            let fused = run { $0.linear(weight: $1, bias: $2) }
            let reference = run { $0.matmul($1.transposed()) + $2 }
            for (index, name) in ["output", "input gradient", "weight gradient", "bias gradient"].enumerated() {
                XCTAssertEqual(fused[index].shape, reference[index].shape, "\(shape) \(name)")
                assertClose(fused[index], reference[index], relative: 1e-4, absolute: 1e-4, "\(shape) \(name)")
            }
        }
    }

    /// Without a bias (attention's projections) the same kernel runs: its weight gradient comes out in the
    /// weight's own layout, equal to `matmul` with the transposed weight's.
    func testWithoutBiasMatchesMatmul() {
        var generator = RandomGenerator(seed: 22)
        for (shape, outFeatures) in [([3, 50, 64], 64), ([2, 9, 5], 3), ([600, 24], 40)] {
            let x = Tensor.randn(shape, generator: &generator)
            let w = Tensor.randn([outFeatures, shape.last!], generator: &generator) * 0.3
            let upstream = Tensor.randn(Array(shape.dropLast()) + [outFeatures], generator: &generator)
            func run(_ body: (Tensor, Tensor) -> Tensor) -> [Tensor] {
                let (input, weight) = (x.detach(), w.detach())
                for tensor in [input, weight] { tensor.requiresGrad = true }
                let output = body(input, weight)
                output.backward(upstream)
                return [output.detach(), input.grad!, weight.grad!]
            }
            let fused = run { $0.linear(weight: $1, bias: nil) }
            let reference = run { $0.matmul($1.transposed()) }
            for (index, name) in ["output", "input gradient", "weight gradient"].enumerated() {
                XCTAssertEqual(fused[index].shape, reference[index].shape, "\(shape) \(name)")
                assertClose(fused[index], reference[index], relative: 1e-4, absolute: 1e-4, "\(shape) \(name)")
            }
            XCTAssertTrue(fused[2].isContiguous)
        }
    }

    func testOnlyRequestedGradientsAndNoBias() {
        let x = Tensor.ones([4, 8]), w = Tensor.ones([8, 8]), b = Tensor.ones([8])
        w.requiresGrad = true
        x.linear(weight: w, bias: b).sum().backward()
        XCTAssertNotNil(w.grad)
        XCTAssertNil(x.grad)
        XCTAssertNil(b.grad)
        XCTAssertEqual(x.linear(weight: w, bias: nil).toArray(), [Float](repeating: 8, count: 32))
        XCTAssertEqual(noGrad { x.linear(weight: w, bias: b) }.toArray(), [Float](repeating: 9, count: 32))
    }
}
