import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// Optimizers, LR schedules and EMA against PyTorch/diffusers goldens
/// (Tests/Fixtures/nn, from Scripts/make-nn-goldens).
final class OptimizerParityTests: XCTestCase {
    private func golden(_ name: String) throws -> [String: Any] {
        let url = SafetensorsFixture.directory.deletingLastPathComponent().appendingPathComponent("nn").appendingPathComponent(name)
        return try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
    }

    private func tensor(_ object: [String: Any], _ key: String) -> Tensor {
        let values = (object[key] as! [Double]).map { Float($0) }
        let shape = object[key + "_shape"] as! [Int]
        return Tensor(values, shape: shape)
    }

    func testTwentyStepsMatchPyTorchTrajectories() throws {
        let data = try golden("optimizers.json")
        let x = tensor(data, "x"), y = tensor(data, "y")
        let runs = data["runs"] as! [String: [String: Any]]
        XCTAssertEqual(Set(runs.keys), ["sgd_momentum", "sgd_nesterov", "adam_l2_clip", "adamw_clip"])
        for (name, run) in runs.sorted(by: { $0.key < $1.key }) {
            let weight = tensor(data, "weight").contiguousCopy(), bias = tensor(data, "bias").contiguousCopy()
            weight.requiresGrad = true
            bias.requiresGrad = true
            let parameters = [weight, bias]
            let optimizer: Optimizer
            switch name {
            case "sgd_momentum": optimizer = SGD(parameters: parameters, learningRate: 0.05, momentum: 0.9, weightDecay: 0.01)
            case "sgd_nesterov": optimizer = SGD(parameters: parameters, learningRate: 0.05, momentum: 0.8, nesterov: true)
            case "adam_l2_clip": optimizer = Adam(parameters: parameters, learningRate: 0.02, beta1: 0.9, beta2: 0.99, epsilon: 1e-6, weightDecay: 0.01)
            default: optimizer = Adam.adamW(parameters: parameters, learningRate: 0.03, weightDecay: 0.1)
            }
            let clip = run["clip"] as? Double
            for (index, expected) in (run["steps"] as! [[String: Any]]).enumerated() {
                optimizer.zeroGradients()
                let loss = (x.matmul(weight) + bias - y).pow(2).mean()
                loss.backward()
                if let clip {
                    let norm = clipGradientNorm(parameters, maximumNorm: Float(clip))
                    XCTAssertEqual(norm, Float(expected["grad_norm"] as! Double), accuracy: 1e-5 * Swift.max(1, norm), "\(name) step \(index + 1) norm")
                }
                optimizer.step()
                XCTAssertEqual(loss.item, Float(expected["loss"] as! Double), accuracy: 1e-5, "\(name) step \(index + 1) loss")
                assertClose(weight.toArray(), (expected["weight"] as! [Double]).map { Float($0) }, relative: 1e-5, absolute: 1e-6, "\(name) step \(index + 1) weight")
                assertClose(bias.toArray(), (expected["bias"] as! [Double]).map { Float($0) }, relative: 1e-5, absolute: 1e-6, "\(name) step \(index + 1) bias")
            }
        }
    }

    /// The vectorised update against PyTorch's AdamW / Adam formulas one element at a
    /// time, on a parameter long enough to be split over the workers with a short last group.
    func testVectorisedAdamMatchesElementwiseFormula() {
        var generator = RandomGenerator(seed: 7)
        let count = 70_003
        let start = Tensor.randn([count], generator: &generator).toArray()
        let gradients = (0..<3).map { _ in Tensor.randn([count], generator: &generator).toArray() }
        for decoupled in [true, false] {
            let parameter = Tensor(start, shape: [count])
            parameter.requiresGrad = true
            let (learningRate, beta1, beta2, epsilon, decay): (Float, Float, Float, Float, Float) = (0.01, 0.9, 0.999, 1e-8, 0.05)
            let optimizer = Adam(parameters: [parameter], learningRate: learningRate, beta1: beta1, beta2: beta2, epsilon: epsilon,
                                 weightDecay: decay, decoupledWeightDecay: decoupled)
            var (values, m, v) = (start, [Float](repeating: 0, count: count), [Float](repeating: 0, count: count))
            for (index, gradient) in gradients.enumerated() {
                parameter.grad = Tensor(gradient, shape: [count])
                optimizer.step()
                let step = Double(index + 1)
                let stepSize = Float(Double(learningRate) / (1 - Foundation.pow(Double(beta1), step)))
                let correction = Float((1 - Foundation.pow(Double(beta2), step)).squareRoot())
                for element in 0..<count {
                    var g = gradient[element]
                    if decoupled { values[element] *= 1 - learningRate * decay } else { g += decay * values[element] }
                    m[element] += (g - m[element]) * (1 - beta1)
                    v[element] = beta2 * v[element] + (1 - beta2) * g * g
                    values[element] -= stepSize * m[element] / (v[element].squareRoot() / correction + epsilon)
                }
            }
            XCTAssertEqual(parameter.toArray(), values, "decoupled: \(decoupled)")
        }
    }

    func testOptimizerStateRoundTrip() throws {
        let weight = Tensor([1, -2, 3])
        weight.requiresGrad = true
        func run(_ optimizer: Adam, steps: Int) {
            for _ in 0..<steps {
                optimizer.zeroGradients()
                (weight * weight * Tensor([1, 2, 3])).sum().backward()
                optimizer.step()
            }
        }
        let first = Adam.adamW(parameters: [weight], learningRate: 0.1)
        run(first, steps: 3)
        let saved = first.state.mapValues { $0.contiguousCopy() }
        let savedWeight = weight.contiguousCopy()
        run(first, steps: 2)
        let expected = weight.toArray()
        weight.copyValues(from: savedWeight)
        let second = Adam.adamW(parameters: [weight], learningRate: 0.1)
        try second.load(state: saved)
        XCTAssertEqual(second.stepCount, 3)
        run(second, steps: 2)
        XCTAssertEqual(weight.toArray(), expected)
    }

    func testLearningRateSchedulesMatchDiffusers() throws {
        let data = try golden("lr_schedules.json")
        let base = Float(data["base_lr"] as! Double)
        let schedules = data["schedules"] as! [String: [String: Any]]
        XCTAssertEqual(Set(schedules.keys), Set(LearningRateSchedule.Kind.allCases.map(\.rawValue)))
        for (name, entry) in schedules {
            let kind = LearningRateSchedule.Kind(rawValue: name)!
            let schedule = LearningRateSchedule(kind, warmupSteps: data["warmup"] as! Int, trainingSteps: data["total"] as! Int,
                                                cycles: (entry["cycles"] as? Int).map(Double.init))
            for (step, expected) in (entry["lr"] as! [Double]).enumerated() {
                XCTAssertEqual(Double(schedule.learningRate(step: step, baseLearningRate: base)), expected, accuracy: 1e-9 + 1e-6 * expected, "\(name) step \(step)")
            }
        }
    }

    func testEMAMatchesDiffusersEMAModel() throws {
        let data = try golden("ema.json")
        let start = (data["start"] as! [Double]).map { Float($0) }
        let frozenStart = (data["frozen_start"] as! [Double]).map { Float($0) }
        let updates = (data["updates"] as! [[Double]]).map { $0.map { Float($0) } }
        for (name, run) in data["runs"] as! [String: [String: Any]] {
            let config = run["config"] as! [String: Any]
            let trained = Tensor(start)
            trained.requiresGrad = true
            let frozen = Tensor(frozenStart)
            let ema = ExponentialMovingAverage(
                parameters: [trained, frozen], maximumDecay: config["decay"] as? Double ?? 0.9999,
                minimumDecay: config["min_decay"] as? Double ?? 0, updateAfterStep: config["update_after_step"] as? Int ?? 0,
                useWarmup: config["use_ema_warmup"] as? Bool ?? false, inverseGamma: config["inv_gamma"] as? Double ?? 1,
                power: config["power"] as? Double ?? 2.0 / 3.0)
            for (index, expected) in (run["steps"] as! [[String: Any]]).enumerated() {
                noGrad {
                    trained.copyValues(from: trained + Tensor(updates[index]))
                    frozen.copyValues(from: frozen + 0.01 * Float(index + 1))
                }
                ema.step([trained, frozen])
                XCTAssertEqual(ema.currentDecay, expected["decay"] as! Double, accuracy: 1e-12, "\(name) step \(index + 1) decay")
                assertClose(ema.shadowParameters[0].toArray(), (expected["shadow"] as! [Double]).map { Float($0) }, relative: 1e-5, absolute: 1e-6, "\(name) step \(index + 1)")
                assertClose(ema.shadowParameters[1].toArray(), (expected["frozen_shadow"] as! [Double]).map { Float($0) }, relative: 1e-6, absolute: 1e-6, "\(name) frozen step \(index + 1)")
            }
        }
    }
}

final class GradientAccumulationTests: XCTestCase {
    func testAccumulatedMicroBatchesEqualOneFullBatch() {
        // Two micro-batches with loss scaled by 1/2 give the gradient of the mean over the full batch.
        let inputs = Tensor([1, 2, 3, 4], shape: [4, 1])
        let targets = Tensor([2, 4, 5, 9], shape: [4, 1])
        let fullWeight = Tensor([0.5], shape: [1, 1])
        fullWeight.requiresGrad = true
        Tensor.mseLoss(inputs.matmul(fullWeight), targets).backward()

        let weight = Tensor([0.5], shape: [1, 1])
        weight.requiresGrad = true
        var accumulator = GradientAccumulator(steps: 2)
        var stepped: [Bool] = []
        for half in 0..<2 {
            let slice = inputs.narrowed(axis: 0, start: half * 2, length: 2)
            let target = targets.narrowed(axis: 0, start: half * 2, length: 2)
            (Tensor.mseLoss(slice.matmul(weight), target) * accumulator.lossScale).backward()
            stepped.append(accumulator.microBatchDone())
        }
        XCTAssertEqual(stepped, [false, true])
        XCTAssertEqual(weight.grad!.item, fullWeight.grad!.item, accuracy: 1e-6)
    }

    func testClippingScalesToTheMaximumNorm() {
        let a = Tensor([3, 0]), b = Tensor([0, 4])
        a.grad = Tensor([3, 0])
        b.grad = Tensor([0, 4])
        let norm = clipGradientNorm([a, b], maximumNorm: 1)
        XCTAssertEqual(norm, 5, accuracy: 1e-6)
        XCTAssertEqual(a.grad!.toArray()[0], 0.6, accuracy: 1e-6)
        XCTAssertEqual(b.grad!.toArray()[1], 0.8, accuracy: 1e-6)
        XCTAssertEqual(clipGradientNorm([a, b], maximumNorm: 10), 1, accuracy: 1e-5)
        XCTAssertEqual(a.grad!.toArray()[0], 0.6, accuracy: 1e-6, "below the maximum nothing changes")
    }

    /// `step()` runs all parameters as one job cut into pieces of `pieceElements`: parameters longer
    /// than a piece, shorter ones and lengths that are not whole SIMD groups must each get
    /// PyTorch's AdamW update, here written out per element in Double.
    func testAdamWOverPiecesMatchesThePerElementRule() {
        var generator = RandomGenerator(seed: 23)
        let shapes = [[40_003], [7], [16_384 + 3], [128, 130]]
        let parameters = shapes.map { shape -> Tensor in
            let tensor = Tensor.randn(shape, generator: &generator).contiguousCopy()
            tensor.requiresGrad = true
            return tensor
        }
        var values = parameters.map { $0.toArray().map(Double.init) }
        var first = values.map { [Double](repeating: 0, count: $0.count) }
        var second = first
        let (learningRate, beta1, beta2, epsilon, decay) = (0.01, 0.9, 0.999, 1e-8, 0.1)
        let optimizer = Adam.adamW(parameters: parameters, learningRate: Float(learningRate), weightDecay: Float(decay))
        for step in 1...3 {
            var gradients: [[Float]] = []
            for parameter in parameters {
                let gradient = Tensor.randn(parameter.shape, generator: &generator)
                parameter.grad = gradient
                gradients.append(gradient.toArray())
            }
            optimizer.step()
            let correction1 = 1 - Foundation.pow(beta1, Double(step)), correction2 = 1 - Foundation.pow(beta2, Double(step))
            for index in parameters.indices {
                for element in values[index].indices {
                    let g = Double(gradients[index][element])
                    values[index][element] *= 1 - learningRate * decay
                    first[index][element] = beta1 * first[index][element] + (1 - beta1) * g
                    second[index][element] = beta2 * second[index][element] + (1 - beta2) * g * g
                    let denominator = second[index][element].squareRoot() / correction2.squareRoot() + epsilon
                    values[index][element] -= learningRate / correction1 * first[index][element] / denominator
                }
                let result = parameters[index].toArray()
                let worst = zip(result, values[index]).map { abs(Double($0) - $1) }.enumerated().max { $0.element < $1.element }!
                XCTAssertLessThan(worst.element, 1e-5, "step \(step), parameter \(shapes[index]): element \(worst.offset) is \(result[worst.offset]), expected \(values[index][worst.offset])")
            }
        }
    }
}
