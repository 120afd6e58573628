import Foundation
import NN
import Tensors

// The trainer's files: the output folder, checkpoints, sample grids and pipeline folders.
extension Trainer {
    /// What an earlier run leaves in an output folder.
    static let runArtifacts = ["logs", "samples", "unet", "scheduler", "model_index.json", "classes.json"]

    /// Resumes from `resume_from_checkpoint`, or checks (and with
    /// `overwrite_output_dir` clears) the output folder for a fresh run.
    ///
    /// With several ranks, rank 0 prepares the folder (and restores) first; then the others
    /// restore from the same checkpoint (`output_dir` must be visible to every rank).
    func prepareOutputFolder() throws {
        try TrainingCheckpoint.prepareOutputFolder(outputDir, group: group, resume: configuration.resumeFromCheckpoint, overwrite: configuration.overwriteOutputDir,
                                                   artifacts: Self.runArtifacts, restore: { path in
            try restore(from: path)
            if group.isWriter { message("resuming from \(path) at step \(step) (data \(loader.position))") }
        }, message: message)
    }

    /// The dropout layers of the model, by module name.
    private var dropoutLayers: [(name: String, layer: Dropout)] {
        unet.namedModules().compactMap { entry in
            guard let layer = entry.module as? Dropout, layer.probability > 0 else { return nil }
            return (entry.name, layer)
        }
    }

    /// Writes `checkpoint-<step>` (see ``TrainingCheckpoint``) and prunes old ones.
    func saveCheckpoint() throws {
        guard group.isWriter else {
            try group.writerOnly {}
            lastCheckpoint = (step, (outputDir as NSString).appendingPathComponent(TrainingCheckpoint.prefix + "\(step)"))
            return
        }
        try group.writerOnly { try writeCheckpoint() }
    }

    private func writeCheckpoint() throws {
        let state = TrainerState(
            step: step, dataLoader: loader.position, generator: generator,
            dropoutGenerators: Dictionary(dropoutLayers.map { ($0.name, $0.layer.generator) }, uniquingKeysWith: { first, _ in first }),
            learningRate: Double(optimizer.learningRate), loss: nil)
        let path = try TrainingCheckpoint.write(step: step, in: outputDir) { folder in
            func file(_ name: String) -> String { (folder as NSString).appendingPathComponent(name) }
            try unet.saveSafetensors(path: file(TrainingCheckpoint.modelFile))
            try Safetensors.save(optimizer.state, to: file(TrainingCheckpoint.optimizerFile))
            if let ema { try Safetensors.save(ema.state, to: file(TrainingCheckpoint.emaFile)) }
            try AtomicFile.write(Array(configuration.jsonText.utf8), to: file(TrainingCheckpoint.configurationFile))
            try TrainingCheckpoint.writeJSON(state, to: file(TrainingCheckpoint.stateFile))
        }
        lastCheckpoint = (step, path)
        TrainingCheckpoint.pruneAndLog(path, step: step, in: outputDir, keeping: configuration.checkpointsTotalLimit, log: log)
    }

    /// Restores model, optimizer, EMA, counters, data position and generators from a checkpoint folder.
    func restore(from path: String) throws {
        func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }
        let state = try TrainingCheckpoint.readState(path)
        do {
            try unet.loadSafetensors(path: file(TrainingCheckpoint.modelFile))
            try optimizer.load(state: Safetensors.load(path: file(TrainingCheckpoint.optimizerFile)))
        } catch let error as StateDictReport {
            throw TrainingError.corruptCheckpoint("\(path): \(error)")
        } catch let error as OptimizerStateError {
            throw TrainingError.corruptCheckpoint("\(path): \(error) (was it written with other freeze patterns?)")
        }
        try ema?.restore(fromCheckpoint: path, parameters: unet.parameters(), message: message)
        try TrainingCheckpoint.checkDataPosition(state, datasetCount: dataset.count)
        step = state.step
        loader.restore(state.dataLoader)
        generator = try TrainerState.generator(state.generator)
        for (name, layer) in dropoutLayers {
            if let words = state.dropoutGenerators[name] { layer.generator = try TrainerState.generator(words) }
        }
        lastCheckpoint = (step, path)
    }

    /// Runs `body` with the EMA weights in the model (the trained ones are put back after).
    func withAveragedWeights<Result>(_ body: () throws -> Result) rethrows -> Result {
        try ExponentialMovingAverage.withAveragedWeights(ema, in: unet.parameters(), body)
    }

    /// Samples `eval_batch_size` images (whole rows of classes for a
    /// class-conditional model, each column one class) from a fixed seed and
    /// writes `samples/<name>.png` and a TensorBoard image.
    func saveSampleGrid(name: String) throws {
        try group.writerOnly { try writeSampleGrid(name: name) }
        lastImageStep = step
    }

    private func writeSampleGrid(name: String) throws {
        unet.eval()
        defer { unet.train() }
        var count = configuration.evalBatchSize
        var labels: [Int]?
        var columns = Swift.min(8, count)
        if !classNames.isEmpty {
            columns = classNames.count
            count = ((count + columns - 1) / columns) * columns
            labels = (0..<count).map { $0 % columns }
        }
        var evalGenerator = RandomGenerator(seed: configuration.seed)
        let images: Tensor = try withAveragedWeights {
            if configuration.predictionType == .x0 {
                let start = Tensor.rand(try GuidedSampler.sampleShape(unet: unet, count: count), generator: &evalGenerator)
                let result = ToyDiffusion.sample(initial: start, steps: configuration.evalInferenceSteps) { sample, _ in
                    self.unet(sample, timestep: 0, classLabels: labels)
                }
                return noGrad { result * 2 - 1 }
            }
            let kind = SchedulerNames.kind(configuration.evalScheduler) ?? .ddim
            let scheduler = try Schedulers.make(kind, configuration: noiseScheduler.configuration)
            let steps = Swift.min(configuration.evalInferenceSteps, noiseScheduler.trainTimesteps)
            return try GuidedSampler.sample(unet: unet, scheduler: scheduler, count: count, steps: steps, labels: labels,
                                            guidanceScale: Float(configuration.guidanceScale), generator: &evalGenerator).samples
        }
        let folder = (outputDir as NSString).appendingPathComponent("samples")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let path = (folder as NSString).appendingPathComponent(name + ".png")
        let grid = makeGrid(images: images, columns: columns)
        let png = try PNG.encode(grid)
        try AtomicFile.write(png, to: path)
        log?.image(tag: "samples", png: png, width: grid.width, height: grid.height, channels: grid.channels, step: step)
        sampleImages.append(path)
        lastImageStep = step
        log?.event("samples", step: step, fields: [("path", .string(path))], text: "samples \(path)")
    }

    /// Saves the pipeline (EMA weights with EMA) in diffusers' layout at `output_dir`,
    /// plus `classes.json` for a class-conditional model.
    func savePipeline() throws {
        try group.writerOnly {
            try withAveragedWeights {
                try DDPMPipeline(unet: unet, scheduler: noiseScheduler).save(folder: URL(fileURLWithPath: outputDir))
            }
            if !classNames.isEmpty {
                try PipelineClasses(names: classNames).save(in: outputDir)
            }
        }
        lastPipelineStep = step
        log?.event("pipeline", step: step, fields: [("path", .string(outputDir))], text: "pipeline \(outputDir)" + (ema != nil ? " (EMA weights)" : ""))
    }
}

/// `classes.json` beside a class-conditional pipeline's `model_index.json`:
/// the class names by label and the index of the unconditional class
/// (diffusers ignores the file).
public struct PipelineClasses: Codable, Equatable, Sendable {
    /// `classes.json`.
    public static let fileName = "classes.json"
    /// Class names by label.
    public var names: [String]
    /// The label that means "no class" (the last class embedding).
    public var unconditionalClass: Int

    public init(names: [String]) {
        self.names = names
        unconditionalClass = names.count
    }

    enum CodingKeys: String, CodingKey {
        case names = "class_names"
        case unconditionalClass = "unconditional_class"
    }

    /// Writes `classes.json` in `folder`.
    public func save(in folder: String) throws {
        try TrainingCheckpoint.writeJSON(self, to: (folder as NSString).appendingPathComponent(Self.fileName))
    }

    /// Reads `classes.json` of a pipeline folder, if it has one.
    public static func load(from folder: String) -> PipelineClasses? {
        guard let data = FileManager.default.contents(atPath: (folder as NSString).appendingPathComponent(fileName)) else { return nil }
        return try? JSONDecoder().decode(PipelineClasses.self, from: data)
    }
}
