import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// Loss and classifier guidance in sampling: they steer, scale 0 changes nothing,
/// x0 is read without advancing a scheduler, and bad requests fail clearly.
final class GuidanceSamplingTests: XCTestCase {
    /// A random tiny RGB UNet (8×8).
    private func rgbUNet(seed: UInt64 = 3) throws -> UNet2DModel {
        let configuration = try ModelPresets.resolve(.preset("tiny"), imageSize: 8, channels: 3, classCount: nil)
        Initialization.seed(seed)
        let unet = try UNet2DModel(configuration: configuration)
        unet.eval()
        return unet
    }

    private func ddim() throws -> DDIMScheduler {
        var configuration = SchedulerConfiguration()
        configuration.trainTimesteps = 100
        return try DDIMScheduler(configuration: configuration)
    }

    private func sample(_ unet: UNet2DModel, guidance: SamplingGuidance?, scheduler: any Scheduler,
                        reports: UnsafeMutablePointer<[SamplingGuidance.Report]>? = nil) throws -> Tensor {
        var generator = RandomGenerator(seed: 11)
        return try GuidedSampler.sample(unet: unet, scheduler: scheduler, count: 4, steps: 8, generator: &generator,
                                        guidance: guidance, onGuidance: { reports?.pointee.append($0) }).samples
    }

    func testColorGuidanceMovesSamplesTowardsTheColorInBothModes() throws {
        let unet = try rgbUNet()
        let color = try ColorLoss(hex: "#1AE680")
        let unguided = color.meanDistance(try sample(unet, guidance: nil, scheduler: try ddim()))
        for mode in GuidanceMode.allCases {
            var reports: [SamplingGuidance.Report] = []
            let guidance = SamplingGuidance(loss: LossGuidance(loss: color, scale: 60, mode: mode), reportEvery: 3)
            let guided = color.meanDistance(try sample(unet, guidance: guidance, scheduler: try ddim(), reports: &reports))
            XCTAssertLessThan(guided, unguided * 0.7, "\(mode): distance \(guided) vs unguided \(unguided)")
            XCTAssertEqual(reports.map(\.index), [0, 3, 6, 7], "\(mode): reports every 3 steps and the last")
            XCTAssertNotNil(reports.first?.loss)
            XCTAssertEqual(reports.first?.scaledLoss ?? 0, (reports.first?.loss ?? 0) * 60, accuracy: 1e-3)
            // Only d/dx was computed: no parameter gradient, and the parameters are trainable again.
            XCTAssertTrue(unet.parameters().allSatisfy { $0.grad == nil && $0.requiresGrad }, "\(mode): parameters touched")
        }
    }

    func testScaleZeroIsUnguidedSampling() throws {
        let unet = try rgbUNet()
        let unguided = try sample(unet, guidance: nil, scheduler: try ddim())
        let zero = try sample(unet, guidance: SamplingGuidance(loss: LossGuidance(loss: try ColorLoss(hex: "#FF0000"), scale: 0)),
                              scheduler: try ddim())
        XCTAssertEqual(unguided.toArray(), zero.toArray())
    }

    func testCustomLossThroughThePublicAPI() throws {
        let unet = try rgbUNet()
        let brightness = ClosureGuidanceLoss(name: "darkness") { x0 in (x0 - 1).abs().mean(axes: [1, 2, 3]) }
        let unguided = try sample(unet, guidance: nil, scheduler: try ddim())
        let guided = try sample(unet, guidance: SamplingGuidance(loss: LossGuidance(loss: brightness, scale: 60)), scheduler: try ddim())
        XCTAssertGreaterThan(guided.mean().item, unguided.mean().item + 0.2)

        let wrongShape = ClosureGuidanceLoss(name: "batch mean") { x0 in x0.abs().mean() }
        XCTAssertThrowsError(try sample(unet, guidance: SamplingGuidance(loss: LossGuidance(loss: wrongShape, scale: 1)), scheduler: try ddim())) {
            XCTAssertTrue("\($0)".contains("one value per image"), "\($0)")
        }
    }

    func testPredictedOriginalDoesNotAdvanceTheScheduler() throws {
        var generator = RandomGenerator(seed: 4)
        let sample = Tensor.randn([2, 3, 8, 8], generator: &generator)
        let output = Tensor.randn([2, 3, 8, 8], generator: &generator)
        var configuration = SchedulerConfiguration()
        configuration.trainTimesteps = 100
        for kind in [SchedulerKind.ddim, .ddpm, .pndm, .lms, .euler, .eulerAncestral, .dpmSolverMultistep, .uniPCMultistep] {
            let probed = try Schedulers.make(kind, configuration: configuration)
            let plain = try Schedulers.make(kind, configuration: configuration)
            try probed.setTimesteps(5)
            try plain.setTimesteps(5)
            let timestep = probed.timesteps[0]
            let input = noGrad { probed.scaleModelInput(sample, timestep: timestep) }
            _ = noGrad { plain.scaleModelInput(sample, timestep: timestep) }
            let x0 = try noGrad { try probed.predictedOriginalForGuidance(output, timestep: timestep, sample: sample) }
            var first = RandomGenerator(seed: 1), second = RandomGenerator(seed: 1)
            let stepped = noGrad { probed.step(output, timestep: timestep, sample: sample, generator: &first) }
            let reference = noGrad { plain.step(output, timestep: timestep, sample: sample, generator: &second) }
            XCTAssertEqual(stepped.prevSample.toArray(), reference.prevSample.toArray(), "\(kind): probing x0 changed the step")
            let difference = zip(x0.toArray(), stepped.predOriginalSample.toArray()).map { Swift.abs($0 - $1) }.max() ?? 1
            XCTAssertLessThan(difference, 1e-4, "\(kind): x0 differs from the step's by \(difference)")
            XCTAssertEqual(input.shape, sample.shape)
        }
        let heun = try Schedulers.make(.heun, configuration: configuration)
        try heun.setTimesteps(5)
        XCTAssertThrowsError(try heun.predictedOriginalForGuidance(output, timestep: heun.timesteps[0], sample: sample)) {
            XCTAssertTrue("\($0)".contains("Heun"), "\($0)")
        }
    }

    func testGuidanceRequestErrors() throws {
        let unet = try rgbUNet()
        let heun = try Schedulers.make(.heun, configuration: SchedulerConfiguration())
        let guidance = SamplingGuidance(loss: LossGuidance(loss: try ColorLoss(hex: "#FF0000"), scale: 1, mode: .full))
        XCTAssertThrowsError(try sample(unet, guidance: guidance, scheduler: heun)) {
            XCTAssertTrue("\($0)".contains("x0") && "\($0)".contains("ddim"), "\($0)")
        }
        XCTAssertThrowsError(try ColorLoss(hex: "#12345")) { XCTAssertTrue("\($0)".contains("#RRGGBB"), "\($0)") }
        XCTAssertEqual(try ColorLoss(hex: "1ae680").hex, "#1AE680")
        XCTAssertThrowsError(try SampleRun.guidanceLoss("color=#FF0000", channels: 1)) { XCTAssertTrue("\($0)".contains("RGB"), "\($0)") }
        XCTAssertThrowsError(try SampleRun.guidanceLoss("sharpness=3", channels: 3)) { XCTAssertTrue("\($0)".contains("color="), "\($0)") }
    }

    /// A random tiny classifier over three classes with the DDIM test schedule.
    private func classifier(noiseAware: Bool = true, trainTimesteps: Int = 100) throws -> NoiseAwareClassifier {
        var configuration = NoiseAwareClassifierConfiguration()
        configuration.inChannels = 3
        configuration.sampleSize = 8
        configuration.blockOutChannels = [8, 16]
        configuration.normGroupCount = 4
        configuration.classNames = ["red", "green", "blue"]
        configuration.noiseAware = noiseAware
        configuration.numTrainTimesteps = trainTimesteps
        Initialization.seed(8)
        return try NoiseAwareClassifier(configuration: configuration)
    }

    func testClassifierGuidanceRaisesTheRequestedClassProbability() throws {
        let unet = try rgbUNet()
        let model = try classifier()
        func meanProbability(scale: Float) throws -> Float {
            let guidance = SamplingGuidance(classifier: try ClassifierGuidance(classifier: model, labels: [1, 1, 1, 1], scale: scale))
            let samples = try sample(unet, guidance: guidance, scheduler: try ddim())
            let logits = noGrad { model(samples, timestep: 0) }
            return noGrad { logits.softmax(axis: 1) }.toArray().enumerated().filter { $0.offset % 3 == 1 }.map(\.element).reduce(0, +) / 4
        }
        let unguided = try meanProbability(scale: 0)
        let guided = try meanProbability(scale: 300)
        XCTAssertGreaterThan(guided, unguided + 0.05, "p(class 1): unguided \(unguided), guided \(guided)")
    }

    func testClassifierRequestErrors() throws {
        let model = try classifier()
        XCTAssertThrowsError(try ClassifierGuidance(classifier: model, labels: [3], scale: 1)) {
            XCTAssertTrue("\($0)".contains("not one of the classifier's 3 classes"), "\($0)")
        }
        XCTAssertThrowsError(try ClassifierGuidance(classifier: try classifier(noiseAware: false), labels: [0], scale: 1)) {
            XCTAssertTrue("\($0)".contains("clean images"), "\($0)")
        }
        let other = try classifier(trainTimesteps: 1000)
        let guidance = try ClassifierGuidance(classifier: other, labels: [0, 0], scale: 1)
        XCTAssertThrowsError(try guidance.checkCompatible(sampleShape: [2, 3, 8, 8], scheduler: try ddim())) {
            XCTAssertTrue("\($0)".contains("noise"), "\($0)")
        }
        XCTAssertThrowsError(try guidance.checkCompatible(sampleShape: [2, 1, 8, 8], scheduler: try DDIMScheduler())) {
            XCTAssertTrue("\($0)".contains("3-channel"), "\($0)")
        }
        XCTAssertNoThrow(try guidance.checkCompatible(sampleShape: [2, 3, 8, 8], scheduler: try DDIMScheduler()))
    }

    func testClassifierFolderRoundTripWithPyTorchNames() throws {
        let model = try classifier()
        let names = model.namedParameters().map(\.name)
        for name in ["conv_in.weight", "time_embedding.linear_1.weight", "down_blocks.0.resnets.0.conv1.weight",
                     "down_blocks.0.downsamplers.0.conv.weight", "mid_block.resnets.1.conv2.bias", "conv_norm_out.weight", "head.weight"] {
            XCTAssertTrue(names.contains(name), "missing \(name) in \(names)")
        }
        let folder = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("guidance-classifier-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        try model.save(folder: folder)
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder.appendingPathComponent("model.safetensors").path))
        let loaded = try NoiseAwareClassifier.load(folder: folder)
        XCTAssertEqual(loaded.configuration, model.configuration)
        var generator = RandomGenerator(seed: 2)
        let input = Tensor.randn([2, 3, 8, 8], generator: &generator)
        XCTAssertEqual(noGrad { loaded(input, timestep: 40) }.toArray(), noGrad { model(input, timestep: 40) }.toArray())
    }

    func testClassifierConfigurationTakesDefaultsAndNamesBadKeys() throws {
        let minimal = try JSONDecoder().decode(NoiseAwareClassifierConfiguration.self,
                                               from: Data(#"{"class_names": ["a", "b"], "in_channels": 3}"#.utf8))
        XCTAssertEqual(minimal.inChannels, 3)
        XCTAssertEqual(minimal.blockOutChannels, NoiseAwareClassifierConfiguration().blockOutChannels)
        XCTAssertNoThrow(try minimal.validate())
        var bad = minimal
        bad.normGroupCount = 5
        XCTAssertThrowsError(try bad.validate()) { XCTAssertTrue("\($0)".contains("norm_num_groups"), "\($0)") }
        XCTAssertThrowsError(try JSONDecoder().decode(NoiseAwareClassifierConfiguration.self, from: Data(#"{"in_channels": 3}"#.utf8)))
    }

    func testTintedDatasetIsRGBAndStable() throws {
        let grey = InMemoryDataset(images: Tensor([-1, 1, 0, 0.5], shape: [1, 1, 2, 2]), labels: [0], classNames: ["a", "b"])
        let tinted = TintedDataset(base: grey)
        let image = try tinted.example(at: 0).image
        XCTAssertEqual(image.shape, [3, 2, 2])
        XCTAssertEqual(image.toArray(), try tinted.example(at: 0).image.toArray())
        let (foreground, background) = tinted.colors(of: 0)
        let values = image.toArray()
        for channel in 0..<3 {
            XCTAssertEqual(values[channel * 4], background[channel] * 2 - 1, accuracy: 1e-6)     // grey −1: background
            XCTAssertEqual(values[channel * 4 + 1], foreground[channel] * 2 - 1, accuracy: 1e-6) // grey 1: foreground
        }
        XCTAssertEqual(tinted.classNames, ["a", "b"])
    }
}
