import Foundation
import Tensors
import XCTest

/// Finite-difference gradient checks.
///
/// The loss is `Σ wᵢ · f(x)ᵢ` with fixed random weights `w`, summed in Double.
/// The numerical derivative is the central difference `(L(x+h) − L(x−h)) / 2h`,
/// computed in Double from those Double sums; the analytic one comes from
/// `backward()`. Large inputs are checked at a random sample of elements.
public enum GradientCheck {
    /// Checks d loss / d input for every input.
    ///
    /// - Parameters:
    ///   - inputs: the values at which to check (copied; the copies are leaves).
    ///   - step: the finite-difference step h.
    ///   - tolerance: allowed |analytic − numeric| ≤ tolerance · max(1, |numeric|).
    ///   - samples: the most elements checked per input.
    ///   - function: the op(s) under test.
    public static func check(
        _ inputs: [Tensor], step: Float = 1e-2, tolerance: Double = 1e-2, samples: Int = 48,
        seed: UInt64 = 7, file: StaticString = #filePath, line: UInt = #line,
        _ function: ([Tensor]) -> Tensor
    ) {
        let leaves = inputs.map { input -> Tensor in
            let leaf = input.contiguousCopy()
            leaf.requiresGrad = true
            return leaf
        }
        let output = function(leaves)
        var generator = RandomGenerator(seed: seed)
        let weights = Tensor.randn(output.shape, generator: &generator)
        let loss = (output * weights).sum()
        loss.backward()
        let weightValues = weights.toArray()

        func evaluate() -> Double {
            let values = noGrad { function(leaves) }.toArray()
            var total = 0.0
            for index in values.indices { total += Double(values[index]) * Double(weightValues[index]) }
            return total
        }

        for (inputIndex, leaf) in leaves.enumerated() {
            guard let gradient = leaf.grad?.toArray() else {
                XCTFail("input \(inputIndex): no gradient was computed", file: file, line: line)
                continue
            }
            var positions = Array(0..<leaf.count)
            if positions.count > samples {
                var picker = RandomGenerator(seed: seed &+ UInt64(inputIndex))
                positions = (0..<samples).map { _ in picker.integer(below: leaf.count) }
            }
            var worst = 0.0
            for position in positions {
                let pointer = leaf.floatPointer + position
                let original = pointer.pointee
                pointer.pointee = original + step
                let plus = evaluate()
                pointer.pointee = original - step
                let minus = evaluate()
                pointer.pointee = original
                let numeric = (plus - minus) / (2 * Double(step))
                let analytic = Double(gradient[position])
                let error = Swift.abs(analytic - numeric) / Swift.max(1, Swift.abs(numeric))
                worst = Swift.max(worst, error)
                if error > tolerance {
                    XCTFail("input \(inputIndex) element \(position): analytic \(analytic) vs numeric \(numeric)", file: file, line: line)
                    return
                }
            }
            _ = worst
        }
    }
}

/// Assertions on tensors.
public func assertClose(_ actual: Tensor, _ expected: Tensor, relative: Float = 1e-5, absolute: Float = 1e-6,
                        _ message: String = "", file: StaticString = #filePath, line: UInt = #line) {
    guard actual.shape == expected.shape else {
        XCTFail("\(message) shape \(actual.shape) != expected \(expected.shape)", file: file, line: line)
        return
    }
    assertClose(actual.toArray(), expected.toArray(), relative: relative, absolute: absolute, message, file: file, line: line)
}

public func assertClose(_ actual: [Float], _ expected: [Float], relative: Float = 1e-5, absolute: Float = 1e-6,
                        _ message: String = "", file: StaticString = #filePath, line: UInt = #line) {
    guard actual.count == expected.count else {
        XCTFail("\(message) \(actual.count) values != expected \(expected.count)", file: file, line: line)
        return
    }
    for index in actual.indices {
        let difference = Swift.abs(actual[index] - expected[index])
        if !(difference <= absolute + relative * Swift.abs(expected[index])) {
            XCTFail("\(message) element \(index): \(actual[index]) != \(expected[index]) (difference \(difference))", file: file, line: line)
            return
        }
    }
}
