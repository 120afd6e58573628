import Foundation
import NN
import Tensors

/// `diffuse train-vae`: ``VAETrainer`` from scratch, then — for a named dataset —
/// the saved `vae/` loaded back and measured on held-out test images
/// (reconstruction MSE and PSNR of the posterior mean), a grid of test
/// reconstructions and `eval.json`.
public enum VAETraining {
    /// Reconstruction scores of held-out images (posterior means decoded).
    public struct Evaluation: Sendable, Equatable {
        /// Images measured.
        public var images: Int
        /// Mean squared error in [−1, 1] units, and in [0, 1] units (a quarter of it).
        public var mse: Double
        public var mseUnit: Double { mse / 4 }
        /// Mean absolute error in [−1, 1] units.
        public var meanAbsoluteError: Double
        /// 10·log10(1 / MSE) with pixels in [0, 1], over all the images' values at once.
        public var psnr: Double { 10 * Foundation.log10(1 / Swift.max(mseUnit, 1e-20)) }
    }

    /// What a run produced.
    public struct Outcome: Sendable {
        public let summary: VAETrainingSummary
        /// The held-out scores (nil: interrupted, an image folder, or `evaluationImages` 0).
        public let evaluation: Evaluation?
        /// `eval.json` and the grid of test reconstructions, when written.
        public let evaluationPath: String?
        public let testGridPath: String?

        /// What to tell a person.
        public var reportLines: [String] {
            var lines: [String] = []
            let loss = summary.finalLoss.map { String(format: ", last loss %.4f", $0) } ?? ""
            let terms = summary.finalReconstruction.flatMap { reconstruction in
                summary.finalKL.map { String(format: " (reconstruction %.4f, KL %.2f)", reconstruction, $0) }
            } ?? ""
            lines.append((summary.interrupted ? "stopped at step \(summary.step) of \(summary.totalSteps)" : "trained \(summary.step) steps")
                         + loss + terms + String(format: "; training %.0f s for %d steps this run (%.0f s in all)",
                                                 summary.trainingSeconds, summary.stepsThisRun, summary.seconds))
            if let vaePath = summary.vaePath {
                lines.append("vae:         \(vaePath)  (diffusers AutoencoderKL: config.json + diffusion_pytorch_model.safetensors)")
            }
            if let scalingFactor = summary.scalingFactor {
                lines.append(String(format: "scaling_factor: %.5f  (1 / std of sampled latents; written into vae/config.json)", scalingFactor))
            }
            if let evaluation {
                lines.append(String(format: "test:        %d held-out images: MSE %.5f ([0,1] pixels), PSNR %.2f dB, mean |error| %.4f ([-1,1])",
                                    evaluation.images, evaluation.mseUnit, evaluation.psnr, evaluation.meanAbsoluteError))
            }
            if let last = summary.grids.last {
                lines.append("grids:       \(last)" + (summary.grids.count > 1 ? " (and \(summary.grids.count - 1) earlier in the same folder)" : ""))
            }
            if let testGridPath { lines.append("test grid:   \(testGridPath)") }
            if let evaluationPath { lines.append("evaluation:  \(evaluationPath)") }
            if let lastCheckpoint = summary.lastCheckpoint {
                lines.append("checkpoint:  \(lastCheckpoint)" + (summary.interrupted ? "  (continue with --resume latest)" : ""))
            }
            lines.append("logs:        \(summary.logDirectory)  (tensorboard --logdir \(summary.logDirectory); train.jsonl)")
            return lines
        }
    }

    /// The names `openDataset` knows besides image folders.
    public static var datasetNames: [String] { Datasets.names + [CaptionedTintedDataset.name] }

    /// The training (or test) images of `options`: `captioned-tinted-fashion-mnist`,
    /// a name ``Datasets/open(_:training:limit:)`` knows, or an image folder
    /// (training only: a folder has no test split, and gives nil for it).
    public static func openDataset(_ options: VAETrainingOptions, training: Bool) throws -> Dataset? {
        if options.usesCaptionedDataset {
            return try CaptionedTintedDataset.fashionMNIST(training: training, limit: training ? options.datasetLimit : nil, seed: options.seed,
                                                           heldOutPairs: training ? Set(options.heldOutPairs ?? []) : [])
        }
        if Datasets.names.contains(options.dataset.lowercased()) || ["fashion_mnist", "fashionmnist"].contains(options.dataset.lowercased()) {
            return try Datasets.open(options.dataset, training: training, limit: training ? options.datasetLimit : nil)
        }
        guard training else { return nil }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: options.dataset, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw DatasetError.notInstalled(name: options.dataset,
                                            hint: "it is neither a known dataset (\(datasetNames.joined(separator: ", "))) nor an image folder")
        }
        return try ImageFolderDataset(directory: options.dataset)
    }

    /// The training images of `options`.
    static func openTrainingDataset(_ options: VAETrainingOptions) throws -> Dataset {
        guard let dataset = try openDataset(options, training: true) else {
            throw TrainingError.data("\(options.dataset) cannot be opened")
        }
        return dataset
    }

    /// Reconstruction scores of `images` `[N, C, H, W]` (in [−1, 1]) through `vae`
    /// (posterior means decoded, outputs clamped to [−1, 1] as an image would be).
    public static func evaluate(_ vae: AutoencoderKL, images: Tensor, batchSize: Int = 100) -> (Evaluation, reconstructions: Tensor) {
        vae.eval()
        let count = images.shape[0]
        var (squared, absolute) = (0.0, 0.0)
        var parts: [Tensor] = []
        var start = 0
        while start < count {
            let length = Swift.min(batchSize, count - start)
            let batch = images.narrowed(axis: 0, start: start, length: length)
            let decoded = noGrad { vae.decode(vae.encode(batch).mode()).clamped(min: -1, max: 1) }
            for (value, target) in zip(decoded.toArray(), batch.toArray()) {
                let difference = Double(value) - Double(target)
                squared += difference * difference
                absolute += Swift.abs(difference)
            }
            parts.append(decoded)
            start += length
        }
        let values = Double(Swift.max(images.count, 1))
        return (Evaluation(images: count, mse: squared / values, meanAbsoluteError: absolute / values),
                parts.count == 1 ? parts[0] : Tensor.concatenate(parts, axis: 0))
    }

    /// Diffuse's posterior (`latent_mean`, `latent_logvar`) and reconstruction of the
    /// posterior mean (`reconstructions`, unclamped) of `images`, for
    /// `Scripts/make-vae-training-goldens --check-interop OUTPUT_DIR`.
    public static func exportReconstructions(_ vae: AutoencoderKL, images: Tensor, to path: String) throws {
        vae.eval()
        let (posterior, reconstructions) = noGrad { () -> (DiagonalGaussianDistribution, Tensor) in
            let posterior = vae.encode(images)
            return (posterior, vae.decode(posterior.mode()))
        }
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Safetensors.save(["images": images.contiguousCopy(), "latent_mean": posterior.mean.contiguousCopy(),
                              "latent_logvar": posterior.logVariance.contiguousCopy(), "reconstructions": reconstructions],
                             to: path, metadata: ["format": "pt"])
    }

    /// Trains, saves `vae/`, then — for a named dataset with a test split — loads
    /// `vae/` back and measures it on `evaluationImages` test images: `eval.json`
    /// and `reconstructions/test.png`.
    /// - Parameter configure: adjusts the trainer before it runs (progress output, signal handling).
    public static func run(_ options: VAETrainingOptions, configure: ((VAETrainer) -> Void)? = nil) throws -> Outcome {
        let trainer = try VAETrainer(options: options)
        configure?(trainer)
        let summary = try trainer.run()
        guard !summary.interrupted, options.evaluationImages > 0, trainer.group.isWriter, let vaePath = summary.vaePath,
              let test = try openDataset(options, training: false) else {
            return Outcome(summary: summary, evaluation: nil, evaluationPath: nil, testGridPath: nil)
        }
        let count = Swift.min(options.evaluationImages, test.count)
        trainer.message("evaluating vae/ on \(count) held-out test images …")
        let vae = try AutoencoderKL.load(folder: URL(fileURLWithPath: vaePath))
        let images = try trainer.preparedImages(of: test, indices: Array(0..<count))
        let (evaluation, reconstructions) = evaluate(vae, images: images)
        let folder = URL(fileURLWithPath: options.outputDir)
        let gridCount = Swift.min(options.gridImages, count)
        let grid = VAETrainer.reconstructionGrid(originals: images.narrowed(axis: 0, start: 0, length: gridCount),
                                                 reconstructions: reconstructions.narrowed(axis: 0, start: 0, length: gridCount))
        let gridPath = folder.appendingPathComponent("reconstructions").appendingPathComponent("test.png").path
        try FileManager.default.createDirectory(atPath: (gridPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try AtomicFile.write(try PNG.encode(grid), to: gridPath)
        let members: [String: JSONValue] = [
            "test_images": .int(evaluation.images),
            "mse": .double(evaluation.mse), "mse_unit_range": .double(evaluation.mseUnit), "psnr_db": .double(evaluation.psnr),
            "mean_absolute_error": .double(evaluation.meanAbsoluteError),
            "scaling_factor": summary.scalingFactor.map { .double($0) } ?? .null,
            "training": .object([
                "steps": .int(summary.step), "batch_size": .int(options.batchSize), "learning_rate": .double(options.learningRate),
                "model": .string(options.model.rawValue), "parameters": .int(trainer.model.parameterCount),
                "block_out_channels": .array(trainer.model.configuration.blockOutChannels.map { .int($0) }),
                "latent_channels": .int(options.latentChannels), "resolution": .int(options.resolution),
                "reconstruction_loss": .string(options.reconstructionLoss.rawValue), "kl_weight": .double(options.klWeight),
                "training_seconds_this_run": .double((summary.trainingSeconds * 10).rounded() / 10), "steps_this_run": .int(summary.stepsThisRun),
                "final_loss": summary.finalLoss.map { .double(Double($0)) } ?? .null,
                "seed": .int(Int(options.seed)), "dataset": .string(options.dataset),
            ]),
        ]
        let evaluationPath = folder.appendingPathComponent("eval.json")
        try (JSONText.write(.object(members), indent: 2) + "\n").write(to: evaluationPath, atomically: true, encoding: .utf8)
        let interopPath = folder.appendingPathComponent("interop").appendingPathComponent("reconstructions.safetensors").path
        try exportReconstructions(vae, images: images.narrowed(axis: 0, start: 0, length: Swift.min(16, count)), to: interopPath)
        return Outcome(summary: summary, evaluation: evaluation, evaluationPath: evaluationPath.path, testGridPath: gridPath)
    }
}
