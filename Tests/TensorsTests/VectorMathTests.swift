import Foundation
@testable import Tensors
import XCTest

/// The vector sigmoid (exp, then a reciprocal estimate refined by one Newton step) against
/// the plain division and against Foundation's exp in Double.
final class VectorMathTests: XCTestCase {
    private func lanes(_ values: [Float]) -> [SIMD8<Float>] {
        stride(from: 0, to: values.count, by: 8).map { start in
            var vector = SIMD8<Float>()
            for lane in 0..<8 where start + lane < values.count { vector[lane] = values[start + lane] }
            return vector
        }
    }

    func testSigmoidMatchesTheDivisionAndDouble() {
        // −100…100 in small steps, plus the edges of exp's range.
        var values = stride(from: Float(-100), through: 100, by: 0.0371).map { $0 }
        values += [-88.5, -88, -87.5, -87, 0, -0.0, 1e-8, -1e-8, 87, 88, 89, 1e30, -1e30, .infinity, -.infinity]
        var worst: Float = 0
        for vector in lanes(values) {
            let fast = VectorMath.sigmoid(vector), reference = VectorMath.sigmoidReference(vector)
            for lane in 0..<8 {
                let x = vector[lane]
                let exact = Float(1 / (1 + Foundation.exp(-Double(x))))
                XCTAssertFalse(fast[lane].isNaN, "sigmoid(\(x)) is NaN")
                XCTAssert(fast[lane] >= 0 && fast[lane] <= 1, "sigmoid(\(x)) = \(fast[lane])")
                // Relative to the value where it is a normal float, absolute below.
                let scale = Swift.max(abs(exact), 1e-30)
                worst = Swift.max(worst, abs(fast[lane] - exact) / scale)
                XCTAssertEqual(fast[lane], reference[lane], accuracy: Swift.max(3e-7 * abs(reference[lane]), 1e-37), "x = \(x)")
            }
        }
        XCTAssertLessThan(worst, 4e-7, "largest relative error against Double")
    }

    func testSigmoidKeepsNaN() {
        let result = VectorMath.sigmoid(SIMD8<Float>(.nan, 1, 2, 3, 4, 5, 6, 7))
        XCTAssertTrue(result[0].isNaN)
        XCTAssertEqual(result[1], Float(1 / (1 + Foundation.exp(-1.0))), accuracy: 1e-7)
    }
}

/// The vector exact GELU and its derivative against the error function in Double.
final class VectorGELUTests: XCTestCase {
    func testExactGELUAndDerivativeMatchDouble() {
        var values = stride(from: Float(-30), through: 30, by: 0.00731).map { $0 }
        values += [0, -0.0, 1e-8, -1e-8, 1e30, -1e30, .infinity, 13.5, -13.5, -7.07, 7.07]
        // GELU's relative error over all x, and over x ≥ −3 (in the far negative tail exp(−x²/2) is
        // computed from a float32 x², whose rounding alone is about x²·6·10⁻⁸ relative).
        var worstValue: Double = 0, worstNearValue: Double = 0, worstDerivative: Double = 0
        for start in stride(from: 0, to: values.count, by: 8) {
            var vector = SIMD8<Float>()
            for lane in 0..<8 where start + lane < values.count { vector[lane] = values[start + lane] }
            let gelu = VectorMath.geluExact(vector), derivative = VectorMath.geluExactDerivative(vector)
            for lane in 0..<8 {
                let x = Double(vector[lane])
                let cdf = 0.5 * Foundation.erfc(-x / 2.0.squareRoot())
                let exact = x * cdf
                let exactDerivative = cdf + (x.isInfinite ? 0 : x * Foundation.exp(-0.5 * x * x) / (2 * Double.pi).squareRoot())
                // Relative error where the value is a normal float, absolute below.
                if exact.isFinite {
                    let error = Swift.abs(Double(gelu[lane]) - exact) / Swift.max(Swift.abs(exact), 1e-30)
                    worstValue = Swift.max(worstValue, error)
                    if x >= -3 { worstNearValue = Swift.max(worstNearValue, error) }
                } else {
                    XCTAssertEqual(Double(gelu[lane]), exact, "GELU(\(x))")
                }
                // The derivative is bounded (−0.13…1.13) and crosses zero at x ≈ −0.75: absolute error.
                worstDerivative = Swift.max(worstDerivative, Swift.abs(Double(derivative[lane]) - exactDerivative))
            }
        }
        // Measured 2026-12-06: 1.25e-5 relative over −30…30 (the tail), 8.0e-7 for x ≥ −3.
        XCTAssertLessThan(worstValue, 3e-5, "largest relative error of GELU against Double")
        XCTAssertLessThan(worstNearValue, 2e-6, "largest relative error of GELU against Double for x ≥ −3")
        XCTAssertLessThan(worstDerivative, 1e-6, "largest absolute error of GELU' against Double")
        print("GELU relative error: \(worstValue) (x ≥ −3: \(worstNearValue)); derivative absolute error \(worstDerivative)")
    }

    func testExactGELUKeepsNaNAndMatchesTheReferenceKernel() {
        XCTAssertTrue(VectorMath.geluExact(SIMD8<Float>(repeating: .nan))[0].isNaN)
        // The tensor op (vector body and scalar tail) against the plain reference, values and gradients.
        var generator = RandomGenerator(seed: 5)
        let input = Tensor.randn([1003], generator: &generator) * 4
        input.requiresGrad = true
        let output = input.gelu()
        output.sum().backward()
        let values = input.toArray(), results = output.toArray(), gradients = input.grad!.toArray()
        for index in values.indices {
            let x = values[index]
            let value = PointwiseReference.value(.geluExact, x), slope = PointwiseReference.derivative(.geluExact, x, value)
            XCTAssertEqual(results[index], value, accuracy: 1e-6 * Swift.max(1, Swift.abs(value)), "GELU(\(x))")
            XCTAssertEqual(gradients[index], slope, accuracy: 1e-6 * Swift.max(1, Swift.abs(slope)), "GELU'(\(x))")
        }
    }
}
