import TestSupport
import Diffusion
import Foundation
import Tensors
import XCTest

/// `train-clip` on 2 ranks of B pairs gathers the features, so each rank's contrastive loss has the
/// global batch's 2B pairs as negatives: the ranks compute one process's steps with 2B pairs. Two
/// simulated ranks (``LockstepGroup``: threads taking turns, collective calls in memory) run the
/// trainer's real data-parallel path; one process runs the unchanged single-process path.
/// (Measured 2026-12-06: gradients 3.1e-7 apart relative to the largest, the losses and the temperature's
/// gradient equal. With each rank's own pairs as its only negatives, as before the gather: step 1 loss
/// 3.79 against 4.62, gradients 0.33 apart, the temperature's gradient 2.68 against 3.01.)
final class CLIPTrainerGatherTests: XCTestCase {
    private static let tokenizer = WordTokenizer(words: ["a", "an", "photo", "of", "on", "background"]
                                                 + CaptionedTintedDataset.itemNames.flatMap { $0.split(separator: " ").map(String.init) }
                                                 + NamedColor.allCases.map(\.name))

    private static func dataset() -> CaptionedTintedDataset {
        var generator = RandomGenerator(seed: 1)
        let images = Tensor.rand([64, 1, 28, 28], low: -1, high: 1, generator: &generator)
        let base = InMemoryDataset(images: images, labels: (0..<64).map { $0 % 10 }, classNames: FashionMNIST.classNames)
        return CaptionedTintedDataset(base: base, seed: 0, itemNames: CaptionedTintedDataset.itemNames)
    }

    /// Trains `steps` steps of the tiny CLIP with `batchSize` pairs per rank on `size` simulated ranks.
    private func train(size: Int, batchSize: Int, steps: Int) throws -> [(group: LockstepGroup, result: [CLIPTrainer.StepResult])] {
        let folder = try temporaryFolderPath("distributed")
        let dataset = Self.dataset()
        return try LockstepGroup.run(size: size) { group in
            var options = CLIPTrainingOptions()
            options.model = .tiny
            options.outputDir = folder
            options.batchSize = batchSize
            options.steps = steps
            options.learningRate = 3e-3
            options.warmupSteps = 1
            options.checkpointingSteps = 0
            options.logEvery = 1000
            options.prefetchBatches = 0
            let trainer = try CLIPTrainer(options: options, tokenizer: Self.tokenizer, dataset: dataset, group: group)
            trainer.silence()
            var results: [CLIPTrainer.StepResult] = []
            trainer.onStep = { results.append($0) }
            _ = try trainer.run()
            return results
        }
    }

    func testTwoRanksOfHalfTheBatchComputeOneProcessSteps() throws {
        let single = try train(size: 1, batchSize: 16, steps: 2)[0]
        let ranks = try train(size: 2, batchSize: 8, steps: 2)
        XCTAssertEqual(single.group.calls.filter { $0 == "allGather" || $0 == "sum" }, [], "one process gathers nothing")
        let perStep = ranks[1].group.calls.filter { ["allGather", "sum", "averageGradients"].contains($0) }
        XCTAssertEqual(perStep, ["allGather", "sum", "averageGradients", "allGather", "sum", "averageGradients"])

        // The first step's averaged gradient (every parameter, the temperature included) is one process's.
        let reference = single.group.averagedGradients[0]
        let gradients = ranks[0].group.averagedGradients[0]
        XCTAssertEqual(gradients, ranks[1].group.averagedGradients[0], "every rank holds the same averaged gradient")
        let largest = reference.map(abs).max() ?? 0
        let difference = zip(gradients, reference).map { abs($0 - $1) }.max() ?? .infinity
        XCTAssertLessThan(difference / largest, 1e-5, "largest gradient difference relative to the largest gradient \(largest)")
        // The temperature's gradient apart: the one a loss normalised per rank without care would count N times.
        let temperature = try XCTUnwrap(temperatureGradientIndex())
        XCTAssertEqual(gradients[temperature], reference[temperature], accuracy: abs(reference[temperature]) * 1e-5, "logit_scale's gradient")

        for (singleStep, rankStep) in zip(single.result, ranks[0].result) {
            XCTAssertEqual(rankStep.loss, singleStep.loss, accuracy: singleStep.loss * 1e-6, "step \(singleStep.step) loss")
            XCTAssertEqual(rankStep.accuracy, singleStep.accuracy, "step \(singleStep.step) batch accuracy")
            XCTAssertEqual(rankStep.gradientNorm, singleStep.gradientNorm, accuracy: singleStep.gradientNorm * 1e-5, "step \(singleStep.step) gradient norm")
        }
        XCTAssertEqual(ranks[0].result.map(\.loss), ranks[1].result.map(\.loss), "every rank logs the same averaged loss")
    }

    /// Where `logit_scale`'s gradient sits in the concatenated gradients of the parameters the trainer averages.
    private func temperatureIndex(in trainer: CLIPTrainer) -> Int? {
        var offset = 0
        for parameter in trainer.gradientAverage.parameters {
            if parameter === trainer.model.logitScale { return offset }
            offset += parameter.count
        }
        return nil
    }

    private func temperatureGradientIndex() throws -> Int? {
        let folder = try temporaryFolderPath("distributed")
        var options = CLIPTrainingOptions()
        options.model = .tiny
        options.outputDir = folder
        options.batchSize = 16
        options.prefetchBatches = 0
        let trainer = try CLIPTrainer(options: options, tokenizer: Self.tokenizer, dataset: Self.dataset(), group: SingleProcessGroup())
        return temperatureIndex(in: trainer)
    }
}
