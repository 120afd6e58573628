import Diffusion
import Foundation
import Tensors
import TestSupport
import XCTest

/// The shared sampling loop, scheduler state, stochastic steps, and the course's toy pieces.
final class SchedulerLoopTests: XCTestCase {
    func testSamplingLoopReproducesTheDiffusersLoopAndReportsEveryStep() throws {
        let golden = try SafetensorsFixture.load("dpm_solver", subdirectory: "schedulers")
        let name = "order3_scaled_v_karras_leading"
        let scheduler = try Schedulers.make(configuration: SchedulerConfiguration(jsonText: try golden.string("\(name).config")))
        let pattern = try golden.tensor("pattern")
        var generator = RandomGenerator(seed: 0)
        var seen: [Int] = []
        let final = try SamplingLoop.run(scheduler: scheduler, initialNoise: try golden.tensor("initial"), steps: 20, generator: &generator,
                                         model: { x, t in SchedulerGoldenTests.model(x, t, pattern: pattern, learned: "") }) { state in
            seen.append(state.index)
            XCTAssertEqual(state.count, 20)
            XCTAssertEqual(state.timestep, scheduler.timesteps[state.index])
            XCTAssertLessThan(SchedulerGoldenTests.relativeError(state.predictedOriginal, try! golden.tensor("\(name).step\(state.index).x0")), 1e-5)
            XCTAssertLessThan(SchedulerGoldenTests.relativeError(state.previousSample, try! golden.tensor("\(name).step\(state.index).prev_sample")), 1e-5)
            return nil
        }
        XCTAssertEqual(seen, Array(0..<20))
        XCTAssertLessThan(SchedulerGoldenTests.relativeError(final, try golden.tensor("\(name).step19.prev_sample")), 1e-5)
    }

    func testAnySchedulerSwapsInAndStateResets() throws {
        var configuration = try SchedulerConfiguration(jsonText: DDPMScheduler().configurationJSON) // a DDPM-trained model's config
        configuration.clipSample = false
        var generator = RandomGenerator(seed: 1)
        let noise = Tensor.randn([1, 2, 4, 4], generator: &generator)
        let pattern = Tensor.randn([1, 2, 4, 4], generator: &generator)
        let model: (Tensor, Float) -> Tensor = { x, t in SchedulerGoldenTests.model(x, t, pattern: pattern, learned: "") }
        for kind in SchedulerKind.allCases {
            let scheduler = try Schedulers.make(kind, configuration: configuration)
            var first = RandomGenerator(seed: 7), second = RandomGenerator(seed: 7)
            let a = try SamplingLoop.run(scheduler: scheduler, initialNoise: noise, steps: 12, generator: &first, model: model)
            // Running again resets the multistep state: same seed, same result.
            let b = try SamplingLoop.run(scheduler: scheduler, initialNoise: noise, steps: 12, generator: &second, model: model)
            XCTAssertEqual(a.toArray(), b.toArray(), kind.rawValue)
            XCTAssertTrue(a.toArray().allSatisfy(\.isFinite), kind.rawValue)
        }
    }

    func testStochasticSchedulersDrawFromTheGenerator() throws {
        var configuration = SchedulerConfiguration()
        configuration.clipSample = false
        let ddim = try DDIMScheduler(configuration: configuration)
        ddim.eta = 1
        let euler = try EulerDiscreteScheduler(configuration: configuration)
        euler.sChurn = 1
        var sde = configuration
        sde.algorithmType = "sde-dpmsolver++"
        let schedulers: [any Scheduler] = [try DDPMScheduler(configuration: configuration), ddim,
                                           try EulerAncestralDiscreteScheduler(configuration: configuration), euler,
                                           try DPMSolverMultistepScheduler(configuration: sde)]
        let initial = Tensor.zeros([1, 1, 3, 3])
        let model: (Tensor, Float) -> Tensor = { x, _ in x * Float(0.1) }
        for scheduler in schedulers {
            var g1 = RandomGenerator(seed: 3), g2 = RandomGenerator(seed: 3), g3 = RandomGenerator(seed: 4)
            let a = try SamplingLoop.run(scheduler: scheduler, initialNoise: initial, steps: 5, generator: &g1, model: model)
            let b = try SamplingLoop.run(scheduler: scheduler, initialNoise: initial, steps: 5, generator: &g2, model: model)
            let c = try SamplingLoop.run(scheduler: scheduler, initialNoise: initial, steps: 5, generator: &g3, model: model)
            let name = "\(type(of: scheduler))"
            XCTAssertEqual(a.toArray(), b.toArray(), name)
            XCTAssertNotEqual(a.toArray(), c.toArray(), name)
        }
    }

    /// Guidance as in the course: a loss on x0 pulls the sample (here toward x0 = 0.5 everywhere).
    func testGuidanceCallbackDifferentiatesThroughX0() throws {
        var configuration = SchedulerConfiguration()
        configuration.clipSample = false
        let scheduler = try DDIMScheduler(configuration: configuration)
        var generator = RandomGenerator(seed: 11)
        let noise = Tensor.randn([1, 1, 4, 4], generator: &generator)
        let model: (Tensor, Float) -> Tensor = { x, _ in x * Float(0.5) }
        var losses: [Float] = []
        func run(scale: Float) throws -> Tensor {
            var generator = RandomGenerator(seed: 0)
            return try SamplingLoop.run(scheduler: scheduler, initialNoise: noise, steps: 10, generator: &generator, guidance: true, model: model) { state in
                let loss = (state.predictedOriginal - 0.5).square().mean()
                losses.append(loss.item)
                let gradient = gradients(of: loss, withRespectTo: [state.sample])[0]
                return state.previousSample - gradient * scale
            }
        }
        let distance = { (x: Tensor) in (x - 0.5).abs().mean().item }
        let unguided = try run(scale: 0)
        let guided = try run(scale: 0.01)
        XCTAssertLessThan(distance(guided), distance(unguided) * 0.8, "guidance moves the result toward the target")
    }

    // MARK: Toy pieces

    func testCorruptMixesUniformNoisePerExample() {
        var generator = RandomGenerator(seed: 4)
        let x = Tensor.rand([3, 1, 2, 2], generator: &generator)
        let noise = Tensor.rand([3, 1, 2, 2], generator: &generator)
        let amount = Tensor([0, 0.25, 1])
        let mixed = ToyDiffusion.corrupt(x, amount: amount, noise: noise)
        let (xs, ns, ms) = (x.toArray(), noise.toArray(), mixed.toArray())
        for index in 0..<12 {
            let a = amount.toArray()[index / 4]
            XCTAssertEqual(ms[index], xs[index] * (1 - a) + ns[index] * a, accuracy: 1e-7)
        }
        var first = RandomGenerator(seed: 8), second = RandomGenerator(seed: 8)
        let drawn = ToyDiffusion.corrupt(x, amount: Tensor([1, 1, 1]), generator: &first)
        XCTAssertEqual(drawn.toArray(), Tensor.rand(x.shape, generator: &second).toArray(), "amount 1 is pure uniform noise")
        XCTAssertTrue(drawn.toArray().allSatisfy { $0 >= 0 && $0 < 1 })
    }

    func testToySamplerMovesOneOverNMinusIOfTheWay() {
        let target = Tensor.full(0.7, [2, 1, 3, 3])
        var amounts: [Float] = [], history: [Tensor] = []
        let start = Tensor.zeros([2, 1, 3, 3])
        let result = ToyDiffusion.sample(initial: start, steps: 5, model: { _, amount in amounts.append(amount); return target }) { step in
            history.append(step.sample)
        }
        for (amount, expected) in zip(amounts, [Float(1), 0.8, 0.6, 0.4, 0.2]) { XCTAssertEqual(amount, expected, accuracy: 1e-6) }
        XCTAssertEqual(amounts.count, 5)
        // Toward a fixed prediction: after step i, x = target · (i+1)/n.
        for (index, sample) in history.enumerated() {
            XCTAssertEqual(sample.toArray()[0], 0.7 * Float(index) / 5, accuracy: 1e-6)
        }
        XCTAssertEqual(result.toArray(), target.toArray(), "the last step lands on the prediction")
    }

    /// The course's "from scratch" notebook in miniature: train a small denoiser on
    /// corrupt(x, amount) to predict x, then sample with the toy sampler.
    func testFromScratchNotebookRunsEndToEnd() {
        var generator = RandomGenerator(seed: 21)
        // Smooth images in [0, 1]: random plane waves through a sigmoid.
        var pixels: [Float] = []
        for _ in 0..<64 {
            let (fx, fy, phase) = (generator.uniform() * 0.8, generator.uniform() * 0.8, generator.uniform() * 6)
            for row in 0..<12 { for column in 0..<12 {
                pixels.append(1 / (1 + Foundation.exp(-3 * Foundation.sin(fx * Float(column) + fy * Float(row) + phase))))
            } }
        }
        let images = Tensor(pixels, shape: [64, 1, 12, 12])
        // A two-layer perceptron on the flattened pixels stands in for the course's BasicUNet.
        let w1 = Tensor.randn([144, 64], generator: &generator) * Float(1 / 12.0)
        let b1 = Tensor.zeros([64])
        let w2 = Tensor.randn([64, 144], generator: &generator) * Float(1 / 8.0)
        let b2 = Tensor.zeros([144])
        let parameters = [w1, b1, w2, b2]
        for parameter in parameters { parameter.requiresGrad = true }
        let network = { (x: Tensor) -> Tensor in
            let flat = x.reshaped([x.shape[0], 144])
            return ((flat.matmul(w1) + b1).silu().matmul(w2) + b2).reshaped(x.shape)
        }
        var losses: [Float] = []
        for step in 0..<150 {
            let batch = images.narrowed(axis: 0, start: (step * 16) % 64, length: 16).contiguous()
            let amount = Tensor.rand([16], generator: &generator)
            let noisy = ToyDiffusion.corrupt(batch, amount: amount, generator: &generator)
            let loss = Tensor.mseLoss(network(noisy), batch)
            let grads = gradients(of: loss, withRespectTo: parameters)
            noGrad {
                for (parameter, gradient) in zip(parameters, grads) {
                    let (values, slope) = (parameter.floatPointer, gradient.contiguous().floatPointer)
                    for index in 0..<parameter.count { values[index] -= 0.5 * slope[index] }
                }
            }
            losses.append(loss.item)
        }
        let early = losses.prefix(5).reduce(0, +) / 5, late = losses.suffix(5).reduce(0, +) / 5
        XCTAssertLessThan(late, early * 0.7, "loss \(early) → \(late)")
        var steps = 0
        let samples = ToyDiffusion.sample(initial: Tensor.rand([4, 1, 12, 12], generator: &generator), steps: 5,
                                          model: { x, _ in network(x) }) { _ in steps += 1 }
        XCTAssertEqual(steps, 5)
        XCTAssertEqual(samples.shape, [4, 1, 12, 12])
        XCTAssertTrue(samples.toArray().allSatisfy { $0.isFinite && $0 > -1 && $0 < 2 })
    }
}
