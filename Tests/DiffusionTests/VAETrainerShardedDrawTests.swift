import TestSupport
import Diffusion
import Foundation
import Tensors
import XCTest

/// A stand-in process group that keeps what a trainer hands it: the gradients before they would be
/// averaged (every parameter's, concatenated, zeros for a missing one) and the numbers it averages.
/// It averages nothing, so a trainer playing rank r of `size` computes rank r's part of the first step.
final class GradientCapturingGroup: DataParallelGroup {
    let rank: Int, size: Int
    /// One entry per `averageGradients` call.
    var gradients: [[Float]] = []
    /// One entry per `average` call.
    var averaged: [[Float]] = []

    init(rank: Int, size: Int) {
        self.rank = rank
        self.size = size
    }

    func broadcast(_ tensors: [Tensor], from root: Int) throws {}
    func averageGradients(of parameters: [Tensor]) throws {
        gradients.append(parameters.flatMap { $0.grad?.toArray() ?? Array(repeating: 0, count: $0.count) })
    }
    func average(_ values: [Float]) throws -> [Float] {
        averaged.append(values)
        return values
    }
    func barrier() throws {}

    /// The largest difference between the mean of `ranks`' first gradients and `single`'s, relative to `single`'s largest.
    static func gradientDifference(ranks: [GradientCapturingGroup], single: GradientCapturingGroup) -> Float {
        let reference = single.gradients[0]
        let largest = reference.map(abs).max() ?? 0
        var worst: Float = 0
        for index in reference.indices {
            let mean = ranks.map { $0.gradients[0][index] }.reduce(0, +) / Float(ranks.count)
            worst = Swift.max(worst, abs(mean - reference[index]))
        }
        return worst / Swift.max(largest, 1e-30)
    }
}

/// Two ranks with batch B (each drawing the global batch's posterior noise and keeping its rows)
/// make, between them, the first step of one process with batch 2B: the mean of their losses and
/// gradients is the single process's. Each rank's first step is computed on its own here (the
/// group averages nothing), which is exactly rank r's part before the all-reduce.
final class VAETrainerShardedDrawTests: XCTestCase {
    /// Runs one step as `group`'s rank; returns the group and the output folder.
    private func firstStep(group: GradientCapturingGroup, batchSize: Int) throws -> (group: GradientCapturingGroup, folder: String) {
        let folder = try temporaryFolderPath("training")
        var options = VAETrainerFixtures.options(outputDir: folder, steps: 1)
        options.batchSize = batchSize
        let trainer = try VAETrainer(options: options, dataset: VAETrainerFixtures.dataset(), group: group)
        trainer.silence()
        _ = try trainer.run()
        XCTAssertEqual(group.gradients.count, 1, "one all-reduce for the step's 2 micro-batches")
        return (group, folder)
    }

    func testTwoRanksOfHalfTheBatchMakeTheFirstStepOfOneProcess() throws {
        let (single, singleFolder) = try firstStep(group: GradientCapturingGroup(rank: 0, size: 1), batchSize: 8)
        let (rankZero, rankZeroFolder) = try firstStep(group: GradientCapturingGroup(rank: 0, size: 2), batchSize: 4)
        let ranks = [rankZero, try firstStep(group: GradientCapturingGroup(rank: 1, size: 2), batchSize: 4).group]
        // [loss, reconstruction, kl, stop flag] of the step: the ranks' mean is one process's.
        for term in 0..<3 {
            let mean = (ranks[0].averaged[0][term] + ranks[1].averaged[0][term]) / 2
            XCTAssertEqual(mean, single.averaged[0][term], accuracy: abs(single.averaged[0][term]) * 1e-5, "term \(term)")
        }
        XCTAssertNotEqual(ranks[0].averaged[0][0], ranks[1].averaged[0][0], "the ranks train on different rows")
        let difference = GradientCapturingGroup.gradientDifference(ranks: ranks, single: single)
        XCTAssertLessThan(difference, 1e-5, "mean of the 2 ranks' gradients against one process's")
        // Rank 0 drew the whole global batch's noise: its generator ends the step where one process's does.
        let singleState = try TrainingCheckpoint.readState(singleFolder + "/checkpoint-1")
        let rankState = try TrainingCheckpoint.readState(rankZeroFolder + "/checkpoint-1")
        XCTAssertEqual(rankState.generator, singleState.generator)
        XCTAssertEqual(rankState.dataLoader, singleState.dataLoader, "the data position is the global one")
    }
}
