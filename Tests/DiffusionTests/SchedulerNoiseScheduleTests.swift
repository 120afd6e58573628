import Diffusion
import Foundation
import Tensors
import XCTest

/// The training noise schedules, computed with PyTorch's float32 arithmetic, and
/// the places this port deliberately departs from diffusers.
final class SchedulerNoiseScheduleTests: XCTestCase {
    func testAlphasCumprodMatchesPyTorchBitForBit() throws {
        let url = SchedulerConfigurationTests.fixtures.appendingPathComponent("noise_schedules.json")
        let golden = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        let indices = golden["indices"] as! [Int]
        let expected = golden["alphas_cumprod"] as! [String: [Double]]
        let schedules: [String: NoiseSchedule] = [
            "linear": NoiseSchedule(trainTimesteps: 1000, betaStart: 0.0001, betaEnd: 0.02, schedule: .linear),
            "scaled_linear": NoiseSchedule(trainTimesteps: 1000, betaStart: 0.00085, betaEnd: 0.012, schedule: .scaledLinear),
            "squaredcos_cap_v2": NoiseSchedule(trainTimesteps: 1000, betaStart: 0.0001, betaEnd: 0.02, schedule: .squaredcosCapV2),
            "sigmoid": NoiseSchedule(trainTimesteps: 1000, betaStart: 0.0001, betaEnd: 0.02, schedule: .sigmoid),
            "laplace": NoiseSchedule(trainTimesteps: 1000, betaStart: 0.0001, betaEnd: 0.02, schedule: .laplace),
            "exp": NoiseSchedule(trainTimesteps: 1000, betaStart: 0.0001, betaEnd: 0.02, schedule: .exp),
            "scaled_linear_zero_snr": NoiseSchedule(trainTimesteps: 1000, betaStart: 0.00085, betaEnd: 0.012, schedule: .scaledLinear,
                                                    rescaleZeroTerminalSNR: true),
        ]
        XCTAssertEqual(Set(schedules.keys), Set(expected.keys))
        for (name, schedule) in schedules {
            for (index, value) in zip(indices, expected[name]!) {
                let actual = schedule.alphasCumprod[index]
                if name == "sigmoid" {
                    // PyTorch's float32 sigmoid is not correctly rounded: allow an ulp or two.
                    XCTAssertEqual(Double(actual), value, accuracy: Swift.max(Double(actual.ulp) * 2, 1e-12), "\(name)[\(index)]")
                } else if name == "scaled_linear_zero_snr" {
                    // Nor is its sqrt (MKL); the rescale divides neighbouring ᾱ and multiplies the ratios
                    // back, so one-ulp differences compound to a few ulps.
                    XCTAssertEqual(Double(actual), value, accuracy: Swift.abs(value) * 1e-6 + 1e-12, "\(name)[\(index)]")
                } else {
                    XCTAssertEqual(actual, Float(value), "\(name)[\(index)]")
                }
            }
        }
    }

    func testTorchLinspaceAndTrainedBetas() {
        // torch.linspace(0.0001, 0.02, 1000) — first, middle and last values.
        let betas = NoiseSchedule.torchLinspace(0.0001, 0.02, 1000)
        XCTAssertEqual(betas.first, 0.0001)
        XCTAssertEqual(betas.last, 0.02)
        XCTAssertEqual(betas.count, 1000)
        let trained = NoiseSchedule(trainTimesteps: 3, betaStart: 0, betaEnd: 0, schedule: .linear, trainedBetas: [0.1, 0.2, 0.5])
        XCTAssertEqual(trained.betas, [0.1, 0.2, 0.5])
        XCTAssertEqual(trained.alphasCumprod[2], Float(0.9 * 0.8 * 0.5), accuracy: 1e-7)
    }

    /// diffusers 0.42 takes the square root of log β for `fixed_large_log` (NaN);
    /// this port uses exp(½ log β) = √β, Glide's intended noise scale.
    func testFixedLargeLogUsesTheSquareRootOfBeta() throws {
        var configuration = SchedulerConfiguration()
        configuration.varianceType = .fixedLargeLog
        configuration.clipSample = false
        let largeLog = try DDPMScheduler(configuration: configuration)
        configuration.varianceType = .fixedLarge
        let large = try DDPMScheduler(configuration: configuration)
        var generator = RandomGenerator(seed: 1)
        let sample = Tensor.randn([1, 1, 4, 4], generator: &generator), output = Tensor.randn([1, 1, 4, 4], generator: &generator)
        let noise = Tensor.randn([1, 1, 4, 4], generator: &generator)
        for scheduler in [largeLog, large] { try scheduler.setTimesteps(10) }
        let t = largeLog.timesteps[3]
        let a = largeLog.step(output, timestep: t, sample: sample, noise: noise, generator: &generator).prevSample.toArray()
        let b = large.step(output, timestep: t, sample: sample, noise: noise, generator: &generator).prevSample.toArray()
        for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: 1e-6) }
    }

    /// With a zero final σ the last UniPC step lands on the x0 prediction. (diffusers
    /// 0.42 returns NaN there for solver_type "bh1": B(h) = −∞ times an empty residual.)
    func testUniPCFinalStepToZeroSigmaIsTheX0Prediction() throws {
        for solver in ["bh1", "bh2"] {
            var configuration = SchedulerConfiguration()
            configuration.solverType = solver
            let scheduler = try UniPCMultistepScheduler(configuration: configuration)
            var generator = RandomGenerator(seed: 4)
            var x = Tensor.randn([1, 2, 3, 3], generator: &generator)
            try scheduler.setTimesteps(6)
            var last: SchedulerStepOutput?
            for t in scheduler.timesteps {
                last = scheduler.step(x * Float(0.3), timestep: t, sample: x, generator: &generator)
                x = last!.prevSample
            }
            XCTAssertTrue(x.toArray().allSatisfy(\.isFinite), solver)
            XCTAssertEqual(x.toArray(), last!.predOriginalSample.toArray(), solver)
        }
    }
}
