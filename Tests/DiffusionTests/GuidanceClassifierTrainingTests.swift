import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// `diffuse train-classifier`'s library side on a slice of Fashion-MNIST.
final class GuidanceClassifierTrainingTests: XCTestCase {
    private func options(_ name: String) throws -> ClassifierTraining.Options {
        try XCTSkipUnless(FileManager.default.fileExists(atPath: FashionMNIST.directory + "/train-images-idx3-ubyte.gz"),
                          "dataset-fashion-mnist is not installed")
        var options = ClassifierTraining.Options()
        options.dataset = "fashion-mnist"
        options.datasetLimit = 512
        options.blockOutChannels = [8, 16]
        options.normGroupCount = 4
        options.batchSize = 32
        options.steps = 40
        options.learningRate = 3e-3
        options.evaluationCount = 64
        options.outputDir = NSTemporaryDirectory() + "guidance-\(name)-\(UUID().uuidString)"
        addTeardownBlock { [path = options.outputDir] in try? FileManager.default.removeItem(atPath: path) }
        return options
    }

    func testNoiseAwareClassifierTrainsOnTheGivenScheduleAndSavesAFolder() throws {
        var options = try options("noise-aware")
        options.betaSchedule = "squaredcos_cap_v2"
        var lines: [String] = []
        options.logEvery = 20
        let outcome = try ClassifierTraining.run(options, log: { lines.append($0) })
        XCTAssertEqual(lines.count, 2)
        XCTAssertTrue(outcome.finalLoss.isFinite)
        XCTAssertEqual(outcome.accuracy.map(\.timestep), [0, 250, 500, 750])
        let loaded = try NoiseAwareClassifier.load(folder: URL(fileURLWithPath: options.outputDir))
        XCTAssertEqual(loaded.configuration.classNames, FashionMNIST.classNames)
        XCTAssertEqual(loaded.configuration.betaSchedule, "squaredcos_cap_v2")
        XCTAssertTrue(loaded.configuration.noiseAware)
        // Guidance accepts it for a scheduler on that schedule, and refuses one on the linear schedule.
        let guidance = try ClassifierGuidance(classifier: loaded, labels: [7], scale: 1)
        let cosine = try DDIMScheduler(configuration: try SchedulerConfiguration(values: ["beta_schedule": .string("squaredcos_cap_v2")]))
        XCTAssertNoThrow(try guidance.checkCompatible(sampleShape: [1, 1, 28, 28], scheduler: cosine))
        XCTAssertThrowsError(try guidance.checkCompatible(sampleShape: [1, 1, 28, 28], scheduler: DDIMScheduler()))
    }

    func testCleanClassifierLearns() throws {
        var options = try options("clean")
        options.clean = true
        options.steps = 80
        options.evaluationCount = 200
        let outcome = try ClassifierTraining.run(options)
        XCTAssertEqual(outcome.accuracy.map(\.timestep), [0])
        XCTAssertGreaterThan(outcome.accuracy[0].accuracy, 0.3, "10 classes: chance is 0.1")
        XCTAssertFalse(try NoiseAwareClassifier.load(folder: URL(fileURLWithPath: options.outputDir)).configuration.noiseAware)
    }

    func testPipelineAndBetaScheduleAreExclusive() throws {
        var options = try options("exclusive")
        options.betaSchedule = "linear"
        options.pipeline = "/nonexistent"
        XCTAssertThrowsError(try ClassifierTraining.run(options)) { XCTAssertTrue("\($0)".contains("not both"), "\($0)") }
    }
}
