import Diffusion
import Foundation
import Tensors
import XCTest

/// The pixel trainer these tests run on simulated ranks: the tiny UNet on random 8×8 grey images,
/// 50 timesteps, no sample grids or model saves during the run, seed 3, silenced.
enum TinyPixelTraining {
    /// `count` random 8×8 grey images in [-1, 1] (seed 1).
    static func dataset(count: Int = 64) -> InMemoryDataset {
        var generator = RandomGenerator(seed: 1)
        return InMemoryDataset(images: Tensor.rand([count, 1, 8, 8], low: -1, high: 1, generator: &generator))
    }

    /// The YAML of a run writing to `outputDir`; `model` is the YAML of the `model:` key.
    static func yaml(outputDir: String, batchSize: Int = 4, steps: Int = 2, accumulation: Int = 1,
                     checkpointingSteps: Int? = nil, model: String = "tiny") -> String {
        """
        model: \(model)
        image_size: 8
        train_batch_size: \(batchSize)
        eval_batch_size: 2
        max_train_steps: \(steps)
        gradient_accumulation_steps: \(accumulation)
        lr_warmup_steps: 1
        save_image_epochs: 100
        save_model_epochs: 100
        eval_inference_steps: 2
        num_train_timesteps: 50
        \(checkpointingSteps.map { "checkpointing_steps: \($0)" } ?? "")
        output_dir: \(outputDir)
        seed: 3
        """
    }

    /// A silenced trainer of `yaml` on `dataset` in `group`.
    static func trainer(yaml: String, dataset: Dataset, group: DataParallelGroup) throws -> Trainer {
        let trainer = try Trainer(configuration: TrainingConfiguration.load(yaml: yaml), dataset: dataset, group: group)
        trainer.silence()
        return trainer
    }
}
