import Foundation
import NN
import Tensors

/// `diffuse train-clip`: contrastive CLIP training from scratch (``CLIPTrainer``),
/// then — for the built-in captioned dataset — the evaluation on the
/// Fashion-MNIST test split (``CLIPEvaluator``), `eval.json`, and a small file
/// of embeddings for checking the folder against transformers
/// (`Scripts/check-clip-interop`).
public enum CLIPTraining {
    /// What a run produced.
    public struct Outcome: Sendable {
        public let summary: CLIPTrainingSummary
        /// The test-split scores (nil: interrupted, a folder dataset, or `evaluationCount` 0).
        public let evaluation: CLIPEvaluation?
        /// `eval.json` and the interop embeddings file, when written.
        public let evaluationPath: String?
        public let interopPath: String?

        /// What to tell a person.
        public var reportLines: [String] {
            var lines: [String] = []
            let loss = summary.finalLoss.map { String(format: ", last loss %.4f", $0) } ?? ""
            lines.append((summary.interrupted ? "stopped at step \(summary.step) of \(summary.totalSteps)" : "trained \(summary.step) steps")
                         + loss + String(format: "; training %.0f s for %d steps this run (%.0f s in all)",
                                         summary.trainingSeconds, summary.stepsThisRun, summary.seconds))
            if !summary.interrupted {
                lines.append("model:       \(summary.outputDir)  (transformers CLIPModel + CLIPTokenizer + CLIPImageProcessor)")
            }
            if let lastCheckpoint = summary.lastCheckpoint {
                lines.append("checkpoint:  \(lastCheckpoint)" + (summary.interrupted ? "  (continue with --resume latest)" : ""))
            }
            if let evaluation { lines += evaluation.reportLines }
            if let evaluationPath { lines.append("evaluation:  \(evaluationPath)") }
            lines.append("logs:        \(summary.logDirectory)  (tensorboard --logdir \(summary.logDirectory); train.jsonl)")
            return lines
        }
    }

    /// The training (or test) data of `options`: the built-in captioned dataset or an image folder with captions.
    public static func openDataset(_ options: CLIPTrainingOptions, training: Bool) throws -> Dataset {
        if options.usesBuiltInDataset {
            return try CaptionedTintedDataset.fashionMNIST(training: training, limit: training ? options.datasetLimit : nil, seed: options.seed,
                                                           heldOutPairs: training ? Set(options.heldOutPairs ?? []) : [])
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: options.dataset, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw DatasetError.notInstalled(name: options.dataset,
                                            hint: "it is neither \(CaptionedTintedDataset.name) nor an image folder with a metadata.jsonl of captions")
        }
        let folder = try ImageFolderDataset(directory: options.dataset)
        guard folder.captions.contains(where: { $0 != nil }) else {
            throw TrainingError.data("\(options.dataset) has no captions: CLIP training needs a metadata.jsonl with {\"file_name\": …, \"text\": …} lines")
        }
        return folder
    }

    /// Trains, saves the model folder, evaluates and writes `eval.json`.
    /// - Parameter configure: adjusts the trainer before it runs (progress output, signal handling).
    public static func run(_ options: CLIPTrainingOptions, tokenizer: CaptionTokenizing,
                           configure: ((CLIPTrainer) -> Void)? = nil) throws -> Outcome {
        let trainer = try CLIPTrainer(options: options, tokenizer: tokenizer)
        configure?(trainer)
        let summary = try trainer.run()
        guard !summary.interrupted, options.usesBuiltInDataset, options.evaluationCount > 0 else {
            return Outcome(summary: summary, evaluation: nil, evaluationPath: nil, interopPath: nil)
        }
        let test = try CaptionedTintedDataset.fashionMNIST(training: false, seed: options.seed)
        trainer.message("evaluating on \(Swift.min(options.evaluationCount, test.count)) test images …")
        let evaluation = try CLIPEvaluator.evaluate(trainer.model, tokenizer: tokenizer, dataset: test, count: options.evaluationCount)
        let folder = URL(fileURLWithPath: options.outputDir)
        var members = evaluation.jsonObject
        members["training"] = .object([
            "steps": .int(summary.step), "batch_size": .int(options.batchSize), "learning_rate": .double(options.learningRate),
            "model": .string(options.model.rawValue), "parameters": .int(trainer.model.parameterCount),
            "training_seconds_this_run": .double((summary.trainingSeconds * 10).rounded() / 10), "steps_this_run": .int(summary.stepsThisRun),
            "final_loss": summary.finalLoss.map { .double(Double($0)) } ?? .null,
            "seed": .int(Int(options.seed)), "dataset": .string(options.dataset),
        ])
        let evaluationPath = folder.appendingPathComponent("eval.json")
        try (JSONText.write(.object(members), indent: 2) + "\n").write(to: evaluationPath, atomically: true, encoding: .utf8)
        let interopPath = folder.appendingPathComponent("interop").appendingPathComponent("embeddings.safetensors").path
        try exportEmbeddings(trainer.model, tokenizer: tokenizer, dataset: test, count: 16, to: interopPath)
        return Outcome(summary: summary, evaluation: evaluation, evaluationPath: evaluationPath.path, interopPath: interopPath)
    }

    /// Writes a transformers `CLIPModel` folder: config.json, model.safetensors,
    /// the tokenizer's files and preprocessor_config.json (a `CLIPImageProcessor`).
    public static func saveModelFolder(model: CLIPModel, tokenizer: CaptionTokenizing, imageSize: Int, folder: URL) throws {
        try model.save(folder: folder)
        try tokenizer.saveFiles(in: folder)
        try CLIPImageNormalization.savePreprocessorConfiguration(size: imageSize, in: folder)
    }

    /// Diffuse's embeddings of the first `count` test images and of prompts (their
    /// captions and the zero-shot prompts), for `Scripts/check-clip-interop`:
    /// `pixel_values`, `image_embeds`, `input_ids`, `attention_mask`, `text_embeds`
    /// (unnormalised, as `get_image_features` / `get_text_features` return them),
    /// `logit_scale`; the prompts in the metadata (`prompts`, a JSON list).
    public static func exportEmbeddings(_ model: CLIPModel, tokenizer: CaptionTokenizing, dataset: CaptionedTintedDataset,
                                        count: Int, to path: String) throws {
        model.eval()
        defer { model.train() }
        let (pixels, descriptions) = try CLIPEvaluator.images(of: dataset, count: count, size: model.configuration.vision.imageSize)
        let prompts = descriptions.map(\.caption) + dataset.itemNames.map { "a photo of \(IndefiniteArticle.with($0))" }
            + ["a red sneaker on a blue background", "an orange ankle boot", "a purple bag on a white background"]
        let tokens = tokenizer.encode(prompts)
        let (imageFeatures, textFeatures) = noGrad {
            (model.imageFeatures(pixels), model.textFeatures(ids: tokens.ids, batch: tokens.count, attentionMask: tokens.attentionMask))
        }
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let tensors: [String: Tensor] = [
            "pixel_values": pixels, "image_embeds": imageFeatures, "text_embeds": textFeatures,
            "input_ids": Tensor(tokens.ids.map(Float.init), shape: [tokens.count, tokens.length]),
            "attention_mask": Tensor(tokens.attentionMask.map(Float.init), shape: [tokens.count, tokens.length]),
            "logit_scale": model.logitScale.detach().reshaped([1]),
        ]
        let promptList = JSONText.write(.array(prompts.map { .string($0) }), indent: nil)
        try Safetensors.save(tensors, to: path, metadata: ["format": "pt", "prompts": promptList])
    }
}
