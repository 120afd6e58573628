import TestSupport
import Diffusion
import Foundation
import Tensors
import XCTest

/// Two ranks with batch B make, between them, the first step of one process with batch 2B: every
/// random draw (flips, caption dropout, posterior samples, noise, noise offset, timesteps) is made
/// for the global batch and each rank keeps its rows, so the mean of the ranks' losses and
/// gradients is the single process's. Each rank's step is computed on its own here (the group
/// averages nothing), which is exactly rank r's part before the all-reduce.
final class TextToImageTrainerShardedDrawTests: XCTestCase {
    /// Runs one step (2 micro-batches) of the fixture's full fine-tuning as `group`'s rank; returns the group and the output folder.
    private func firstStep(group: GradientCapturingGroup, batchSize: Int) throws -> (group: GradientCapturingGroup, folder: String) {
        let folder = try temporaryFolderPath("t2i")
        var options = TextToImageFixtures.options(outputDir: folder, steps: 1)
        options.trainBatchSize = batchSize
        let trainer = try TextToImageTrainer(options: options, dataset: TextToImageFixtures.dataset(), group: group, message: { _ in })
        trainer.silence()
        XCTAssertEqual(trainer.loader.shard, DataLoaderShard(rank: group.rank, count: group.size))
        _ = try trainer.run()
        XCTAssertEqual(group.gradients.count, 1, "one all-reduce for the step's 2 micro-batches")
        return (group, folder)
    }

    func testTwoRanksOfHalfTheBatchMakeTheFirstStepOfOneProcess() throws {
        let (single, singleFolder) = try firstStep(group: GradientCapturingGroup(rank: 0, size: 1), batchSize: 4)
        let (rankZero, rankZeroFolder) = try firstStep(group: GradientCapturingGroup(rank: 0, size: 2), batchSize: 2)
        let (rankOne, rankOneFolder) = try firstStep(group: GradientCapturingGroup(rank: 1, size: 2), batchSize: 2)
        // The step's loss is the first number of the last average (the ranks also average a flag when rank 0
        // prepares the folder): the ranks' mean loss (flips, dropout, SNR weights and all) is one process's.
        func loss(_ group: GradientCapturingGroup) throws -> Float { try XCTUnwrap(group.averaged.last)[0] }
        let mean = (try loss(rankZero) + loss(rankOne)) / 2
        XCTAssertEqual(mean, try loss(single), accuracy: try loss(single) * 1e-5)
        XCTAssertNotEqual(try loss(rankZero), try loss(rankOne), "the ranks train on different rows")
        let difference = GradientCapturingGroup.gradientDifference(ranks: [rankZero, rankOne], single: single)
        XCTAssertLessThan(difference, 1e-5, "mean of the 2 ranks' gradients against one process's")
        // Rank 0's generator ends the step where one process's does; rank 1 wrote no file.
        let singleState = try TrainingCheckpoint.readState(singleFolder + "/checkpoint-1")
        let rankState = try TrainingCheckpoint.readState(rankZeroFolder + "/checkpoint-1")
        XCTAssertEqual(rankState.generator, singleState.generator)
        XCTAssertEqual(rankState.dataLoader, singleState.dataLoader, "the data position is the global one")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: rankOneFolder), [])
    }
}
