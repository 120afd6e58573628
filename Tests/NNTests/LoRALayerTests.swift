import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// `LoRAAdapter` on a `Linear`: the forward formula, gradients by finite differences,
/// fusing into float32 and 16-bit weights, and a state dict that stays the base model's.
final class LoRALayerTests: XCTestCase {
    func randomTensor(_ shape: [Int], seed: UInt64, scale: Float = 1) -> Tensor {
        var generator = RandomGenerator(seed: seed)
        return Tensor.randn(shape, generator: &generator) * scale
    }

    /// `x Wᵀ + b + scale · alpha/rank · x Aᵀ Bᵀ`, in Double loops.
    func reference(input: Tensor, linear: Linear, down: Tensor, up: Tensor, factor: Double) -> [Double] {
        let (x, w, b, a, u) = (input.toArray(), linear.weight.toArray(), linear.bias!.toArray(), down.toArray(), up.toArray())
        let (rows, inner, outer, rank) = (input.count / linear.inFeatures, linear.inFeatures, linear.outFeatures, down.shape[0])
        var result = [Double](repeating: 0, count: rows * outer)
        for row in 0..<rows {
            var low = [Double](repeating: 0, count: rank)
            for r in 0..<rank { for i in 0..<inner { low[r] += Double(a[r * inner + i]) * Double(x[row * inner + i]) } }
            for o in 0..<outer {
                var sum = Double(b[o])
                for i in 0..<inner { sum += Double(w[o * inner + i]) * Double(x[row * inner + i]) }
                for r in 0..<rank { sum += factor * Double(u[o * rank + r]) * low[r] }
                result[row * outer + o] = sum
            }
        }
        return result
    }

    func maximumDifference(_ lhs: [Float], _ rhs: [Double]) -> Double {
        zip(lhs, rhs).map { abs(Double($0) - $1) }.max() ?? 0
    }

    func testForwardMatchesFormula() {
        let linear = Linear(6, 5)
        let down = randomTensor([3, 6], seed: 1), up = randomTensor([5, 3], seed: 2)
        linear.attachLoRA(LoRAAdapter(down: down, up: up, alpha: 6, scale: 0.5))
        let input = randomTensor([2, 4, 6], seed: 3)
        let output = noGrad { linear(input) }
        XCTAssertEqual(output.shape, [2, 4, 5])
        let expected = reference(input: input, linear: linear, down: down, up: up, factor: 0.5 * 6 / 3)
        XCTAssertLessThan(maximumDifference(output.toArray(), expected), 1e-5)
        // Scale 0 is the base layer.
        linear.loraAdapters[0].scale = 0
        XCTAssertLessThan(maximumDifference(noGrad { linear(input) }.toArray(), reference(input: input, linear: linear, down: down, up: up, factor: 0)), 1e-6)
    }

    func testNewAdapterStartsAsIdentityAndIsTrainable() {
        Initialization.seed(5)
        let linear = Linear(16, 8)
        linear.freeze()
        let adapter = LoRAAdapter(inFeatures: 16, outFeatures: 8, rank: 4, alpha: 8)
        XCTAssertEqual(adapter.down.shape, [4, 16])
        XCTAssertEqual(adapter.up.shape, [8, 4])
        XCTAssertTrue(adapter.up.toArray().allSatisfy { $0 == 0 })
        let bound: Float = 1 / 4   // Kaiming-uniform with a = √5: 1 / √in.
        XCTAssertTrue(adapter.down.toArray().allSatisfy { abs($0) <= bound })
        XCTAssertGreaterThan(adapter.down.toArray().map(abs).max()!, 0.8 * bound)
        XCTAssertEqual(adapter.effectiveScale, 2)
        let input = randomTensor([3, 16], seed: 6)
        let before = noGrad { linear(input) }.toArray()
        linear.attachLoRA(adapter)
        XCTAssertEqual(noGrad { linear(input) }.toArray(), before)
        XCTAssertEqual(adapter.namedParameters().map(\.name), ["lora_A.weight", "lora_B.weight"])
        XCTAssertEqual(adapter.trainableParameters().count, 2)
        // The adapter is not part of the base layer's state dict, and only the adapter trains.
        XCTAssertEqual(linear.namedParameters().map(\.name), ["weight", "bias"])
        XCTAssertTrue(linear.trainableParameters().isEmpty)
        let loss = linear(input).square().sum()
        loss.backward()
        XCTAssertNil(linear.weight.grad)
        XCTAssertNotNil(adapter.up.grad)
        XCTAssertTrue(adapter.down.grad.map { $0.toArray().allSatisfy { $0 == 0 } } ?? true, "B = 0 gives A no gradient")
    }

    /// d loss / d (input, A, B) by central differences, with the base frozen.
    func testGradientsByFiniteDifferences() {
        Initialization.seed(9)
        let linear = Linear(5, 4)
        linear.freeze()
        let input = randomTensor([3, 5], seed: 10), down = randomTensor([2, 5], seed: 11), up = randomTensor([4, 2], seed: 12)
        GradientCheck.check([input, down, up], step: 1e-2, tolerance: 1e-2) { values in
            let layer = Linear(5, 4)
            layer.weight.copyValues(from: linear.weight)
            layer.bias!.copyValues(from: linear.bias!)
            layer.freeze()
            layer.attachLoRA(LoRAAdapter(down: values[1], up: values[2], alpha: 3, scale: 0.7))
            return layer(values[0])
        }
    }

    func testFusedEqualsUnfusedAndUnfuseRestores() {
        let linear = Linear(12, 10)
        linear.freeze()
        let original = linear.weight.toArray()
        linear.attachLoRA(LoRAAdapter(down: randomTensor([4, 12], seed: 20), up: randomTensor([10, 4], seed: 21), alpha: 8, scale: 0.8, name: "first"))
        linear.attachLoRA(LoRAAdapter(down: randomTensor([2, 12], seed: 22), up: randomTensor([10, 2], seed: 23), alpha: 1, scale: 1.5, name: "second"))
        let input = randomTensor([5, 12], seed: 24)
        let unfused = noGrad { linear(input) }.toArray()
        linear.fuseLoRA()
        XCTAssertTrue(linear.loraAdapters.allSatisfy(\.isFused))
        let fused = noGrad { linear(input) }.toArray()
        let scaleOfOutput = unfused.map(abs).max()!
        XCTAssertLessThan(zip(fused, unfused).map { abs($0 - $1) }.max()! / scaleOfOutput, 1e-5)
        XCTAssertNotEqual(linear.weight.toArray(), original)
        linear.unfuseLoRA(named: "second")
        XCTAssertEqual(linear.loraAdapters.map(\.isFused), [true, false])
        XCTAssertLessThan(zip(noGrad { linear(input) }.toArray(), unfused).map { abs($0 - $1) }.max()! / scaleOfOutput, 1e-5)
        linear.detachLoRA()
        XCTAssertTrue(linear.loraAdapters.isEmpty)
        XCTAssertLessThan(zip(linear.weight.toArray(), original).map { abs($0 - $1) }.max()!, 1e-5)
    }

    /// A bfloat16 base: the unfused adapter adds to the widened weight's output; fusing keeps the
    /// weight in bfloat16, so the fused output differs only by the rounding of W + ΔW.
    func testBFloat16BaseWeight() {
        let linear = Linear(32, 16)
        linear.freeze()
        linear.weight.convertStorage(to: .bfloat16)
        let down = randomTensor([4, 32], seed: 30, scale: 0.2), up = randomTensor([16, 4], seed: 31, scale: 0.2)
        linear.attachLoRA(LoRAAdapter(down: down, up: up, alpha: 4))
        let input = randomTensor([6, 32], seed: 32)
        let unfused = noGrad { linear(input) }
        let widened = Linear(32, 16)
        widened.weight.copyValues(from: linear.weight.converted(to: .float32))
        widened.bias!.copyValues(from: linear.bias!)
        let expected = reference(input: input, linear: widened, down: down, up: up, factor: 1)
        XCTAssertLessThan(maximumDifference(unfused.toArray(), expected), 1e-4)
        linear.fuseLoRA()
        XCTAssertEqual(linear.weight.dataType, .bfloat16)
        let fused = noGrad { linear(input) }.toArray()
        let scaleOfOutput = expected.map(abs).max()!
        XCTAssertLessThan(maximumDifference(fused, expected) / scaleOfOutput, 2e-2)
        XCTAssertGreaterThan(maximumDifference(fused, expected), 0, "bfloat16 rounding of the fused weight is visible")
    }
}
