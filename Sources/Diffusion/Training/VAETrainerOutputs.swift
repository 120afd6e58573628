import Foundation
import NN
import Tensors

// The VAE trainer's files: the output folder, checkpoints, reconstruction grids,
// `scaling_factor` and the final `vae/` folder.
extension VAETrainer {
    /// What an earlier run leaves in an output folder (besides checkpoints).
    static let runArtifacts = ["logs", "reconstructions", "vae", "eval.json", "interop"]
    /// The `vae/` folder's name inside the output folder.
    public static let vaeFolderName = "vae"

    /// Resumes from `resumeFromCheckpoint`, or checks (and with `overwriteOutputDir` clears) the output folder.
    func prepareOutputFolder() throws {
        _ = try TrainingCheckpoint.prepareOutputFolder(outputDir, resume: options.resumeFromCheckpoint, overwrite: options.overwriteOutputDir,
                                                       artifacts: Self.runArtifacts, restore: { path in
            try restore(from: path)
            message("resuming from \(path) at step \(step) (data \(loader.position))")
        }, message: message)
    }

    /// Writes `checkpoint-<step>` (writer rank only, then a barrier): the model
    /// (diffusers' names), AdamW, the EMA, the trainer state (step, data position,
    /// generator) and the options; prunes old checkpoints.
    func saveCheckpoint() throws {
        if group.isWriter {
            let state = TrainerState(step: step, dataLoader: loader.position, generator: generator, dropoutGenerators: [:],
                                     learningRate: Double(optimizer.learningRate), loss: nil)
            let path = try TrainingCheckpoint.write(step: step, in: outputDir) { folder in
                func file(_ name: String) -> String { (folder as NSString).appendingPathComponent(name) }
                try model.saveSafetensors(path: file(TrainingCheckpoint.modelFile))
                try Safetensors.save(optimizer.state, to: file(TrainingCheckpoint.optimizerFile))
                if let ema { try Safetensors.save(ema.state, to: file(TrainingCheckpoint.emaFile)) }
                try AtomicFile.write(Array(options.jsonText.utf8), to: file(TrainingCheckpoint.configurationFile))
                try TrainingCheckpoint.writeJSON(state, to: file(TrainingCheckpoint.stateFile))
            }
            lastCheckpoint = (step, path)
            TrainingCheckpoint.pruneAndLog(path, step: step, in: outputDir, keeping: options.checkpointsTotalLimit, log: log)
        } else {
            lastCheckpoint = (step, (outputDir as NSString).appendingPathComponent("\(TrainingCheckpoint.prefix)\(step)"))
        }
        try group.barrier()
    }

    /// Restores model, AdamW, EMA, step, data position and generator from a checkpoint folder.
    func restore(from path: String) throws {
        func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }
        let state = try TrainingCheckpoint.readState(path)
        do {
            try model.loadSafetensors(path: file(TrainingCheckpoint.modelFile))
            try optimizer.load(state: Safetensors.load(path: file(TrainingCheckpoint.optimizerFile)))
        } catch let error as StateDictReport {
            throw TrainingError.corruptCheckpoint("\(path): \(error) (was it written with another --model, --block-out-channels or --latent-channels?)")
        } catch let error as OptimizerStateError {
            throw TrainingError.corruptCheckpoint("\(path): \(error)")
        }
        try ema?.restore(fromCheckpoint: path, parameters: parameters, message: message)
        try TrainingCheckpoint.checkDataPosition(state, datasetCount: dataset.count, noun: "images")
        step = state.step
        loader.restore(state.dataLoader)
        generator = try TrainerState.generator(state.generator)
        lastCheckpoint = (step, path)
    }

    /// Runs `body` with the EMA weights in the model (the trained ones are put back after).
    func withAveragedWeights<Result>(_ body: () throws -> Result) rethrows -> Result {
        try ExponentialMovingAverage.withAveragedWeights(ema, in: parameters, body)
    }

    /// Images `[N, C, resolution, resolution]` of `dataset` at `indices`, resized
    /// and cropped as in training, never flipped.
    func preparedImages(of dataset: Dataset, indices: [Int]) throws -> Tensor {
        let transform = ImageTransforms.standard(size: options.resolution, channels: channels, randomFlip: false)
        var unused = RandomGenerator(seed: 0)
        let images = try indices.map { transform.apply(try dataset.example(at: $0).image, generator: &unused) }
        return Tensor.stack(images, axis: 0)
    }

    /// The posterior means decoded (no sampling), without gradients, in batches.
    public func reconstruct(_ images: Tensor, batchSize: Int = 64) -> Tensor {
        noGrad {
            let count = images.shape[0]
            var parts: [Tensor] = []
            var start = 0
            while start < count {
                let length = Swift.min(batchSize, count - start)
                parts.append(model.decode(model.encode(images.narrowed(axis: 0, start: start, length: length)).mode()))
                start += length
            }
            return parts.count == 1 ? parts[0] : Tensor.concatenate(parts, axis: 0)
        }
    }

    /// The grid of `originals` (top row) above their reconstructions (bottom row), one column per image.
    public static func reconstructionGrid(originals: Tensor, reconstructions: Tensor) -> PixelImage {
        makeGrid(images: Tensor.concatenate([originals, noGrad { reconstructions.clamped(min: -1, max: 1) }], axis: 0),
                 columns: originals.shape[0])
    }

    /// The training images the grids show: `gridImages` spread evenly over the dataset.
    var gridIndices: [Int] {
        let count = Swift.min(options.gridImages, dataset.count)
        return (0..<count).map { $0 * dataset.count / count }
    }

    /// Writes `reconstructions/<name>.png` (EMA weights with EMA; writer rank only) and a TensorBoard image.
    func saveGrid(name: String) throws {
        lastGridStep = step
        guard group.isWriter else { try group.barrier(); return }
        model.eval()
        defer { model.train() }
        let originals = try preparedImages(of: dataset, indices: gridIndices)
        let reconstructions = withAveragedWeights { reconstruct(originals) }
        let grid = Self.reconstructionGrid(originals: originals, reconstructions: reconstructions)
        let folder = (outputDir as NSString).appendingPathComponent("reconstructions")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let path = (folder as NSString).appendingPathComponent(name + ".png")
        let png = try PNG.encode(grid)
        try AtomicFile.write(png, to: path)
        log?.image(tag: "reconstructions", png: png, width: grid.width, height: grid.height, channels: grid.channels, step: step)
        gridPaths.append(path)
        log?.event("reconstructions", step: step, fields: [("path", .string(path))], text: "reconstructions \(path)")
        try group.barrier()
    }

    /// `scaling_factor` as the LDM's `scale_by_std` and diffusers' `AutoencoderKL`
    /// documentation define it: 1 / std of the latents z = `latent_dist.sample()`
    /// (mean + σ·ε, ε from a generator seeded with the run's seed) of `images`
    /// training images (a fixed seeded choice, resized as in training, not flipped),
    /// the standard deviation taken over every latent value with Bessel's correction
    /// (`torch.std`'s default). With `images` 0, the configuration's value.
    public func measureScalingFactor(images count: Int) throws -> Double {
        let count = Swift.min(count, dataset.count)
        guard count > 0 else { return model.configuration.scalingFactor }
        var chooser = RandomGenerator(seed: options.seed ^ 0x5CA1_E0F5)
        var indices = Array(0..<dataset.count)
        for index in 0..<count {
            let other = index + chooser.integer(below: dataset.count - index)
            indices.swapAt(index, other)
        }
        var noiseGenerator = RandomGenerator(seed: options.seed &+ 0x1A7E_0057)
        var (sum, sumOfSquares, values) = (0.0, 0.0, 0)
        model.eval()
        defer { model.train() }
        var start = 0
        while start < count {
            let batch = Array(indices[start..<Swift.min(start + 64, count)])
            let images = try preparedImages(of: dataset, indices: batch)
            let latents = noGrad { model.encode(images).sample(generator: &noiseGenerator) }
            for value in latents.toArray() {
                sum += Double(value)
                sumOfSquares += Double(value) * Double(value)
            }
            values += latents.count
            start += batch.count
        }
        let mean = sum / Double(values)
        let variance = Swift.max((sumOfSquares - Double(values) * mean * mean) / Double(Swift.max(values - 1, 1)), 1e-24)
        return 1 / variance.squareRoot()
    }

    /// Writes `outputDir/vae` in diffusers' layout (config.json with `scalingFactor`,
    /// diffusion_pytorch_model.safetensors; the EMA weights with EMA); writer rank only.
    @discardableResult
    public func saveVAE(scalingFactor: Double) throws -> String {
        let folder = (outputDir as NSString).appendingPathComponent(Self.vaeFolderName)
        if group.isWriter {
            var configuration = model.configuration
            configuration.scalingFactor = scalingFactor
            try withAveragedWeights {
                try AutoencoderFolder.save(model, configurationText: configuration.jsonText, folder: URL(fileURLWithPath: folder),
                                           variant: nil, dataType: nil, maximumShardBytes: nil)
            }
            log?.event("vae", step: step, fields: [("path", .string(folder)), ("scaling_factor", .double(scalingFactor))],
                       text: "AutoencoderKL saved in \(folder)" + (ema != nil ? " (EMA weights)" : "")
                           + String(format: "; scaling_factor %.5f (1 / std of %d images' sampled latents)", scalingFactor,
                                    Swift.min(options.scalingFactorImages, dataset.count)))
        }
        try group.barrier()
        return folder
    }
}
