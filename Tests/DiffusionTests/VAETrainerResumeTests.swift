import TestSupport
import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// Crash safety of `diffuse train-vae`: a run killed with SIGKILL and resumed with
/// `--resume latest` computes exactly the losses of a run that was never stopped,
/// and ends with the same weights; SIGTERM writes a checkpoint and exits cleanly.
///
/// The killed runs happen in a child process: this test binary started again with
/// `VAETrainerChildRun` selected and `DIFFUSE_VAE_TRAINING_CHILD` naming the output folder.
final class VAETrainerResumeTests: XCTestCase {
    static let steps = 16

    static func options(outputDir: String) -> VAETrainingOptions {
        VAETrainerFixtures.options(outputDir: outputDir, steps: steps, checkpointing: 3)
    }

    private func startChild(outputDir: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        process.arguments = ["DiffusionTests.VAETrainerChildRun/testTrainInChildProcess"]
        process.environment = ProcessInfo.processInfo.environment.merging(["DIFFUSE_VAE_TRAINING_CHILD": outputDir]) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Waits until the child's log reaches `step` (or the child ends).
    private func waitForStep(_ step: Int, outputDir: String, process: Process) {
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline && process.isRunning {
            if let losses = try? TrainingFixtures.losses(outputDir: outputDir), (losses.keys.max() ?? 0) >= step { return }
            usleep(2_000)
        }
        XCTFail("the child run did not reach step \(step) (running: \(process.isRunning))")
    }

    func testKillNineThenResumeReproducesTheUninterruptedLosses() throws {
        let referenceFolder = try temporaryFolderPath("training")
        let uninterrupted = try VAETrainerFixtures.trainer(Self.options(outputDir: referenceFolder))
        XCTAssertEqual(try uninterrupted.run().step, Self.steps)
        let reference = try TrainingFixtures.losses(outputDir: referenceFolder)
        XCTAssertEqual(reference.count, Self.steps)

        let folder = try temporaryFolderPath("training")
        let child = try startChild(outputDir: folder)
        waitForStep(7, outputDir: folder, process: child)
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
            XCTAssertEqual("checkpoint-\(try TrainingCheckpoint.readState(path).step)", name)
            for file in [TrainingCheckpoint.modelFile, TrainingCheckpoint.optimizerFile, TrainingCheckpoint.emaFile, TrainingCheckpoint.configurationFile] {
                XCTAssertTrue(FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent(file)), "\(name)/\(file)")
            }
        }

        var options = Self.options(outputDir: folder)
        options.resumeFromCheckpoint = "latest"
        let resumedFrom = try XCTUnwrap(TrainingCheckpoint.list(in: folder).last?.step)
        XCTAssertGreaterThan(resumedFrom, 0)
        let resumed = try VAETrainerFixtures.trainer(options)
        XCTAssertEqual(try resumed.run().step, Self.steps)
        let losses = try TrainingFixtures.losses(outputDir: folder)
        print("VAE: killed at step \(killedAt), resumed from checkpoint-\(resumedFrom)")
        for step in 1...Self.steps {
            XCTAssertEqual(losses[step], reference[step], "step \(step): resumed \(losses[step] ?? .nan), uninterrupted \(reference[step] ?? .nan)")
        }
        for ((name, after), (_, whole)) in zip(resumed.model.namedParameters(), uninterrupted.model.namedParameters()) {
            XCTAssertEqual(after.toArray(), whole.toArray(), name)
        }
        let saved = try Safetensors.load(path: (folder as NSString).appendingPathComponent("vae/diffusion_pytorch_model.safetensors"))
        let wholeSaved = try Safetensors.load(path: (referenceFolder as NSString).appendingPathComponent("vae/diffusion_pytorch_model.safetensors"))
        XCTAssertEqual(Set(saved.keys), Set(wholeSaved.keys))
        for (name, tensor) in saved { XCTAssertEqual(tensor.toArray(), wholeSaved[name]?.toArray(), "vae/ \(name)") }
    }

    func testSigtermWritesACheckpointAndExitsCleanly() throws {
        let folder = try temporaryFolderPath("training")
        let child = try startChild(outputDir: folder)
        waitForStep(4, outputDir: folder, process: child)
        kill(child.processIdentifier, SIGTERM)
        child.waitUntilExit()
        XCTAssertEqual(child.terminationReason, .exit)
        XCTAssertEqual(child.terminationStatus, 0)
        let lastLogged = try TrainingFixtures.losses(outputDir: folder).keys.max() ?? 0
        XCTAssertLessThan(lastLogged, Self.steps)
        let latest = try XCTUnwrap(TrainingCheckpoint.list(in: folder).last)
        XCTAssertEqual(latest.step, lastLogged, "the checkpoint is not at the step where the run stopped")
        XCTAssertFalse(FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent("vae")))
    }
}

/// The child run of `VAETrainerResumeTests`: only runs when `DIFFUSE_VAE_TRAINING_CHILD` is set.
final class VAETrainerChildRun: XCTestCase {
    func testTrainInChildProcess() throws {
        guard let folder = ProcessInfo.processInfo.environment["DIFFUSE_VAE_TRAINING_CHILD"] else {
            throw XCTSkip("run by VAETrainerResumeTests in a child process")
        }
        let trainer = try VAETrainer(options: VAETrainerResumeTests.options(outputDir: folder), dataset: VAETrainerFixtures.dataset())
        trainer.progressOutput = nil
        trainer.onStep = { _ in usleep(60_000) }  // slow enough to be stopped mid-run
        _ = try trainer.run()
    }
}
