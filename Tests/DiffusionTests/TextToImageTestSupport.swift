import Diffusion
import Foundation
import Tensors
import XCTest

/// Captioned images held in memory, for the text-to-image trainer's tests.
final class TextToImageTestDataset: Dataset {
    let images: Tensor
    let captions: [String]

    init(images: Tensor, captions: [String]) {
        self.images = images
        self.captions = captions
    }

    var count: Int { captions.count }
    var classNames: [String] { [] }
    func example(at index: Int) throws -> DatasetExample {
        DatasetExample(image: images.narrowed(axis: 0, start: index, length: 1).reshaped(Array(images.shape.dropFirst())).contiguousCopy(),
                       caption: captions[index])
    }
}

enum TextToImageFixtures {
    /// The tiny Stable Diffusion pipeline of `Tests/Fixtures/sd-pipeline/tiny` (diffusers 0.42 saved it).
    static let tiny = StableDiffusionParityTests.tiny.path
    /// Captions of ``dataset(count:seed:)``.
    static let captionWords = ["a red shirt", "a blue dress", "a green bag", "a yellow sneaker"]

    /// `count` smooth 32×32 RGB images, each a colour ramp of its caption's index.
    static func dataset(count: Int = 12, seed: UInt64 = 7) -> TextToImageTestDataset {
        var generator = RandomGenerator(seed: seed)
        var values: [Float] = []
        var captions: [String] = []
        for index in 0..<count {
            let kind = index % captionWords.count
            captions.append(captionWords[kind])
            for channel in 0..<3 {
                for row in 0..<32 {
                    for column in 0..<32 {
                        let ramp = Float(kind == channel ? row : column) / 31
                        values.append(Swift.max(-1, Swift.min(1, ramp * 2 - 1 + (generator.uniform() - 0.5) * 0.1)))
                    }
                }
            }
        }
        return TextToImageTestDataset(images: Tensor(values, shape: [count, 3, 32, 32]), captions: captions)
    }

    /// Options of a short fine-tuning run of the tiny pipeline into `outputDir`.
    static func options(outputDir: String, steps: Int = 6, lora: Bool = false) -> TextToImageTrainingOptions {
        var options = TextToImageTrainingOptions()
        options.from = tiny
        options.resolution = 32
        options.outputDir = outputDir
        options.trainBatchSize = 2
        options.gradientAccumulationSteps = 2
        options.maxTrainSteps = steps
        options.learningRate = 1e-3
        options.lrWarmupSteps = 0
        options.checkpointingSteps = 2
        options.randomFlip = true
        options.captionDropout = 0.2
        options.snrGamma = 5
        options.noiseOffset = 0.05
        options.useEMA = !lora
        options.loraRank = lora ? 4 : nil
        options.trainTextEncoderLoRA = lora
        return options
    }

    static func trainer(_ options: TextToImageTrainingOptions, dataset: Dataset = dataset()) throws -> TextToImageTrainer {
        let trainer = try TextToImageTrainer(options: options, dataset: dataset, message: { _ in })
        trainer.silence()
        return trainer
    }

    /// The loss of every step in `outputDir/logs/train.jsonl`.
    static func losses(outputDir: String) throws -> [Int: Float] {
        let text = try String(contentsOfFile: (outputDir as NSString).appendingPathComponent("logs/train.jsonl"), encoding: .utf8)
        var losses: [Int: Float] = [:]
        for line in text.split(separator: "\n") {
            guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  object["event"] == nil, let step = object["step"] as? Int, let loss = object["loss"] as? Double else { continue }
            losses[step] = Float(loss)
        }
        return losses
    }
}
