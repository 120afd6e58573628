import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// `diffuse sample`'s guidance wiring: `--guide`, `--classifier`, the printed loss lines.
final class GuidanceSampleRunTests: XCTestCase {
    /// A tiny unconditional RGB pipeline (8×8, DDIM, linear betas) and a matching noise-aware classifier.
    private func fixtures() throws -> (pipeline: String, classifier: String) {
        let folder = try TrainingFixtures.temporaryFolder(self)
        let configuration = try ModelPresets.resolve(.preset("tiny"), imageSize: 8, channels: 3, classCount: nil)
        Initialization.seed(21)
        try DDPMPipeline(unet: try UNet2DModel(configuration: configuration), scheduler: DDIMScheduler())
            .save(folder: URL(fileURLWithPath: folder + "/pipeline"))
        var classifierConfiguration = NoiseAwareClassifierConfiguration()
        classifierConfiguration.inChannels = 3
        classifierConfiguration.sampleSize = 8
        classifierConfiguration.blockOutChannels = [8, 16]
        classifierConfiguration.normGroupCount = 4
        classifierConfiguration.classNames = ["dark", "light"]
        try NoiseAwareClassifier(configuration: classifierConfiguration).save(folder: URL(fileURLWithPath: folder + "/classifier"))
        return (folder + "/pipeline", folder + "/classifier")
    }

    private func request(_ pipeline: String) -> SampleRequest {
        var request = SampleRequest(pipeline: pipeline)
        request.steps = 6
        request.count = 2
        request.output = pipeline + "/../grid.png"
        request.saveTensor = pipeline + "/../samples.safetensors"
        request.guidanceReportEvery = 2
        return request
    }

    func testColorGuidancePrintsTheLossAndReports() throws {
        let (pipeline, _) = try fixtures()
        var request = request(pipeline)
        request.guide = "color=#1AE680"
        request.guideScale = 10
        request.guideMode = .full
        var lines: [String] = []
        let outcome = try SampleRun.run(request, log: { lines.append($0) })
        XCTAssertEqual(lines.count, 4, "\(lines)")  // steps 0, 2, 4 and the last
        XCTAssertTrue(lines[0].hasPrefix("step 0/6  colour loss "), lines[0])
        let summary = try XCTUnwrap(outcome.guidanceSummary)
        XCTAssertTrue(summary.contains("color=#1AE680, scale 10.0, full"), summary)
        XCTAssertTrue(outcome.reportLines.contains { $0.hasPrefix("guidance:") })
    }

    func testClassifierGuidanceOnAnUnconditionalPipeline() throws {
        let (pipeline, classifier) = try fixtures()
        var request = request(pipeline)
        request.classifier = classifier
        request.classes = "light"
        request.classifierScale = 5
        var lines: [String] = []
        let outcome = try SampleRun.run(request, log: { lines.append($0) })
        XCTAssertEqual(outcome.labels, [1, 1])
        XCTAssertTrue(lines.first?.contains("log p(y|x_t)") ?? false, "\(lines)")
        XCTAssertEqual(outcome.classNames, ["dark", "light"])

        request.guidanceScale = 3
        XCTAssertThrowsError(try SampleRun.run(request)) { XCTAssertTrue("\($0)".contains("class-conditional"), "\($0)") }
        request.guidanceScale = 1
        request.classes = nil
        XCTAssertThrowsError(try SampleRun.run(request)) { XCTAssertTrue("\($0)".contains("--classifier needs --class"), "\($0)") }
    }
}
