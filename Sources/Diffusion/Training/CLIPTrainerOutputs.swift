import Foundation
import NN
import Tensors

// The CLIP trainer's files: the output folder, checkpoints and the final model folder.
extension CLIPTrainer {
    /// What an earlier run leaves in an output folder (besides checkpoints).
    static let runArtifacts = ["logs", "config.json", "model.safetensors", "preprocessor_config.json", "eval.json", "interop",
                               "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"]
    /// The file in a checkpoint that holds both AdamW groups.
    static let optimizerFile = TrainingCheckpoint.optimizerFile

    /// Resumes from `resumeFromCheckpoint`, or checks (and with `overwriteOutputDir` clears) the output folder.
    func prepareOutputFolder() throws {
        _ = try TrainingCheckpoint.prepareOutputFolder(outputDir, resume: options.resumeFromCheckpoint, overwrite: options.overwriteOutputDir,
                                                       artifacts: Self.runArtifacts, restore: { path in
            try restore(from: path)
            message("resuming from \(path) at step \(step) (data \(loader.position))")
        }, message: message)
    }

    /// Writes `checkpoint-<step>`: the model (transformers' names), both optimizer
    /// groups, the trainer state and the options; prunes old checkpoints.
    func saveCheckpoint() throws {
        let state = TrainerState(step: step, dataLoader: loader.position, generator: generator, dropoutGenerators: [:],
                                 learningRate: Double(optimizer.learningRate), loss: nil)
        let path = try TrainingCheckpoint.write(step: step, in: outputDir) { folder in
            func file(_ name: String) -> String { (folder as NSString).appendingPathComponent(name) }
            try model.saveSafetensors(path: file(TrainingCheckpoint.modelFile))
            try Safetensors.save(optimizer.state, to: file(Self.optimizerFile))
            try AtomicFile.write(Array(options.jsonText.utf8), to: file(TrainingCheckpoint.configurationFile))
            try TrainingCheckpoint.writeJSON(state, to: file(TrainingCheckpoint.stateFile))
        }
        lastCheckpoint = (step, path)
        TrainingCheckpoint.pruneAndLog(path, step: step, in: outputDir, keeping: options.checkpointsTotalLimit, log: log)
    }

    /// Restores model, optimizer, counters, data position and generator from a checkpoint folder.
    func restore(from path: String) throws {
        func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }
        let state = try TrainingCheckpoint.readState(path)
        do {
            try model.loadSafetensors(path: file(TrainingCheckpoint.modelFile))
            try optimizer.load(state: Safetensors.load(path: file(Self.optimizerFile)))
        } catch let error as StateDictReport {
            throw TrainingError.corruptCheckpoint("\(path): \(error) (was it written with another --model, --image-size or tokenizer?)")
        } catch let error as OptimizerStateError {
            throw TrainingError.corruptCheckpoint("\(path): \(error)")
        }
        try TrainingCheckpoint.checkDataPosition(state, datasetCount: dataset.count)
        step = state.step
        loader.restore(state.dataLoader)
        generator = try TrainerState.generator(state.generator)
        lastCheckpoint = (step, path)
    }

    /// Writes the transformers `CLIPModel` folder at `outputDir`: config.json,
    /// model.safetensors, the tokenizer's files and preprocessor_config.json.
    public func saveModelFolder() throws {
        try CLIPTraining.saveModelFolder(model: model, tokenizer: tokenizer, imageSize: options.imageSize, folder: URL(fileURLWithPath: outputDir))
    }
}
