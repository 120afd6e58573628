import TestSupport
import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// Crash safety: a run killed with SIGKILL and resumed with `resume_from_checkpoint: latest`
/// computes exactly the losses of a run that was never stopped; SIGTERM writes a
/// checkpoint and exits cleanly; a non-finite loss stops the run and keeps the last good checkpoint.
///
/// The interrupted runs happen in a child process: this test binary started again with
/// one `TrainingChildRun` test selected and `DIFFUSE_TRAINING_CHILD` naming the output folder.
final class TrainingResumeTests: XCTestCase {
    private static let steps = 24

    /// Starts the child training run into `outputDir`.
    private func startChild(outputDir: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        process.arguments = ["DiffusionTests.TrainingChildRun/testTrainInChildProcess"]
        process.environment = ProcessInfo.processInfo.environment.merging(["DIFFUSE_TRAINING_CHILD": outputDir]) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Waits until the child's log reaches `step` (or the child ends).
    private func waitForStep(_ step: Int, outputDir: String, process: Process) throws {
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline && process.isRunning {
            if let losses = try? TrainingFixtures.losses(outputDir: outputDir), (losses.keys.max() ?? 0) >= step { return }
            usleep(2_000)
        }
        XCTFail("the child run did not reach step \(step) (running: \(process.isRunning))")
    }

    private func uninterruptedLosses() throws -> [Int: Float] {
        let folder = try temporaryFolderPath("training")
        let trainer = try TrainingFixtures.trainer(yaml: TrainingFixtures.yaml(outputDir: folder, steps: Self.steps))
        let summary = try trainer.run()
        XCTAssertEqual(summary.step, Self.steps)
        return try TrainingFixtures.losses(outputDir: folder)
    }

    func testKillNineThenResumeReproducesTheUninterruptedLosses() throws {
        let reference = try uninterruptedLosses()
        XCTAssertEqual(reference.count, Self.steps)

        let folder = try temporaryFolderPath("training")
        let child = try startChild(outputDir: folder)
        try waitForStep(9, outputDir: folder, process: child)
        kill(child.processIdentifier, SIGKILL)
        child.waitUntilExit()
        XCTAssertEqual(child.terminationReason, .uncaughtSignal, "the child was not killed")
        let killedAt = try TrainingFixtures.losses(outputDir: folder).keys.max() ?? 0
        XCTAssertLessThan(killedAt, Self.steps, "the child finished before the kill")

        // No torn checkpoint: every checkpoint-* folder is complete and loads.
        let names = try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.hasPrefix("checkpoint-") }
        XCTAssertFalse(names.isEmpty)
        for name in names {
            let path = (folder as NSString).appendingPathComponent(name)
            let state = try TrainingCheckpoint.readState(path)
            XCTAssertEqual("checkpoint-\(state.step)", name)
            for file in [TrainingCheckpoint.modelFile, TrainingCheckpoint.optimizerFile, TrainingCheckpoint.emaFile] {
                XCTAssertNoThrow(try Safetensors.load(path: (path as NSString).appendingPathComponent(file)), "\(name)/\(file)")
            }
        }

        let resumed = try TrainingFixtures.trainer(yaml: TrainingFixtures.yaml(outputDir: folder, steps: Self.steps),
                                                   overrides: [("resume_from_checkpoint", "latest")])
        let resumedFrom = TrainingCheckpoint.list(in: folder).last?.step ?? 0
        XCTAssertGreaterThan(resumedFrom, 0)
        XCTAssertEqual(try resumed.run().step, Self.steps)
        let losses = try TrainingFixtures.losses(outputDir: folder)
        print("killed at step \(killedAt), resumed from checkpoint-\(resumedFrom)")
        for step in 1...Self.steps {
            XCTAssertEqual(losses[step], reference[step], "step \(step): resumed \(losses[step] ?? .nan), uninterrupted \(reference[step] ?? .nan)")
        }
    }

    func testSigtermWritesACheckpointAndExitsCleanly() throws {
        let folder = try temporaryFolderPath("training")
        let child = try startChild(outputDir: folder)
        try waitForStep(6, outputDir: folder, process: child)
        kill(child.processIdentifier, SIGTERM)
        child.waitUntilExit()
        XCTAssertEqual(child.terminationReason, .exit)
        XCTAssertEqual(child.terminationStatus, 0)
        let lastLogged = try TrainingFixtures.losses(outputDir: folder).keys.max() ?? 0
        XCTAssertLessThan(lastLogged, Self.steps)
        let latest = try XCTUnwrap(TrainingCheckpoint.list(in: folder).last)
        XCTAssertEqual(latest.step, lastLogged, "the checkpoint is not at the step where the run stopped")
    }

    func testNonFiniteLossStopsAndKeepsTheLastGoodCheckpoint() throws {
        let folder = try temporaryFolderPath("training")
        // Example 50 is all NaN: the first batch that holds it gives a NaN loss.
        let trainer = try TrainingFixtures.trainer(yaml: TrainingFixtures.yaml(outputDir: folder, steps: 40, checkpointing: 2),
                                                   dataset: TrainingFixtures.dataset(poisonedIndex: 50))
        XCTAssertThrowsError(try trainer.run()) { error in
            guard case let .nonFiniteLoss(step, value, checkpoint)? = error as? TrainingError else {
                return XCTFail("expected nonFiniteLoss, got \(error)")
            }
            XCTAssertTrue(value.isNaN)
            XCTAssertEqual(trainer.step, step - 1)
            let latest = TrainingCheckpoint.list(in: folder).last
            XCTAssertEqual(checkpoint, latest?.path)
            XCTAssertLessThanOrEqual(latest?.step ?? 0, step - 1)
            XCTAssertTrue("\(error)".contains("became nan"), "\(error)")
        }
        for entry in TrainingCheckpoint.list(in: folder) {
            let weights = try Safetensors.load(path: (entry.path as NSString).appendingPathComponent(TrainingCheckpoint.modelFile))
            XCTAssertTrue(weights.values.allSatisfy { $0.toArray().allSatisfy(\.isFinite) }, "\(entry.path) holds non-finite weights")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent("model_index.json")))
    }
}

/// The child run of `TrainingResumeTests`: only runs when `DIFFUSE_TRAINING_CHILD` is set.
final class TrainingChildRun: XCTestCase {
    func testTrainInChildProcess() throws {
        guard let folder = ProcessInfo.processInfo.environment["DIFFUSE_TRAINING_CHILD"] else {
            throw XCTSkip("run by TrainingResumeTests in a child process")
        }
        let configuration = try TrainingConfiguration.load(yaml: TrainingFixtures.yaml(outputDir: folder, steps: 24))
        let trainer = try Trainer(configuration: configuration, dataset: TrainingFixtures.dataset())
        trainer.progressOutput = nil
        trainer.onStep = { _ in usleep(60_000) }  // slow enough to be stopped mid-run
        _ = try trainer.run()
    }
}
