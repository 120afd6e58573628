import Foundation
import NN
import Tensors

/// How well a CLIP trained on ``CaptionedTintedDataset`` reads the Fashion-MNIST
/// test split (tinted the same way, with colours the training split never pairs
/// with these images):
///
/// - zero-shot accuracy: the class whose prompt "a photo of a {item}" scores highest;
/// - foreground colour accuracy: among "a {colour} {item}" for the true item and
///   the 11 named colours, the true foreground colour scores highest;
/// - background colour accuracy: the same with "a {item} on a {colour} background";
/// - full-caption accuracy: among all 10 × 11 × 10 captions
///   "a {colour} {item} on a {colour} background", the true one scores highest.
///
/// Every task is also scored with a few other prompt wordings (`variants`).
public struct CLIPEvaluation: Sendable {
    /// One task scored with one prompt wording.
    public struct Score: Sendable, Equatable {
        public var task: String
        public var prompt: String
        public var accuracy: Double
    }

    public var imageCount: Int
    public var zeroShotAccuracy: Double
    /// Zero-shot accuracy of each class, by label.
    public var zeroShotAccuracyPerClass: [Double]
    public var foregroundColorAccuracy: Double
    public var backgroundColorAccuracy: Double
    public var fullCaptionAccuracy: Double
    /// Every task with every wording tried (the headline ones included).
    public var variants: [Score]
    public var seconds: Double

    /// The numbers as `eval.json` holds them.
    public var jsonObject: [String: JSONValue] {
        [
            "test_images": .int(imageCount),
            "zero_shot_accuracy": .double(Self.rounded(zeroShotAccuracy)),
            "zero_shot_prompt": .string("a photo of a {item}"),
            "zero_shot_accuracy_per_class": .object(Dictionary(uniqueKeysWithValues: zip(CaptionedTintedDataset.itemNames, zeroShotAccuracyPerClass)
                .map { ($0, .double(Self.rounded($1))) })),
            "foreground_color_accuracy": .double(Self.rounded(foregroundColorAccuracy)),
            "foreground_color_prompt": .string("a {color} {item}"),
            "background_color_accuracy": .double(Self.rounded(backgroundColorAccuracy)),
            "background_color_prompt": .string("a {item} on a {color} background"),
            "full_caption_accuracy": .double(Self.rounded(fullCaptionAccuracy)),
            "full_caption_prompt": .string("a {color} {item} on a {color} background"),
            "colors": .array(NamedColor.allCases.map { .string($0.name) }),
            "prompt_variants": .array(variants.map { score in
                .object(["task": .string(score.task), "prompt": .string(score.prompt), "accuracy": .double(Self.rounded(score.accuracy))])
            }),
            "evaluation_seconds": .double((seconds * 10).rounded() / 10),
        ]
    }

    static func rounded(_ value: Double) -> Double { (value * 10000).rounded() / 10000 }

    /// What to tell a person.
    public var reportLines: [String] {
        [
            String(format: "zero-shot accuracy on %d Fashion-MNIST test images: %.1f%% (\"a photo of a {item}\")", imageCount, zeroShotAccuracy * 100),
            String(format: "foreground colour retrieval: %.1f%% (\"a {color} {item}\", 11 colours)", foregroundColorAccuracy * 100),
            String(format: "background colour retrieval: %.1f%% (\"a {item} on a {color} background\", 11 colours)", backgroundColorAccuracy * 100),
            String(format: "full caption retrieval: %.1f%% (1100 captions \"a {color} {item} on a {color} background\")", fullCaptionAccuracy * 100),
        ]
    }
}

/// Computes ``CLIPEvaluation``.
public enum CLIPEvaluator {
    /// Unit-length text embeddings `[prompts, projection]` of `prompts`.
    public static func textEmbeddings(_ model: CLIPModel, tokenizer: CaptionTokenizing, prompts: [String], batchSize: Int = 256) -> Tensor {
        var parts: [Tensor] = []
        for start in stride(from: 0, to: prompts.count, by: batchSize) {
            let slice = Array(prompts[start..<Swift.min(start + batchSize, prompts.count)])
            let tokens = tokenizer.encode(slice)
            parts.append(noGrad { CLIPModel.normalized(model.textFeatures(ids: tokens.ids, batch: tokens.count, attentionMask: tokens.attentionMask)) })
        }
        return noGrad { Tensor.concatenate(parts, axis: 0) }
    }

    /// Unit-length image embeddings of CLIP-normalised `pixels` `[N, 3, S, S]`, `batchSize` at a time.
    public static func imageEmbeddings(_ model: CLIPModel, pixels: Tensor, batchSize: Int = 250) -> Tensor {
        var parts: [Tensor] = []
        let count = pixels.shape[0]
        for start in stride(from: 0, to: count, by: batchSize) {
            let slice = pixels.narrowed(axis: 0, start: start, length: Swift.min(batchSize, count - start)).contiguous()
            parts.append(noGrad { CLIPModel.normalized(model.imageFeatures(slice)) })
        }
        return noGrad { Tensor.concatenate(parts, axis: 0) }
    }

    /// The first `count` images of `dataset` as CLIP pixels `[count, 3, size, size]`, with their descriptions.
    public static func images(of dataset: CaptionedTintedDataset, count: Int, size: Int) throws -> (pixels: Tensor, descriptions: [CaptionedTintedDataset.Description]) {
        let transform = CLIPImageNormalization.transform(size: size)
        var generator = RandomGenerator(seed: 0)
        var images: [Tensor] = []
        var descriptions: [CaptionedTintedDataset.Description] = []
        for index in 0..<Swift.min(count, dataset.count) {
            let example = try dataset.example(at: index)
            let image = transform.apply(example.image, generator: &generator)
            images.append(image.reshaped([1] + image.shape))
            descriptions.append(dataset.description(of: index, label: example.label ?? 0))
        }
        return (noGrad { Tensor.concatenate(images, axis: 0) }, descriptions)
    }

    /// Scores the first `count` images of `dataset` (the test split).
    public static func evaluate(_ model: CLIPModel, tokenizer: CaptionTokenizing, dataset: CaptionedTintedDataset, count: Int) throws -> CLIPEvaluation {
        let start = Date()
        model.eval()
        defer { model.train() }
        let (pixels, descriptions) = try images(of: dataset, count: count, size: model.configuration.vision.imageSize)
        let imageVectors = imageEmbeddings(model, pixels: pixels)
        let items = dataset.itemNames
        let colors = NamedColor.allCases
        let article = IndefiniteArticle.with

        /// Accuracy when each image's candidates are `candidates(description)` (indices into
        /// `prompts`) and the right one is `answer(description)`.
        func score(task: String, prompt: String, prompts: [String], candidates: (CaptionedTintedDataset.Description) -> [Int],
                   answer: (CaptionedTintedDataset.Description) -> Int) -> (CLIPEvaluation.Score, [Bool]) {
            let textVectors = textEmbeddings(model, tokenizer: tokenizer, prompts: prompts)
            let similarities = noGrad { imageVectors.matmul(textVectors.transposed(0, 1)).contiguous() }.toArray()
            let width = prompts.count
            var correct: [Bool] = []
            for (row, description) in descriptions.enumerated() {
                let options = candidates(description)
                let best = options.max { similarities[row * width + $0] < similarities[row * width + $1] }!
                correct.append(best == answer(description))
            }
            let accuracy = Double(correct.filter { $0 }.count) / Double(Swift.max(1, correct.count))
            return (CLIPEvaluation.Score(task: task, prompt: prompt, accuracy: accuracy), correct)
        }

        var variants: [CLIPEvaluation.Score] = []
        // Zero-shot classification: one prompt per class.
        let classTemplates: [(String, (String) -> String)] = [
            ("a photo of a {item}", { "a photo of \(article($0))" }), ("a {item}", { article($0) }), ("{item}", { $0 }),
        ]
        var zeroShot: [Bool] = []
        for (name, template) in classTemplates {
            let (result, correct) = score(task: "zero_shot", prompt: name, prompts: items.map(template), candidates: { _ in Array(items.indices) },
                                          answer: { $0.label })
            variants.append(result)
            if zeroShot.isEmpty { zeroShot = correct }
        }
        // Foreground colour: prompts indexed item * colours + colour.
        let foregroundTemplates: [(String, (String, NamedColor) -> String)] = [
            ("a {color} {item}", { article("\($1.name) \($0)") }),
            ("a photo of a {color} {item}", { "a photo of \(article("\($1.name) \($0)"))" }),
        ]
        func colorCandidates(_ description: CaptionedTintedDataset.Description) -> [Int] {
            colors.indices.map { description.label * colors.count + $0 }
        }
        for (name, template) in foregroundTemplates {
            let prompts = items.flatMap { item in colors.map { template(item, $0) } }
            variants.append(score(task: "foreground_color", prompt: name, prompts: prompts, candidates: colorCandidates,
                                  answer: { $0.label * colors.count + colors.firstIndex(of: $0.foreground)! }).0)
        }
        let backgroundTemplates: [(String, (String, NamedColor) -> String)] = [
            ("a {item} on a {color} background", { "\(article($0)) on \(article($1.name)) background" }),
            ("a {item} on {color}", { "\(article($0)) on \($1.name)" }),
        ]
        for (name, template) in backgroundTemplates {
            let prompts = items.flatMap { item in colors.map { template(item, $0) } }
            variants.append(score(task: "background_color", prompt: name, prompts: prompts, candidates: colorCandidates,
                                  answer: { $0.label * colors.count + colors.firstIndex(of: $0.background)! }).0)
        }
        // Full captions: every item, foreground and different background.
        var fullPrompts: [String] = []
        var fullIndex: [String: Int] = [:]
        for item in items {
            for foreground in colors {
                for background in colors where background != foreground {
                    let caption = CaptionedTintedDataset.CaptionTemplate.foregroundOnBackground.caption(item: item, foreground: foreground, background: background)
                    fullIndex[caption] = fullPrompts.count
                    fullPrompts.append(caption)
                }
            }
        }
        let everything = Array(fullPrompts.indices)
        variants.append(score(task: "full_caption", prompt: "a {color} {item} on a {color} background", prompts: fullPrompts,
                              candidates: { _ in everything },
                              answer: { fullIndex[CaptionedTintedDataset.CaptionTemplate.foregroundOnBackground.caption(item: $0.item, foreground: $0.foreground, background: $0.background)]! }).0)

        var perClass = [Double](repeating: 0, count: items.count)
        var perClassCount = [Int](repeating: 0, count: items.count)
        for (description, correct) in zip(descriptions, zeroShot) {
            perClassCount[description.label] += 1
            if correct { perClass[description.label] += 1 }
        }
        func first(_ task: String) -> Double { variants.first { $0.task == task }?.accuracy ?? 0 }
        return CLIPEvaluation(imageCount: descriptions.count, zeroShotAccuracy: first("zero_shot"),
                              zeroShotAccuracyPerClass: zip(perClass, perClassCount).map { $1 > 0 ? $0 / Double($1) : 0 },
                              foregroundColorAccuracy: first("foreground_color"), backgroundColorAccuracy: first("background_color"),
                              fullCaptionAccuracy: first("full_caption"), variants: variants, seconds: Date().timeIntervalSince(start))
    }
}
