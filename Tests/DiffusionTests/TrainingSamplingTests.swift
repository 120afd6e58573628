import TestSupport
import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// Class-conditional sampling with classifier-free guidance, and `diffuse sample`'s
/// library side: `--init-noise` reproducibility, `--save-tensor`, the grid and the trace.
final class TrainingSamplingTests: XCTestCase {
    /// A random tiny class-conditional UNet: 3 classes + the unconditional class.
    private func conditionalUNet() throws -> UNet2DModel {
        let configuration = try ModelPresets.resolve(.preset("tiny"), imageSize: 8, channels: 1, classCount: 3)
        Initialization.seed(5)
        return try UNet2DModel(configuration: configuration)
    }

    private func assertClose(_ a: Tensor, _ b: Tensor, tolerance: Float = 1e-5, _ message: String, line: UInt = #line) {
        XCTAssertEqual(a.shape, b.shape, message, line: line)
        let difference = zip(a.toArray(), b.toArray()).map { Swift.abs($0 - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(difference, tolerance, "\(message): differs by \(difference)", line: line)
    }

    func testGuidanceCombinesConditionalAndUnconditionalHalves() throws {
        let unet = try conditionalUNet()
        XCTAssertEqual(GuidedSampler.nullClass(of: unet), 3)
        var generator = RandomGenerator(seed: 1)
        let x = Tensor.randn([4, 1, 8, 8], generator: &generator)
        let labels = [0, 1, 2, 1]
        let conditional = noGrad { unet(x, timestep: 10, classLabels: labels) }
        let unconditional = noGrad { unet(x, timestep: 10, classLabels: [3, 3, 3, 3]) }
        assertClose(GuidedSampler.guidedOutput(unet: unet, sample: x, timestep: 10, labels: labels, guidanceScale: 1), conditional, "scale 1")
        assertClose(GuidedSampler.guidedOutput(unet: unet, sample: x, timestep: 10, labels: labels, guidanceScale: 0), unconditional, "scale 0")
        let guided = GuidedSampler.guidedOutput(unet: unet, sample: x, timestep: 10, labels: labels, guidanceScale: 4)
        assertClose(guided, noGrad { unconditional + (conditional - unconditional) * 4 }, tolerance: 1e-4, "scale 4")
        assertClose(GuidedSampler.guidedOutput(unet: unet, sample: x, timestep: 10, labels: nil, guidanceScale: 4), unconditional, "no labels")
    }

    func testClassConditionalSamplingShapesAndLabelChecks() throws {
        let unet = try conditionalUNet()
        let scheduler = try DDIMScheduler(configuration: SchedulerConfiguration())
        var generator = RandomGenerator(seed: 2)
        let result = try GuidedSampler.sample(unet: unet, scheduler: scheduler, count: 6, steps: 5, labels: [0, 0, 1, 1, 2, 2],
                                              guidanceScale: 3, generator: &generator, traceEvery: 2)
        XCTAssertEqual(result.samples.shape, [6, 1, 8, 8])
        XCTAssertEqual(result.trace.map(\.index), [0, 2, 4])
        let strip = try XCTUnwrap(GuidedSampler.traceStrip(result.trace))
        XCTAssertEqual(strip.columns, 3)
        XCTAssertEqual(strip.images.shape, [4 * 2 * 3, 1, 8, 8])
        XCTAssertThrowsError(try GuidedSampler.sample(unet: unet, scheduler: scheduler, count: 2, steps: 2, labels: [0, 3],
                                                      generator: &generator)) { error in
            XCTAssertTrue("\(error)".contains("unconditional"), "\(error)")
        }
        XCTAssertThrowsError(try GuidedSampler.sample(unet: unet, scheduler: scheduler, count: 3, steps: 2, labels: [0, 1],
                                                      generator: &generator))
    }

    func testClassListsAndRows() throws {
        XCTAssertEqual(try SampleRun.parseClasses("3", names: []), [3])
        XCTAssertEqual(try SampleRun.parseClasses("0,2, 1", names: []), [0, 2, 1])
        XCTAssertEqual(try SampleRun.parseClasses("0-3", names: []), [0, 1, 2, 3])
        XCTAssertEqual(try SampleRun.parseClasses("vertical,Horizontal", names: ["horizontal", "vertical"]), [1, 0])
        XCTAssertThrowsError(try SampleRun.parseClasses("cat", names: ["dog"]))
    }

    func testSampleFromInitNoiseIsReproducible() throws {
        let folder = try temporaryFolderPath("training")
        let unet = try conditionalUNet()
        var schedulerConfiguration = SchedulerConfiguration()
        schedulerConfiguration.trainTimesteps = 100
        try DDPMPipeline(unet: unet, scheduler: try DDPMScheduler(configuration: schedulerConfiguration))
            .save(folder: URL(fileURLWithPath: folder + "/pipeline"))
        try PipelineClasses(names: ["horizontal", "vertical", "diagonal"]).save(in: folder + "/pipeline")
        var generator = RandomGenerator(seed: 9)
        let noise = Tensor.randn([6, 1, 8, 8], generator: &generator)
        try Safetensors.save(["noise": noise], to: folder + "/noise.safetensors")

        func run(seed: UInt64, scheduler: String?, name: String) throws -> Tensor {
            var request = SampleRequest(pipeline: folder + "/pipeline")
            request.scheduler = scheduler
            request.steps = 10
            request.seed = seed
            request.classes = "horizontal,vertical,diagonal"
            request.guidanceScale = 2
            request.initNoise = folder + "/noise.safetensors"
            request.saveTensor = folder + "/\(name).safetensors"
            request.output = folder + "/\(name).png"
            request.traceEvery = 0
            let outcome = try SampleRun.run(request)
            XCTAssertEqual(outcome.count, 6)
            XCTAssertEqual(outcome.labels, [0, 0, 1, 1, 2, 2])
            XCTAssertTrue(FileManager.default.fileExists(atPath: folder + "/\(name).png"))
            XCTAssertTrue(FileManager.default.fileExists(atPath: folder + "/\(name)-trace.png"))
            return try XCTUnwrap(Safetensors.load(path: folder + "/\(name).safetensors")["samples"])
        }
        // DDIM with eta 0 is deterministic: the noise file alone decides the result.
        let first = try run(seed: 1, scheduler: "ddim", name: "a")
        let second = try run(seed: 2, scheduler: "ddim", name: "b")
        XCTAssertEqual(first.shape, [6, 1, 8, 8])
        XCTAssertEqual(first.toArray(), second.toArray())
        // DDPM (the folder's scheduler) is stochastic: the same seed repeats, another seed differs.
        let third = try run(seed: 3, scheduler: nil, name: "c")
        let fourth = try run(seed: 3, scheduler: nil, name: "d")
        let fifth = try run(seed: 4, scheduler: nil, name: "e")
        XCTAssertEqual(third.toArray(), fourth.toArray())
        XCTAssertNotEqual(third.toArray(), fifth.toArray())
        // The same as sampling in code from that noise.
        let pipeline = try DDPMPipeline.load(folder: URL(fileURLWithPath: folder + "/pipeline"))
        var unused = RandomGenerator(seed: 0)
        let direct = try GuidedSampler.sample(unet: pipeline.unet, scheduler: try DDIMScheduler(configuration: pipeline.scheduler.configuration),
                                              count: 6, steps: 10, labels: [0, 0, 1, 1, 2, 2], guidanceScale: 2,
                                              initialNoise: noise, generator: &unused)
        XCTAssertEqual(direct.samples.toArray(), first.toArray())
    }
}
