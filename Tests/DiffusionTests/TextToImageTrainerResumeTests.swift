import TestSupport
import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// Crash safety of the text-to-image trainer: a run killed with SIGKILL and resumed with
/// `resume_from_checkpoint: latest` computes exactly the losses of a run that was never stopped
/// (full fine-tuning with EMA, random flips, caption dropout, noise offset, Min-SNR and gradient
/// accumulation; and LoRA on the UNet and the text encoder, interrupted in-process).
///
/// The killed run happens in a child process: this test binary started again with
/// `TextToImageTrainerChildRun` selected and `DIFFUSE_T2I_CHILD` naming the output folder.
final class TextToImageTrainerResumeTests: XCTestCase {
    static let steps = 8

    private func uninterruptedLosses(lora: Bool) throws -> [Int: Float] {
        let folder = try temporaryFolderPath("t2i")
        let summary = try TextToImageFixtures.trainer(TextToImageFixtures.options(outputDir: folder, steps: Self.steps, lora: lora)).run()
        XCTAssertEqual(summary.step, Self.steps)
        return try TextToImageFixtures.losses(outputDir: folder)
    }

    private func compare(_ losses: [Int: Float], _ reference: [Int: Float]) {
        XCTAssertEqual(reference.count, Self.steps)
        for step in 1...Self.steps {
            XCTAssertEqual(losses[step], reference[step], "step \(step): resumed \(losses[step] ?? .nan), uninterrupted \(reference[step] ?? .nan)")
        }
    }

    func testKillNineThenResumeReproducesTheUninterruptedLosses() throws {
        let reference = try uninterruptedLosses(lora: false)
        let folder = try temporaryFolderPath("t2i")
        let child = Process()
        child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        child.arguments = ["DiffusionTests.TextToImageTrainerChildRun/testTrainInChildProcess"]
        child.environment = ProcessInfo.processInfo.environment.merging(["DIFFUSE_T2I_CHILD": folder]) { $1 }
        child.standardOutput = FileHandle.nullDevice
        child.standardError = FileHandle.nullDevice
        try child.run()
        let deadline = Date().addingTimeInterval(180)
        while Date() < deadline && child.isRunning {
            if let losses = try? TextToImageFixtures.losses(outputDir: folder), (losses.keys.max() ?? 0) >= 3 { break }
            usleep(2_000)
        }
        kill(child.processIdentifier, SIGKILL)
        child.waitUntilExit()
        XCTAssertEqual(child.terminationReason, .uncaughtSignal, "the child was not killed")
        let killedAt = try TextToImageFixtures.losses(outputDir: folder).keys.max() ?? 0
        XCTAssertLessThan(killedAt, Self.steps, "the child finished before the kill")
        let resumedFrom = try XCTUnwrap(TextToImageCheckpointStep.latest(in: folder))
        XCTAssertGreaterThan(resumedFrom, 0)

        var options = TextToImageFixtures.options(outputDir: folder, steps: Self.steps)
        options.resumeFromCheckpoint = "latest"
        XCTAssertEqual(try TextToImageFixtures.trainer(options).run().step, Self.steps)
        print("text-to-image: killed at step \(killedAt), resumed from checkpoint-\(resumedFrom)")
        compare(try TextToImageFixtures.losses(outputDir: folder), reference)
    }

    func testLoRARunInterruptedAndResumedReproducesTheUninterruptedLosses() throws {
        let reference = try uninterruptedLosses(lora: true)
        let folder = try temporaryFolderPath("t2i")
        let first = try TextToImageFixtures.trainer(TextToImageFixtures.options(outputDir: folder, steps: Self.steps, lora: true))
        first.onStep = { step in if step == 3 { first.interruption.request() } }
        let stopped = try first.run()
        XCTAssertTrue(stopped.interrupted)
        XCTAssertEqual(stopped.step, 3)
        var options = TextToImageFixtures.options(outputDir: folder, steps: Self.steps, lora: true)
        options.resumeFromCheckpoint = "latest"
        XCTAssertEqual(try TextToImageFixtures.trainer(options).run().step, Self.steps)
        compare(try TextToImageFixtures.losses(outputDir: folder), reference)
    }
}

enum TextToImageCheckpointStep {
    static func latest(in folder: String) -> Int? { TrainingCheckpoint.list(in: folder).last?.step }
}

/// The run `TextToImageTrainerResumeTests` kills (skipped unless started by it).
final class TextToImageTrainerChildRun: XCTestCase {
    func testTrainInChildProcess() throws {
        guard let folder = ProcessInfo.processInfo.environment["DIFFUSE_T2I_CHILD"] else {
            throw XCTSkip("run by TextToImageTrainerResumeTests in a child process")
        }
        let trainer = try TextToImageFixtures.trainer(TextToImageFixtures.options(outputDir: folder, steps: TextToImageTrainerResumeTests.steps))
        trainer.onStep = { _ in usleep(300_000) }  // slow enough to be stopped mid-run
        _ = try trainer.run()
    }
}
