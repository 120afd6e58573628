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
