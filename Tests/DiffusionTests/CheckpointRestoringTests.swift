@testable import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// What the four trainers share around a checkpoint (`CheckpointRestoring.swift`): the pruning
/// and its log line, the data-position check, the EMA restore with its fallback, and the
/// averaged weights swapped in and back.
final class CheckpointRestoringTests: XCTestCase {
    func testPruningKeepsTheNewestAndLogsWhatWasRemoved() throws {
        let folder = try temporaryFolderPath("checkpoints")
        for step in [2, 4, 6] {
            _ = try TrainingCheckpoint.write(step: step, in: folder) { temporary in
                try TrainingCheckpoint.writeJSON(TrainerState(step: step, dataLoader: DataLoaderPosition(epoch: 0, offset: step), generator: RandomGenerator(seed: 1),
                                                              dropoutGenerators: [:], learningRate: 0.1, loss: nil),
                                                 to: (temporary as NSString).appendingPathComponent(TrainingCheckpoint.stateFile))
            }
        }
        var messages: [String] = []
        let log = try TrainingLog(outputDir: folder, tensorBoard: false, progressOutput: nil) { messages.append($0) }
        TrainingCheckpoint.pruneAndLog(folder + "/checkpoint-6", step: 6, in: folder, keeping: 1, log: log)
        XCTAssertEqual(TrainingCheckpoint.list(in: folder).map(\.step), [6])
        XCTAssertEqual(messages, ["checkpoint \(folder)/checkpoint-6 (removed checkpoint-2, checkpoint-4)"])
        let lines = try String(contentsOfFile: folder + "/logs/train.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 1)
        XCTAssertTrue(lines[0].contains("\"event\":\"checkpoint\"") || lines[0].contains("\"event\": \"checkpoint\""), String(lines[0]))
        // Without a limit nothing is removed and the line names nothing.
        TrainingCheckpoint.pruneAndLog(folder + "/checkpoint-6", step: 6, in: folder, keeping: nil, log: log)
        XCTAssertEqual(messages.last, "checkpoint \(folder)/checkpoint-6")
    }

    func testADataPositionBeyondTheDatasetIsACorruptCheckpoint() throws {
        let state = TrainerState(step: 3, dataLoader: DataLoaderPosition(epoch: 1, offset: 40), generator: RandomGenerator(seed: 1),
                                 dropoutGenerators: [:], learningRate: 0.1, loss: nil)
        XCTAssertNoThrow(try TrainingCheckpoint.checkDataPosition(state, datasetCount: 40))
        XCTAssertThrowsError(try TrainingCheckpoint.checkDataPosition(state, datasetCount: 39, noun: "images")) { error in
            XCTAssertTrue("\(error)".contains("beyond a dataset of 39 images"), "\(error)")
        }
    }

    func testTheAverageIsRestoredOrStartsFromTheWeightsAndIsSwappedBack() throws {
        let folder = try temporaryFolderPath("ema")
        let weight = Tensor([1, 2, 3])
        let average = ExponentialMovingAverage(parameters: [weight])
        average.shadowParameters[0].copyValues(from: Tensor([7, 8, 9]))
        // A checkpoint without an EMA file: the average starts from the weights, with a warning.
        var messages: [String] = []
        try average.restore(fromCheckpoint: folder, parameters: [weight]) { messages.append($0) }
        XCTAssertEqual(average.shadowParameters[0].toArray(), [1, 2, 3])
        XCTAssertEqual(messages.count, 1)
        XCTAssertTrue(messages[0].contains("has no EMA weights"), messages[0])
        // With one: its values are loaded, silently.
        let saved = ExponentialMovingAverage(parameters: [Tensor([4, 5, 6])])
        try Safetensors.save(saved.state, to: (folder as NSString).appendingPathComponent(TrainingCheckpoint.emaFile))
        try average.restore(fromCheckpoint: folder, parameters: [weight]) { messages.append($0) }
        XCTAssertEqual(average.shadowParameters[0].toArray(), [4, 5, 6])
        XCTAssertEqual(messages.count, 1)
        // The averaged weights are in place inside the body only.
        let inside = ExponentialMovingAverage.withAveragedWeights(average, in: [weight]) { weight.toArray() }
        XCTAssertEqual(inside, [4, 5, 6])
        XCTAssertEqual(weight.toArray(), [1, 2, 3])
        XCTAssertEqual(ExponentialMovingAverage.withAveragedWeights(nil, in: [weight]) { weight.toArray() }, [1, 2, 3])
    }
}
