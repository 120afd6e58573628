import TestSupport
import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// `diffuse sample`'s guidance wiring: `--guide`, `--classifier`, the printed loss lines.
final class GuidanceSampleRunTests: XCTestCase {
    /// A tiny unconditional RGB pipeline (8×8, DDIM, linear betas) and a matching noise-aware classifier.
    private func fixtures() throws -> (pipeline: String, classifier: String) {
        let folder = try temporaryFolderPath("training")
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

    /// The small CLIP fixture with a tokenizer of its 300-id vocabulary (letters only, no merges).
    private func clipFolder() throws -> String {
        let folder = try temporaryFolderPath("training") + "/clip"
        let fixture = SafetensorsFixtureDirectory.clip
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for name in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(atPath: fixture + "/" + name, toPath: folder + "/" + name)
        }
        var vocabulary: [String: Int] = ["<|startoftext|>": 298, "<|endoftext|>": 299]
        for (index, letter) in "abcdefghijklmnopqrstuvwxyz".enumerated() {
            vocabulary["\(letter)</w>"] = index
            vocabulary["\(letter)"] = 26 + index
        }
        try CLIPTokenizer(vocabulary: vocabulary, merges: [], modelMaxLength: 10).save(to: URL(fileURLWithPath: folder))
        return folder
    }

    func testCLIPGuidanceWithColourGuidance() throws {
        let (pipeline, _) = try fixtures()
        var request = request(pipeline)
        request.guides = ["clip=\"a red bag\"", "color=#FF0000"]
        request.guideScale = 5
        var lines: [String] = []
        XCTAssertThrowsError(try SampleRun.run(request)) { XCTAssertTrue("\($0)".contains("--clip-model"), "\($0)") }
        request.clipModel = try clipFolder()
        request.clipCutouts = 2
        let outcome = try SampleRun.run(request, log: { lines.append($0) })
        XCTAssertTrue(lines[0].hasPrefix("step 0/6  CLIP loss + colour loss "), lines[0])
        let summary = try XCTUnwrap(outcome.guidanceSummary)
        XCTAssertTrue(summary.contains("clip=\"a red bag\" + color=#FF0000, scale 5.0, shortcut"), summary)
        // The same request again gives the same samples: the cut-outs come from the seed.
        let first = try Safetensors.load(path: pipeline + "/../samples.safetensors")["samples"]!.toArray()
        _ = try SampleRun.run(request)
        XCTAssertEqual(try Safetensors.load(path: pipeline + "/../samples.safetensors")["samples"]!.toArray(), first)
    }
}

/// Paths of committed fixtures this file reads.
enum SafetensorsFixtureDirectory {
    static var clip: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/clip/clip").path
    }
}
