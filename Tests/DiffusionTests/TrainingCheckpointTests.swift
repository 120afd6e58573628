import TestSupport
import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// Checkpoint folders: written whole or not at all, the newest K kept, `latest` found.
final class TrainingCheckpointTests: XCTestCase {
    private struct Failure: Error {}

    func testAFailedWriteLeavesNoCheckpointFolder() throws {
        let folder = try temporaryFolderPath("training")
        XCTAssertThrowsError(try TrainingCheckpoint.write(step: 5, in: folder) { temporary in
            try Safetensors.save(["x": Tensor([1, 2])], to: (temporary as NSString).appendingPathComponent("model.safetensors"))
            throw Failure()
        })
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder), [], "a torn or temporary folder was left")
        XCTAssertNil(try TrainingCheckpoint.resolve("latest", outputDir: folder))
    }

    func testStaleTemporariesAndIncompleteFoldersAreNotCheckpoints() throws {
        let folder = try temporaryFolderPath("training")
        let manager = FileManager.default
        try manager.createDirectory(atPath: folder + "/.checkpoint-9.tmp-123-abc", withIntermediateDirectories: true)
        try manager.createDirectory(atPath: folder + "/checkpoint-12", withIntermediateDirectories: true)  // no trainer_state.json
        XCTAssertTrue(TrainingCheckpoint.list(in: folder).isEmpty)
        TrainingCheckpoint.removeTemporaries(in: folder)
        XCTAssertFalse(manager.fileExists(atPath: folder + "/.checkpoint-9.tmp-123-abc"))
    }

    func testRewritingAStepReplacesTheFolder() throws {
        let folder = try temporaryFolderPath("training")
        for value in ["first", "second"] {
            try TrainingCheckpoint.write(step: 3, in: folder) { temporary in
                try value.write(toFile: temporary + "/" + TrainingCheckpoint.stateFile, atomically: true, encoding: .utf8)
            }
        }
        XCTAssertEqual(try String(contentsOfFile: folder + "/checkpoint-3/" + TrainingCheckpoint.stateFile, encoding: .utf8), "second")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder), ["checkpoint-3"])
    }

    func testTrainingKeepsTheLastKCheckpointsAndResolvesLatest() throws {
        let folder = try temporaryFolderPath("training")
        let trainer = try TrainingFixtures.trainer(yaml: TrainingFixtures.yaml(outputDir: folder, steps: 10, checkpointing: 2, limit: 2))
        let summary = try trainer.run()
        XCTAssertEqual(TrainingCheckpoint.list(in: folder).map(\.step), [8, 10])
        XCTAssertEqual(try TrainingCheckpoint.resolve("latest", outputDir: folder), summary.lastCheckpoint)
        XCTAssertEqual(try TrainingCheckpoint.resolve("checkpoint-8", outputDir: folder), folder + "/checkpoint-8")
        XCTAssertThrowsError(try TrainingCheckpoint.resolve("checkpoint-4", outputDir: folder))
        let hidden = try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.hasPrefix(".") }
        XCTAssertEqual(hidden, [])

        let state = try TrainingCheckpoint.readState(folder + "/checkpoint-10")
        XCTAssertEqual(state.step, 10)
        XCTAssertEqual(state.dataLoader, DataLoaderPosition(epoch: 1, offset: 64))
        // The pipeline, sample grids and logs are there too, and the pipeline loads.
        let pipeline = try DDPMPipeline.load(folder: URL(fileURLWithPath: folder))
        XCTAssertEqual(pipeline.unet.configuration.classEmbeddingCount, 4)
        XCTAssertEqual(PipelineClasses.load(from: folder)?.names, ["horizontal", "vertical", "diagonal"])
        XCTAssertFalse(summary.sampleImages.isEmpty)
        for path in summary.sampleImages { XCTAssertTrue(FileManager.default.fileExists(atPath: path), path) }
    }

    func testARunOfWholeEpochsNamesEveryGridByItsEpoch() throws {
        // The last step of the last epoch comes before the loader reports the epoch's end;
        // its grid is still the epoch's (it was once written as step-NNNNNN.png instead).
        let folder = try temporaryFolderPath("training")
        let yaml = TrainingFixtures.yaml(outputDir: folder, steps: 1, checkpointing: 1000)
            .replacingOccurrences(of: "max_train_steps: 1\n", with: "num_epochs: 2\n")
            .replacingOccurrences(of: "save_image_epochs: 100", with: "save_image_epochs: 1")
        let trainer = try TrainingFixtures.trainer(yaml: yaml)
        let summary = try trainer.run()
        XCTAssertEqual(summary.step, 2 * trainer.stepsPerEpoch)
        XCTAssertEqual(summary.sampleImages.map { ($0 as NSString).lastPathComponent }, ["epoch-0001.png", "epoch-0002.png"])
    }

    func testAnEarlierRunIsKeptUnlessOverwriting() throws {
        let folder = try temporaryFolderPath("training")
        _ = try TrainingFixtures.trainer(yaml: TrainingFixtures.yaml(outputDir: folder, steps: 2, checkpointing: 2)).run()
        XCTAssertThrowsError(try TrainingFixtures.trainer(yaml: TrainingFixtures.yaml(outputDir: folder, steps: 2)).run()) { error in
            XCTAssertEqual(error as? TrainingError, .outputExists(folder))
        }
        let again = try TrainingFixtures.trainer(yaml: TrainingFixtures.yaml(outputDir: folder, steps: 4, checkpointing: 4),
                                                 overrides: [("overwrite_output_dir", "true")])
        _ = try again.run()
        XCTAssertEqual(TrainingCheckpoint.list(in: folder).map(\.step), [4])
        XCTAssertEqual(try TrainingFixtures.losses(outputDir: folder).keys.sorted(), [1, 2, 3, 4])
    }
}
