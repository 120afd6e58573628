import Diffusion
import Foundation
import Tensors
import XCTest

/// Every scheduler returns `predOriginalSample` at every step, equal to the
/// analytic x0 for the prediction type, and differentiable.
final class SchedulerPredictionTests: XCTestCase {
    /// The noise level the model input is at step `index`: for σ-space schedulers
    /// the sample is x0 + σ·ε; otherwise it is √ᾱ·x0 + √(1−ᾱ)·ε.
    static func noiseLevel(_ scheduler: any Scheduler, index: Int, timestep: Float) -> (sigmaSpace: Bool, alphaBar: Float, sigma: Float) {
        func fromSigma(_ sigma: Float, sigmaSpace: Bool) -> (Bool, Float, Float) { (sigmaSpace, 1 / (sigma * sigma + 1), sigma) }
        switch scheduler {
        case let s as LMSDiscreteScheduler: return fromSigma(s.sigmas[index], sigmaSpace: true)
        case let s as EulerDiscreteScheduler: return fromSigma(s.sigmas[index], sigmaSpace: true)
        case let s as EulerAncestralDiscreteScheduler: return fromSigma(s.sigmas[index], sigmaSpace: true)
        case let s as HeunDiscreteScheduler: return fromSigma(s.sigmas[index], sigmaSpace: true)
        case let s as DPMSolverMultistepScheduler: return fromSigma(s.sigmas[index], sigmaSpace: false)
        case let s as UniPCMultistepScheduler: return fromSigma(s.sigmas[index], sigmaSpace: false)
        default:
            let alphaBar = scheduler.noiseSchedule.alphasCumprod[Int(timestep)]
            return (false, alphaBar, ((1 - alphaBar) / alphaBar).squareRoot())
        }
    }

    static func supported(_ kind: SchedulerKind) -> [PredictionType] {
        switch kind {
        case .pndm, .eulerAncestral: return [.epsilon, .vPrediction]
        default: return PredictionType.allCases
        }
    }

    func testPredictedOriginalIsTheAnalyticX0AtEveryStep() throws {
        var generator = RandomGenerator(seed: 5)
        let x0 = Tensor.rand([2, 3, 4, 4], low: -0.9, high: 0.9, generator: &generator)
        for kind in SchedulerKind.allCases {
            for prediction in Self.supported(kind) {
                var configuration = SchedulerConfiguration()
                configuration.predictionType = prediction
                configuration.clipSample = false
                let scheduler = try Schedulers.make(kind, configuration: configuration)
                try scheduler.setTimesteps(10)
                var x = Tensor.randn([2, 3, 4, 4], generator: &generator) * scheduler.initNoiseSigma
                var worst: Float = 0
                for (index, t) in scheduler.timesteps.enumerated() {
                    let level = Self.noiseLevel(scheduler, index: index, timestep: t)
                    let alpha = level.alphaBar.squareRoot(), noiseScale = (1 - level.alphaBar).squareRoot()
                    // ε consistent with x and x0 at this noise level.
                    let epsilon = level.sigmaSpace ? (x - x0) / level.sigma : (x - x0 * alpha) / noiseScale
                    let output: Tensor
                    switch prediction {
                    case .epsilon: output = epsilon
                    case .sample: output = x0
                    case .vPrediction: output = epsilon * alpha - x0 * noiseScale
                    }
                    let result = scheduler.step(output, timestep: t, sample: x, generator: &generator)
                    XCTAssertEqual(result.predOriginalSample.shape, x0.shape)
                    let error = SchedulerGoldenTests.relativeError(result.predOriginalSample, x0)
                    worst = Swift.max(worst, error)
                    XCTAssertLessThan(error, 1e-4, "\(kind.rawValue) \(prediction.rawValue) step \(index) t \(t)")
                    x = result.prevSample
                }
                XCTAssertTrue(x.toArray().allSatisfy(\.isFinite), "\(kind.rawValue) \(prediction.rawValue): final sample finite")
                print("x0 \(kind.rawValue) \(prediction.rawValue): worst relative error \(worst) over \(scheduler.timesteps.count) steps")
            }
        }
    }

    /// d x0 / d(model output) for ε-prediction is −√(1−ᾱ)/√ᾱ (−σ in σ-space), and the
    /// gradient reaches the sample too: guidance can differentiate through x0.
    func testPredictedOriginalIsDifferentiable() throws {
        var generator = RandomGenerator(seed: 9)
        for kind in SchedulerKind.allCases {
            var configuration = SchedulerConfiguration()
            configuration.clipSample = false
            let scheduler = try Schedulers.make(kind, configuration: configuration)
            try scheduler.setTimesteps(10)
            let t = scheduler.timesteps[0]
            let sample = Tensor.randn([1, 2, 3, 3], generator: &generator)
            sample.requiresGrad = true
            let output = Tensor.randn([1, 2, 3, 3], generator: &generator)
            output.requiresGrad = true
            let input = scheduler.scaleModelInput(sample, timestep: t)
            XCTAssertEqual(input.shape, sample.shape)
            let x0 = scheduler.step(output, timestep: t, sample: sample, generator: &generator).predOriginalSample
            let grads = gradients(of: x0.sum(), withRespectTo: [output, sample])
            let level = Self.noiseLevel(scheduler, index: 0, timestep: t)
            let expected = level.sigmaSpace ? -level.sigma : -((1 - level.alphaBar) / level.alphaBar).squareRoot()
            for value in grads[0].toArray() {
                XCTAssertEqual(value, expected, accuracy: Swift.abs(expected) * 1e-5, "\(kind.rawValue): d x0 / d output")
            }
            let sampleSlope: Float = level.sigmaSpace ? 1 : 1 / level.alphaBar.squareRoot()
            for value in grads[1].toArray() {
                XCTAssertEqual(value, sampleSlope, accuracy: sampleSlope * 1e-5, "\(kind.rawValue): d x0 / d sample")
            }
        }
    }

    func testVelocityIsTheVPredictionTargetForEveryScheduler() throws {
        var generator = RandomGenerator(seed: 2)
        let x0 = Tensor.randn([3, 2, 2, 2], generator: &generator), noise = Tensor.randn([3, 2, 2, 2], generator: &generator)
        var configuration = SchedulerConfiguration()
        configuration.betaSchedule = .scaledLinear
        configuration.betaStart = 0.00085
        configuration.betaEnd = 0.012
        let timesteps: [Float] = [0, 500, 999]
        let reference = try DDPMScheduler(configuration: configuration)
        let expected = reference.velocity(x0, noise: noise, timesteps: timesteps)
        // v = √ᾱ ε − √(1−ᾱ) x0, so x0 = √ᾱ x_t − √(1−ᾱ) v.
        let noisy = reference.addNoise(x0, noise: noise, timesteps: timesteps)
        for (index, t) in timesteps.enumerated() {
            let alphaBar = reference.noiseSchedule.alphasCumprod[Int(t)]
            let recovered = noisy.narrowed(axis: 0, start: index, length: 1) * alphaBar.squareRoot()
                - expected.narrowed(axis: 0, start: index, length: 1) * (1 - alphaBar).squareRoot()
            XCTAssertLessThan(SchedulerGoldenTests.relativeError(recovered, x0.narrowed(axis: 0, start: index, length: 1)), 1e-5)
        }
        for kind in SchedulerKind.allCases {
            let scheduler = try Schedulers.make(kind, configuration: configuration)
            XCTAssertEqual(scheduler.velocity(x0, noise: noise, timesteps: Tensor(timesteps)).toArray(), expected.toArray(), kind.rawValue)
        }
    }
}
