import Diffusion
import Foundation
import Tensors
import XCTest

/// Small, fast training runs for the Training tests: the `tiny` UNet on 8×8
/// synthetic images of three classes.
enum TrainingFixtures {
    /// 96 smooth 8×8 images: class k is a horizontal, vertical or diagonal ramp with noise.
    static func dataset(count: Int = 96, poisonedIndex: Int? = nil) -> InMemoryDataset {
        var generator = RandomGenerator(seed: 42)
        var values: [Float] = []
        var labels: [Int] = []
        for index in 0..<count {
            let label = index % 3
            labels.append(label)
            for row in 0..<8 {
                for column in 0..<8 {
                    let ramp: Float = label == 0 ? Float(column) : label == 1 ? Float(row) : Float(row + column) / 2
                    let value = ramp / 3.5 - 1 + 0.1 * generator.normal()
                    values.append(Swift.max(-1, Swift.min(1, value)))
                }
            }
        }
        if let poisonedIndex {
            for offset in 0..<64 { values[poisonedIndex * 64 + offset] = .nan }
        }
        return InMemoryDataset(images: Tensor(values, shape: [count, 1, 8, 8]), labels: labels, classNames: ["horizontal", "vertical", "diagonal"])
    }

    /// A tiny class-conditional run writing to `outputDir`.
    static func yaml(outputDir: String, steps: Int = 24, checkpointing: Int = 4, limit: Int? = nil) -> String {
        """
        model: tiny
        image_size: 8
        train_batch_size: 8
        eval_batch_size: 3
        max_train_steps: \(steps)
        gradient_accumulation_steps: 2
        learning_rate: 2.0e-3
        lr_warmup_steps: 3
        lr_scheduler: cosine
        save_image_epochs: 100
        save_model_epochs: 100
        eval_inference_steps: 4
        num_train_timesteps: 100
        class_conditional: true
        condition_dropout: 0.2
        use_ema: true
        checkpointing_steps: \(checkpointing)
        checkpoints_total_limit: \(limit.map(String.init) ?? "null")
        output_dir: \(outputDir)
        seed: 7
        """
    }

    /// A trainer for `yaml` with quiet output and no signal handlers.
    static func trainer(yaml: String, overrides: [(key: String, value: String)] = [], dataset: Dataset = dataset()) throws -> Trainer {
        let configuration = try TrainingConfiguration.load(yaml: yaml, overrides: overrides)
        let trainer = try Trainer(configuration: configuration, dataset: dataset)
        trainer.silence()
        return trainer
    }

    /// Loss by step from `logs/train.jsonl` (the last line of each step wins, as a resumed run rewrites steps).
    static func losses(outputDir: String) throws -> [Int: Float] {
        let text = try String(contentsOfFile: (outputDir as NSString).appendingPathComponent("logs/train.jsonl"), encoding: .utf8)
        var result: [Int: Float] = [:]
        for line in text.split(separator: "\n") {
            guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  object["event"] == nil, let step = object["step"] as? Int, let loss = object["loss"] as? Double else { continue }
            result[step] = Float(loss)
        }
        return result
    }
}
