import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// Guidance gradients against PyTorch (Scripts/make-guidance-goldens): colour
/// guidance in both modes and classifier guidance, on a fixed tiny RGB
/// UNet2DModel with a DDIM scheduler.
final class GuidanceGoldenTests: XCTestCase {
    static var directory: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures").appendingPathComponent("guidance")
    }

    struct Golden {
        let unet: UNet2DModel
        let scheduler: any Scheduler
        let tensors: [String: Tensor]
        let timestep: Float
        let loss: ColorLoss
        let scale: Float

        subscript(name: String) -> Tensor {
            guard let tensor = tensors[name] else { fatalError("io.safetensors has no \(name); rerun Scripts/make-guidance-goldens") }
            return tensor
        }
    }

    func golden() throws -> Golden {
        let unet = try UNet2DModel.load(folder: Self.directory.appendingPathComponent("unet"))
        unet.eval()
        let scheduler = try Schedulers.load(contentsOf: Self.directory.appendingPathComponent("scheduler_config.json"))
        XCTAssertTrue(scheduler is DDIMScheduler)
        try scheduler.setTimesteps(10)
        let tensors = try Safetensors.load(path: Self.directory.appendingPathComponent("io.safetensors").path, as: .float32)
        let target = tensors["target"]!.toArray()
        return Golden(unet: unet, scheduler: scheduler, tensors: tensors, timestep: tensors["timestep"]!.item,
                      loss: ColorLoss(red: target[0], green: target[1], blue: target[2]), scale: tensors["loss_scale"]!.item)
    }

    private func assertClose(_ actual: Tensor, _ expected: Tensor, tolerance: Float, _ message: String, line: UInt = #line) {
        XCTAssertEqual(actual.shape, expected.shape, message, line: line)
        let scale = expected.toArray().map(Swift.abs).max() ?? 1
        let difference = zip(actual.toArray(), expected.toArray()).map { Swift.abs($0 - $1) }.max() ?? .infinity
        XCTAssertLessThanOrEqual(difference, tolerance * Swift.max(scale, 1), "\(message): max difference \(difference) (max |expected| \(scale))", line: line)
    }

    /// One guided step of `mode` through the library's `SamplingGuidance`, as sampling runs it.
    private func guidedStep(_ golden: Golden, mode: GuidanceMode) throws -> (sample: Tensor, output: Tensor, report: SamplingGuidance.Report?) {
        let guidance = SamplingGuidance(loss: LossGuidance(loss: golden.loss, scale: golden.scale, mode: mode), reportEvery: 1)
        var report: SamplingGuidance.Report?
        let unet = golden.unet
        let result = try guidance.step(index: 3, count: 10, timestep: golden.timestep, sample: golden["sample"], scheduler: golden.scheduler,
                                       model: { sample, timestep in unet(sample, timestep: timestep) }, report: { report = $0 })
        return (result.sample, result.modelOutput, report)
    }

    func testShortcutGradientMatchesPyTorch() throws {
        let golden = try golden()
        let step = try guidedStep(golden, mode: .shortcut)
        assertClose(step.output, golden["shortcut_noise_prediction"], tolerance: 1e-5, "UNet output")
        assertClose(noGrad { golden["sample"] - step.sample }, golden["shortcut_gradient"], tolerance: 1e-5, "shortcut gradient")
        XCTAssertEqual(step.report?.loss ?? .nan, golden["shortcut_losses"].mean().item, accuracy: 1e-5)
        var generator = RandomGenerator(seed: 0)
        let previous = noGrad { golden.scheduler.step(step.output, timestep: golden.timestep, sample: step.sample, generator: &generator).prevSample }
        assertClose(previous, golden["shortcut_previous"], tolerance: 1e-5, "x_{t-1} after shortcut guidance")
    }

    func testFullGradientMatchesPyTorch() throws {
        let golden = try golden()
        let step = try guidedStep(golden, mode: .full)
        assertClose(noGrad { golden["sample"] - step.sample }, golden["full_gradient"], tolerance: 1e-4, "full gradient (through the UNet)")
        XCTAssertEqual(step.report?.loss ?? .nan, golden["full_losses"].mean().item, accuracy: 1e-5)
        var generator = RandomGenerator(seed: 0)
        let previous = noGrad { golden.scheduler.step(step.output, timestep: golden.timestep, sample: step.sample, generator: &generator).prevSample }
        assertClose(previous, golden["full_previous"], tolerance: 1e-4, "x_{t-1} after full guidance")
        // The two modes really differ on this model (so neither comparison passes with the other's gradient).
        let gap = zip(golden["full_gradient"].toArray(), golden["shortcut_gradient"].toArray()).map { Swift.abs($0 - $1) }.max() ?? 0
        XCTAssertGreaterThan(gap, 0.1)
    }

    func testPerImageLossesMatchTheNotesColorLoss() throws {
        let golden = try golden()
        let unet = golden.unet
        let output = noGrad { unet(golden["sample"], timestep: golden.timestep) }
        let x0 = try golden.scheduler.predictedOriginalForGuidance(output, timestep: golden.timestep, sample: golden["sample"])
        assertClose(noGrad { golden.loss(x0) }, golden["shortcut_losses"], tolerance: 1e-5, "per-image colour losses")
    }

    func testClassifierGradientMatchesPyTorch() throws {
        let golden = try golden()
        let classifier = try NoiseAwareClassifier.load(folder: Self.directory.appendingPathComponent("classifier"))
        let labels = golden["classifier_labels"].toArray().map { Int($0) }
        assertClose(noGrad { classifier(golden["sample"], timestep: golden.timestep) }, golden["classifier_logits"], tolerance: 1e-5, "classifier logits")
        let guidance = try ClassifierGuidance(classifier: classifier, labels: labels, scale: golden["classifier_scale"].item)
        let leaf = golden["sample"].detach()
        leaf.requiresGrad = true
        let (logProbabilities, gradient) = guidance.gradient(sample: leaf, timestep: golden.timestep, scheduler: golden.scheduler)
        assertClose(logProbabilities, golden["classifier_log_probabilities"], tolerance: 1e-5, "log p(y | x_t)")
        assertClose(gradient, golden["classifier_gradient"], tolerance: 1e-4, "classifier guidance gradient")
    }
}
