import TestSupport
import Diffusion
import Foundation
import Tensors
import XCTest

/// Where the trainers call the group: a group that records the calls (and plays rank 1 of 2,
/// the other rank's gradients taken equal to this one's) shows the hooks of `diffuse train`.
final class TrainerHookTests: XCTestCase {
    final class RecordingGroup: DataParallelGroup {
        let rank: Int, size: Int
        var calls: [String] = []
        init(rank: Int, size: Int) { (self.rank, self.size) = (rank, size) }
        func broadcast(_ tensors: [Tensor], from root: Int) throws { calls.append("broadcast \(tensors.count) from \(root)") }
        func averageGradients(of parameters: [Tensor]) throws {
            calls.append("gradients")
            XCTAssertTrue(parameters.allSatisfy { $0.grad != nil }, "averaged before every micro-batch's backward pass")
        }
        func average(_ values: [Float]) throws -> [Float] { calls.append("average \(values.count)"); return values }
        func barrier() throws { calls.append("barrier") }
    }

    /// A group that overlaps: records when the trainer starts and finishes an average and
    /// which parameters the backward pass reported before the finish.
    final class OverlappingGroup: DataParallelGroup {
        final class Averaging: GradientAveraging {
            unowned let group: OverlappingGroup
            let parameters: [Tensor]
            var reported: Set<ObjectIdentifier> = []
            init(group: OverlappingGroup, parameters: [Tensor]) { (self.group, self.parameters) = (group, parameters) }
            func gradientReady(_ parameter: Tensor) {
                XCTAssertNotNil(parameter.grad, "reported without a gradient")
                reported.insert(ObjectIdentifier(parameter))
            }
            func finish() throws {
                group.calls.append("finish")
                XCTAssertEqual(reported, Set(parameters.map(ObjectIdentifier.init)), "every trainable parameter reported by the backward pass")
            }
        }
        let rank = 1, size = 2
        var calls: [String] = []
        func broadcast(_ tensors: [Tensor], from root: Int) throws {}
        func averageGradients(of parameters: [Tensor]) throws { calls.append("gradients") }
        func startAveragingGradients(of parameters: [Tensor]) throws -> (any GradientAveraging)? {
            calls.append("start")
            return Averaging(group: self, parameters: parameters)
        }
        func average(_ values: [Float]) throws -> [Float] { values }
        func barrier() throws {}
    }

    /// 3 steps of 2 micro-batches of 4, a checkpoint at step 2.
    private func trainer(folder: String, group: DataParallelGroup) throws -> Trainer {
        let yaml = TinyPixelTraining.yaml(outputDir: folder, steps: 3, accumulation: 2, checkpointingSteps: 2)
        return try TinyPixelTraining.trainer(yaml: yaml, dataset: TinyPixelTraining.dataset(), group: group)
    }

    func testAnOverlappingGroupStartsOnTheLastMicroBatchAndFinishesBeforeTheStep() throws {
        let folder = try temporaryFolderPath("distributed")
        let group = OverlappingGroup()
        let trainer = try self.trainer(folder: folder, group: group)
        XCTAssertEqual(try trainer.run().step, 3)
        XCTAssertEqual(group.calls, ["start", "finish", "start", "finish", "start", "finish"],
                       "2 micro-batches per step: started during the second one's backward pass only, never averaged again")
    }

    func testRankOneCommunicatesOncePerOptimizerStepAndWritesNothing() throws {
        let folder = try temporaryFolderPath("distributed")
        let group = RecordingGroup(rank: 1, size: 2)
        let trainer = try self.trainer(folder: folder, group: group)
        XCTAssertEqual(trainer.loader.shard, DataLoaderShard(rank: 1, count: 2))
        XCTAssertEqual(trainer.stepsPerEpoch, 4, "64 images in global batches of 2 × 4, 2 per step")
        let summary = try trainer.run()
        XCTAssertEqual(summary.step, 3)
        // Rank 0 prepares the output folder (rank 1 waits), then the weights are broadcast, then training.
        let broadcast = "broadcast \(trainer.unet.parameters().count) from 0"
        XCTAssertEqual(Array(group.calls.prefix(3)), ["barrier", "average 1", broadcast])
        XCTAssertEqual(group.calls.filter { $0 == broadcast }.count, 1)
        XCTAssertEqual(group.calls.filter { $0 == "gradients" }.count, 3, "one all-reduce per optimizer step, not per micro-batch")
        XCTAssertEqual(group.calls.filter { $0 == "average 2" }.count, 3, "loss and stop flag once per step")
        // Rank 1 waits for rank 0's files (output folder, checkpoints 2 and 3, grid, pipeline) and writes none.
        XCTAssertGreaterThanOrEqual(group.calls.filter { $0 == "barrier" }.count, 5)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder), [])
        XCTAssertEqual(summary.lastCheckpoint, folder + "/checkpoint-3")
    }

    func testRankZeroWritesTheFilesOfARun() throws {
        let folder = try temporaryFolderPath("distributed")
        let group = RecordingGroup(rank: 0, size: 2)
        let trainer = try self.trainer(folder: folder, group: group)
        _ = try trainer.run()
        XCTAssertEqual(TrainingCheckpoint.list(in: folder).map(\.step), [2, 3])
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder + "/logs/train.jsonl"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder + "/model_index.json"))
        let state = try TrainingCheckpoint.readState(folder + "/checkpoint-3")
        XCTAssertEqual(state.dataLoader, DataLoaderPosition(epoch: 0, offset: 48), "3 steps × 2 micro-batches × global batch 8")
    }
}
