import Foundation
import Tensors
import XCTest

/// The bfloat16 inference path of `linear` (oneDNN, AVX512-BF16) against a
/// float64 product of the same bfloat16-rounded inputs: equal to float32
/// accumulation's rounding. Runs only where the CPU has AVX512-BF16 (it says so otherwise).
final class BFloat16LinearTests: XCTestCase {
    override func setUpWithError() throws {
        guard CPUFeatures.hasAVX512BF16 else {
            print("BFloat16LinearTests: skipped, this CPU (\(CPUFeatures.modelName)) has no AVX512-BF16")
            throw XCTSkip("no AVX512-BF16 on this CPU")
        }
        print("BFloat16LinearTests: running on \(CPUFeatures.modelName) (\(CPUFeatures.summary))")
    }

    override func tearDown() {
        ComputeMode.precision = .float32
    }

    static func bfloat16(_ values: [Float]) -> [Double] {
        values.map { Double(HalfPrecision.float(fromBFloat16: HalfPrecision.bfloat16Bits($0))) }
    }

    /// x · Wᵀ + b in float64 from bfloat16-rounded x and W (the bias stays float32, as oneDNN adds it).
    static func reference(_ input: Tensor, _ weight: Tensor, _ bias: Tensor?) -> (values: [Double], scale: [Double]) {
        let (n, k) = (weight.shape[0], weight.shape[1])
        let rows = input.count / k
        let x = bfloat16(input.toArray()), w = bfloat16(weight.toArray()), b = bias?.toArray() ?? []
        var values = [Double](repeating: 0, count: rows * n), scale = values
        for row in 0..<rows {
            for column in 0..<n {
                var sum = b.isEmpty ? 0 : Double(b[column]), magnitude = 0.0
                for index in 0..<k {
                    sum += x[row * k + index] * w[column * k + index]
                    magnitude += abs(x[row * k + index] * w[column * k + index])
                }
                values[row * n + column] = sum
                scale[row * n + column] = magnitude
            }
        }
        return (values, scale)
    }

    func testProductsMatchTheRoundedInputs() {
        var generator = RandomGenerator(seed: 3)
        for (shape, outFeatures, withBias) in [([2, 77, 64], 96, true), ([13, 40], 7, false), ([154, 768], 320, true), ([1, 5], 3, true)] {
            let input = Tensor.randn(shape, generator: &generator)
            let weight = Tensor.randn([outFeatures, shape.last!], generator: &generator) * 0.1
            let bias = withBias ? Tensor.randn([outFeatures], generator: &generator) : nil
            ComputeMode.precision = .bfloat16
            XCTAssertEqual(ComputeMode.precision, .bfloat16)
            let fast = noGrad { input.linear(weight: weight, bias: bias) }
            ComputeMode.precision = .float32
            let exact = noGrad { input.linear(weight: weight, bias: bias) }
            XCTAssertEqual(fast.shape, Array(shape.dropLast()) + [outFeatures])
            let (values, scale) = Self.reference(input, weight, bias)
            var worst = 0.0, bfloatEffect = 0.0
            for (index, value) in fast.toArray().enumerated() {
                // float32 accumulation of k products: a few ulps of the sum of magnitudes.
                worst = max(worst, abs(Double(value) - values[index]) / (scale[index] + 1e-30))
                bfloatEffect = max(bfloatEffect, abs(Double(exact.toArray()[index]) - values[index]) / (scale[index] + 1e-30))
            }
            XCTAssertLessThan(worst, 1e-5, "shape \(shape) → \(outFeatures)")
            // The rounding to bfloat16 is visible against float32 (so the test would notice a float32 fallback).
            XCTAssertGreaterThan(bfloatEffect, 1e-4, "shape \(shape) → \(outFeatures)")
        }
    }

    /// New weight values are used after `copyValues`; a recorded graph runs in float32.
    func testWeightChangesAndGradientsStayFloat32() {
        var generator = RandomGenerator(seed: 4)
        let input = Tensor.randn([4, 32], generator: &generator)
        let weight = Tensor.randn([8, 32], generator: &generator)
        ComputeMode.precision = .bfloat16
        let before = noGrad { input.linear(weight: weight, bias: nil) }.toArray()
        weight.copyValues(from: weight * 2)
        let after = noGrad { input.linear(weight: weight, bias: nil) }.toArray()
        for (old, new) in zip(before, after) { XCTAssertEqual(new, old * 2, accuracy: 1e-4 * max(1, abs(old))) }

        let leaf = input.detach()
        leaf.requiresGrad = true
        let recorded = leaf.linear(weight: weight, bias: nil)
        ComputeMode.precision = .float32
        let float32 = noGrad { input.linear(weight: weight, bias: nil) }
        XCTAssertEqual(recorded.toArray(), float32.toArray())
    }

    /// Pieces running at once on the pool's workers give the same product every time
    /// (they raced on a shared oneDNN primitive once; that wrote garbage into some rows).
    func testRepeatedProductsAreIdentical() {
        var generator = RandomGenerator(seed: 5)
        let input = Tensor.randn([154, 768], generator: &generator)
        let weight = Tensor.randn([320, 768], generator: &generator) * 0.1
        let bias = Tensor.randn([320], generator: &generator)
        ComputeMode.precision = .bfloat16
        let first = noGrad { input.linear(weight: weight, bias: bias) }.toArray()
        for _ in 0..<30 {
            // Keep the workers spinning, so the next product's pieces run at the same time.
            Parallel.forEach(1 << 16, grain: 1) { range in _ = range.reduce(0, &+) }
            let again = noGrad { input.linear(weight: weight, bias: bias) }.toArray()
            let difference = zip(again, first).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
            XCTAssertEqual(difference, 0, "a repeated product differs by up to \(difference)")
        }
    }
}
