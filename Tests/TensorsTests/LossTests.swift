import Tensors
import TestSupport
import XCTest

final class LossTests: XCTestCase {
    func testMeanSquaredErrorHandComputed() {
        let prediction = Tensor([1, 2, 3])
        prediction.requiresGrad = true
        let target = Tensor([1, 0, 0])
        target.requiresGrad = true
        let loss = Tensor.mseLoss(prediction, target)
        XCTAssertEqual(loss.shape, [])
        XCTAssertEqual(loss.item, 13.0 / 3, accuracy: 1e-6)
        loss.backward()
        assertClose(prediction.grad!.toArray(), [0, 4.0 / 3, 2], relative: 1e-6)
        assertClose(target.grad!.toArray(), [0, -4.0 / 3, -2], relative: 1e-6)
    }

    func testL1HandComputed() {
        let prediction = Tensor([1, 2, -3, 0.5])
        prediction.requiresGrad = true
        let target = Tensor([1, 0, 0, 1])
        let loss = Tensor.l1Loss(prediction, target)
        XCTAssertEqual(loss.item, 5.5 / 4, accuracy: 1e-6)
        loss.backward()
        assertClose(prediction.grad!.toArray(), [0, 0.25, -0.25, -0.25], relative: 1e-6)
    }

    func testElementwiseLossesOnLargeAndMixedLayouts() {
        var generator = RandomGenerator(seed: 2)
        let prediction = Tensor.randn([4, 6, 33, 17], generator: &generator)
        let target = Tensor.randn([4, 6, 33, 17], generator: &generator)
        let a = prediction.toArray(), b = target.toArray()
        var squares = 0.0, absolutes = 0.0
        for index in a.indices {
            let difference = Double(a[index] - b[index])
            squares += difference * difference
            absolutes += Swift.abs(difference)
        }
        let channelsLast = prediction.withLayout(.channelsLast)
        XCTAssertEqual(Double(Tensor.mseLoss(prediction, target).item), squares / Double(a.count), accuracy: 1e-5)
        XCTAssertEqual(Double(Tensor.mseLoss(channelsLast, target).item), squares / Double(a.count), accuracy: 1e-5)
        XCTAssertEqual(Double(Tensor.l1Loss(channelsLast, target.withLayout(.channelsLast)).item), absolutes / Double(a.count), accuracy: 1e-5)
    }

    func testElementwiseLossGradients() {
        var generator = RandomGenerator(seed: 3)
        let prediction = Tensor.randn([3, 5, 7], generator: &generator)
        let target = Tensor.randn([3, 5, 7], generator: &generator)
        GradientCheck.check([prediction, target]) { xs in Tensor.mseLoss(xs[0], xs[1]) }
        // Keep |p − t| away from zero so the finite difference does not straddle the kink.
        let shifted = target + 0.5
        GradientCheck.check([prediction.abs() + 0.6, shifted.abs() * -1], step: 1e-3) { xs in Tensor.l1Loss(xs[0], xs[1]) }
        // A channels-last prediction against a row-major target.
        let image = Tensor.randn([2, 3, 4, 5], generator: &generator)
        let imageTarget = Tensor.randn([2, 3, 4, 5], generator: &generator)
        GradientCheck.check([image, imageTarget]) { xs in Tensor.mseLoss(xs[0].withLayout(.channelsLast), xs[1]) }
        GradientCheck.check([image, imageTarget]) { xs in Tensor.l1Loss(xs[0].withLayout(.channelsLast), xs[1].withLayout(.channelsLast)) * 0.1 }
    }

    func testCrossEntropyHandComputed() {
        let logits = Tensor([1, 2, 3, 1, 1, 1], shape: [2, 3])
        logits.requiresGrad = true
        let loss = Tensor.crossEntropy(logits: logits, targets: [2, 0])
        let first = Foundation.log(Foundation.exp(1.0) + Foundation.exp(2.0) + Foundation.exp(3.0)) - 3
        let second = Foundation.log(3.0)
        XCTAssertEqual(Double(loss.item), (first + second) / 2, accuracy: 1e-6)
        loss.backward()
        let total = Foundation.exp(1.0) + Foundation.exp(2.0) + Foundation.exp(3.0)
        let expected: [Float] = [Float(Foundation.exp(1.0) / total / 2), Float(Foundation.exp(2.0) / total / 2), Float((Foundation.exp(3.0) / total - 1) / 2),
                                 Float((1.0 / 3 - 1) / 2), Float(1.0 / 6), Float(1.0 / 6)]
        assertClose(logits.grad!.toArray(), expected, relative: 1e-5, absolute: 1e-6)
    }

    func testCrossEntropyMatchesComposedAndGradients() {
        var generator = RandomGenerator(seed: 4)
        let logits = Tensor.randn([6, 11], generator: &generator) * 3
        let targets = [0, 10, 3, 3, 7, 1]
        let composed = noGrad {
            let picked = logits.logSoftmax(axis: 1).gather(axis: 1, index: Tensor(targets.map(Float.init), shape: [6, 1]))
            return -picked.mean()
        }
        XCTAssertEqual(Tensor.crossEntropy(logits: logits, targets: targets).item, composed.item, accuracy: 1e-5)
        GradientCheck.check([logits]) { xs in Tensor.crossEntropy(logits: xs[0], targets: targets) }
        GradientCheck.check([logits]) { xs in Tensor.crossEntropy(logits: xs[0].transposed().contiguous().transposed(), targets: targets) * 3 }
    }

    func testDropout() {
        var generator = RandomGenerator(seed: 5)
        let input = Tensor.ones([100, 100])
        input.requiresGrad = true
        let output = input.dropout(probability: 0.3, generator: &generator)
        let values = output.toArray()
        let zeros = values.filter { $0 == 0 }.count
        XCTAssertEqual(Double(zeros) / 10_000, 0.3, accuracy: 0.02)
        for value in values where value != 0 { XCTAssertEqual(value, 1 / 0.7, accuracy: 1e-6) }
        output.sum().backward()
        XCTAssertEqual(input.grad!.toArray(), values)

        // The same seed gives the same mask; the generator advances.
        var again = RandomGenerator(seed: 5)
        XCTAssertEqual(input.dropout(probability: 0.3, generator: &again).toArray(), values)
        XCTAssertNotEqual(input.dropout(probability: 0.3, generator: &again).toArray(), values)
    }

    func testDropoutIdentityCases() {
        var generator = RandomGenerator(seed: 6)
        let input = Tensor.randn([4, 5], generator: &generator)
        let before = generator
        XCTAssertTrue(input.dropout(probability: 0.5, training: false, generator: &generator) === input)
        XCTAssertTrue(input.dropout(probability: 0, generator: &generator) === input)
        XCTAssertEqual(generator, before)
    }
}
