import Foundation
import NN
import Tensors

// The text-to-image trainer's files: checkpoints, validation grids, the pipeline or LoRA file.
// Only the writer process (rank 0) writes; every process meets at a barrier after.
extension TextToImageTrainer {
    /// What an earlier run leaves in an output folder.
    static let runArtifacts = ["logs", "samples", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json",
                               "pytorch_lora_weights.safetensors"]
    /// The LoRA factors in a checkpoint (instead of `model.safetensors`).
    static let adaptersFile = "lora.safetensors"

    /// Resumes from `resume_from_checkpoint`, or checks (with `overwrite_output_dir`, clears) the output folder:
    /// rank 0 first (the others wait, then restore the same checkpoint).
    func prepareOutputFolder() throws {
        try TrainingCheckpoint.prepareOutputFolder(outputDir, group: group, resume: options.resumeFromCheckpoint, overwrite: options.overwriteOutputDir,
                                                   artifacts: Self.runArtifacts, restore: { path in
            try restore(from: path)
            if group.isWriter { message("resuming from \(path) at step \(step) (data \(loader.position))") }
        }, message: message)
    }

    /// The UNet's weights, or the adapters' factors (`unet.<layer>.lora_A.weight`, …) of a LoRA run.
    var trainedState: [String: Tensor] {
        guard options.isLoRA else { return unet.stateDict() }
        return TextToImageLoRA.stateDict(unetAdapters, prefix: "unet.").merging(
            TextToImageLoRA.stateDict(textEncoderAdapters, prefix: "text_encoder."), uniquingKeysWith: { first, _ in first })
    }

    /// Writes `checkpoint-<step>` (the trained weights, AdamW, EMA, generator and data position) and prunes old ones.
    func saveCheckpoint() throws {
        defer { try? group.barrier() }
        guard group.isWriter else { lastCheckpoint = (step, ""); return }
        let state = TrainerState(step: step, dataLoader: loader.position, generator: generator, dropoutGenerators: [:],
                                 learningRate: Double(optimizer.learningRate), loss: nil)
        let path = try TrainingCheckpoint.write(step: step, in: outputDir) { folder in
            func file(_ name: String) -> String { (folder as NSString).appendingPathComponent(name) }
            if options.isLoRA {
                try Safetensors.save(trainedState, to: file(Self.adaptersFile))
            } else {
                try unet.saveSafetensors(path: file(TrainingCheckpoint.modelFile))
            }
            try Safetensors.save(optimizer.state, to: file(TrainingCheckpoint.optimizerFile))
            if let ema { try Safetensors.save(ema.state, to: file(TrainingCheckpoint.emaFile)) }
            try AtomicFile.write(Array(options.jsonText.utf8), to: file(TrainingCheckpoint.configurationFile))
            try TrainingCheckpoint.writeJSON(state, to: file(TrainingCheckpoint.stateFile))
        }
        lastCheckpoint = (step, path)
        TrainingCheckpoint.pruneAndLog(path, step: step, in: outputDir, keeping: options.checkpointsTotalLimit, log: log)
    }

    /// Restores weights, AdamW, EMA, counters, data position and generator from a checkpoint folder.
    func restore(from path: String) throws {
        func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }
        let state = try TrainingCheckpoint.readState(path)
        do {
            if options.isLoRA {
                let tensors = try Safetensors.load(path: file(Self.adaptersFile))
                try TextToImageLoRA.load(tensors, into: unetAdapters, prefix: "unet.")
                try TextToImageLoRA.load(tensors, into: textEncoderAdapters, prefix: "text_encoder.")
            } else {
                try unet.loadSafetensors(path: file(TrainingCheckpoint.modelFile))
            }
            try optimizer.load(state: Safetensors.load(path: file(TrainingCheckpoint.optimizerFile)))
        } catch let error as StateDictReport {
            throw TrainingError.corruptCheckpoint("\(path): \(error)")
        } catch let error as OptimizerStateError {
            throw TrainingError.corruptCheckpoint("\(path): \(error) (was it written with another --rank or model?)")
        }
        try ema?.restore(fromCheckpoint: path, parameters: unet.parameters(), message: message)
        try TrainingCheckpoint.checkDataPosition(state, datasetCount: dataset.count)
        step = state.step
        loader.restore(state.dataLoader)
        generator = try TrainerState.generator(state.generator)
        lastCheckpoint = (step, path)
    }

    /// Runs `body` with the EMA weights in the UNet (the trained ones are put back after).
    func withAveragedWeights<Result>(_ body: () throws -> Result) rethrows -> Result {
        try ExponentialMovingAverage.withAveragedWeights(ema, in: unet.parameters(), body)
    }

    /// Generates ``TextToImageTrainingOptions/numValidationImages`` images of every validation prompt
    /// (one row each) from a fixed seed, with classifier-free guidance and the validation sampler,
    /// and writes `samples/step-<step>.png` and a TensorBoard image.
    public func validationImages() throws -> Tensor {
        unet.eval()
        defer { unet.train() }
        var parameters = StableDiffusionParameters(prompts: options.validationPrompts)
        parameters.imagesPerPrompt = options.numValidationImages
        parameters.steps = options.validationInferenceSteps
        parameters.guidanceScale = options.validationGuidanceScale
        parameters.scheduler = options.validationScheduler
        parameters.height = resolution
        parameters.width = resolution
        var validationGenerator = RandomGenerator(seed: options.seed)
        return try withAveragedWeights {
            try noGrad { try pipeline.generate(parameters, generator: &validationGenerator).images }
        }
    }

    func saveValidationGrid() throws {
        lastValidationStep = step
        defer { try? group.barrier() }
        guard group.isWriter else { return }
        let images = try validationImages()
        let folder = (outputDir as NSString).appendingPathComponent("samples")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let path = (folder as NSString).appendingPathComponent(String(format: "step-%06d.png", step))
        let grid = makeGrid(images: noGrad { images * 2 - 1 }, columns: options.numValidationImages)
        let png = try PNG.encode(grid)
        try AtomicFile.write(png, to: path)
        log?.image(tag: "validation", png: png, width: grid.width, height: grid.height, channels: grid.channels, step: step)
        sampleImages.append(path)
        log?.event("samples", step: step, fields: [("path", .string(path))],
                   text: "validation grid \(path) (\(options.validationPrompts.count) prompt(s) × \(options.numValidationImages))")
    }

    /// Saves what the run trained: the whole pipeline folder (EMA weights with EMA) at `output_dir`,
    /// or, for LoRA, `output_dir/pytorch_lora_weights.safetensors` as diffusers' `save_lora_weights`.
    /// Returns its path.
    @discardableResult
    public func saveResult() throws -> String {
        defer { try? group.barrier() }
        if options.isLoRA {
            let file = (outputDir as NSString).appendingPathComponent("pytorch_lora_weights.safetensors")
            guard group.isWriter else { return file }
            try pipeline.saveLoRA(to: outputDir, name: TextToImageLoRA.adapterName)
            log?.event("lora", step: step, fields: [("path", .string(file))],
                       text: "LoRA weights \(file) (diffuse generate \(options.from ?? "PIPELINE") --lora \(file))")
            return file
        }
        guard group.isWriter else { return outputDir }
        try withAveragedWeights {
            unet.eval()
            defer { unet.train() }
            try pipeline.save(folder: URL(fileURLWithPath: outputDir))
        }
        log?.event("pipeline", step: step, fields: [("path", .string(outputDir))],
                   text: "pipeline \(outputDir)" + (ema != nil ? " (EMA weights)" : "") + " (diffuse generate \(outputDir) --prompt …)")
        return outputDir
    }
}
