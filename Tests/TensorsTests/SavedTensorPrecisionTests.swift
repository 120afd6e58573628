import Foundation
import Tensors
import XCTest

/// Mixed precision: activations saved for backward in 16 bits take half the
/// memory and give gradients close to the float32 ones.
final class SavedTensorPrecisionTests: XCTestCase {
    /// conv → group norm → SiLU → conv → product → mean square, on an 8×16×16×16 batch.
    private func loss(_ input: Tensor, _ first: Tensor, _ second: Tensor) -> Tensor {
        let hidden = input.conv2d(weight: first, padding: 1).groupNorm(groupCount: 4).silu()
        let output = hidden.conv2d(weight: second, padding: 1)
        return (output * hidden.sigmoid()).square().mean()
    }

    private func run(_ dataType: DataType) -> (gradients: [[Float]], savedBytes: Int) {
        var generator = RandomGenerator(seed: 11)
        let input = Tensor.randn([8, 16, 16, 16], generator: &generator)
        let first = Tensor.randn([16, 16, 3, 3], generator: &generator) * 0.1
        let second = Tensor.randn([16, 16, 3, 3], generator: &generator) * 0.1
        first.requiresGrad = true
        second.requiresGrad = true
        input.requiresGrad = true
        let value = SavedTensorPrecision.with(dataType) { loss(input, first, second) }
        let savedBytes = GraphMemory.report(for: value).reduce(0) { $0 + $1.bytes }
        value.backward()
        return ([input.grad!.toArray(), first.grad!.toArray(), second.grad!.toArray()], savedBytes)
    }

    func testHalfPrecisionActivationsHalveTheGraphAndKeepGradientsClose() {
        let reference = run(.float32)
        for dataType in [DataType.float16, .bfloat16] {
            let result = run(dataType)
            for (computed, expected) in zip(result.gradients, reference.gradients) {
                let scale = expected.map(Swift.abs).max() ?? 1
                let error = zip(computed, expected).map { Swift.abs($0 - $1) }.max() ?? 0
                XCTAssertLessThan(error / scale, dataType == .float16 ? 2e-3 : 2e-2, "\(dataType)")
            }
            print("\(dataType): graph holds \(result.savedBytes) bytes, float32 \(reference.savedBytes)")
            XCTAssertLessThan(Double(result.savedBytes), Double(reference.savedBytes) * 0.65, "\(dataType)")
        }
        XCTAssertEqual(SavedTensorPrecision.dataType, .float32, "with() restores the setting")
    }
}
