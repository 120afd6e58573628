import Diffusion
import Foundation
import Tensors
import XCTest

/// Small, fast VAE training runs for the VAE trainer tests: the `tiny` preset on
/// 8×8 RGB images (4×4 latents).
enum VAETrainerFixtures {
    /// `count` smooth 8×8 RGB images: per image a random colour ramp plus a little noise.
    static func dataset(count: Int = 48, poisonedIndex: Int? = nil) -> InMemoryDataset {
        var generator = RandomGenerator(seed: 11)
        var values: [Float] = []
        for index in 0..<count {
            let slopes = (0..<3).map { _ in generator.uniform() * 2 - 1 }
            let offsets = (0..<3).map { _ in generator.uniform() - 0.5 }
            for channel in 0..<3 {
                for row in 0..<8 {
                    for column in 0..<8 {
                        let ramp = index % 2 == 0 ? Float(column) : Float(row)
                        let value = offsets[channel] + slopes[channel] * (ramp / 3.5 - 1) + 0.05 * generator.normal()
                        values.append(poisonedIndex == index ? .nan : Swift.max(-1, Swift.min(1, value)))
                    }
                }
            }
        }
        return InMemoryDataset(images: Tensor(values, shape: [count, 3, 8, 8]))
    }

    /// A tiny run into `outputDir`: accumulation 2, random flips, EMA, a checkpoint every `checkpointing` steps.
    static func options(outputDir: String, steps: Int, checkpointing: Int = 0) -> VAETrainingOptions {
        var options = VAETrainingOptions()
        options.dataset = "in-memory"
        options.model = .tiny
        options.resolution = 8
        options.outputDir = outputDir
        options.batchSize = 8
        options.gradientAccumulationSteps = 2
        options.randomFlip = true
        options.useEMA = true
        options.steps = steps
        options.learningRate = 3e-3
        options.warmupSteps = 2
        options.klWeight = 1e-3
        options.checkpointingSteps = checkpointing
        options.checkpointsTotalLimit = nil
        options.logEvery = 1000
        options.gridEvery = 0
        options.gridImages = 4
        options.scalingFactorImages = 32
        options.evaluationImages = 0
        options.prefetchBatches = 0
        options.seed = 5
        return options
    }

    /// A quiet trainer without signal handlers.
    static func trainer(_ options: VAETrainingOptions, dataset: Dataset = dataset()) throws -> VAETrainer {
        let trainer = try VAETrainer(options: options, dataset: dataset)
        trainer.silence()
        return trainer
    }
}
