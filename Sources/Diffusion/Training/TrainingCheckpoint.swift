import Foundation
import NN
import Tensors

/// The small JSON part of a checkpoint (`trainer_state.json`): counters, the
/// data loader's place and every random generator's state.
public struct TrainerState: Codable, Equatable, Sendable {
    /// Format version.
    public var version = 1
    /// Optimizer steps done (the LR schedule's step too).
    public var step: Int
    /// Where the data loader continues.
    public var dataLoader: DataLoaderPosition
    /// The trainer's generator (noise, timesteps, condition dropout), as 16-digit hex words.
    public var generator: [String]
    /// The generators of the model's dropout layers (those with a non-zero probability), by module name.
    public var dropoutGenerators: [String: [String]]
    /// The learning rate of the last step (for people reading the file).
    public var learningRate: Double
    /// The loss of the last step.
    public var loss: Double?

    public init(step: Int, dataLoader: DataLoaderPosition, generator: RandomGenerator,
                dropoutGenerators: [String: RandomGenerator], learningRate: Double, loss: Double?) {
        self.step = step
        self.dataLoader = dataLoader
        self.generator = Self.words(generator)
        self.dropoutGenerators = dropoutGenerators.mapValues(Self.words)
        self.learningRate = learningRate
        self.loss = loss
    }

    static func words(_ generator: RandomGenerator) -> [String] {
        generator.state.map { word in
            let hex = String(word, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }
    }

    /// A generator restored from hex words.
    public static func generator(_ words: [String]) throws -> RandomGenerator {
        let values = words.compactMap { UInt64($0, radix: 16) }
        guard values.count == 6, words.count == 6 else {
            throw TrainingError.corruptCheckpoint("a generator state must be six 64-bit hex words, found \(words)")
        }
        var generator = RandomGenerator(seed: 0)
        generator.state = values
        return generator
    }
}

/// Checkpoint folders `output_dir/checkpoint-<step>/`: written whole into a
/// hidden temporary folder and renamed into place, so a crash at any moment
/// leaves either the complete folder or none (a stray `.checkpoint-*.tmp-*`
/// folder is removed on the next start).
///
/// A folder holds `model.safetensors` (the UNet), `optimizer.safetensors`
/// (AdamW's moments and step), `ema.safetensors` (with EMA),
/// `trainer_state.json` (``TrainerState``) and `train_config.json`.
public enum TrainingCheckpoint {

    /// ``prepareOutputFolder(_:resume:overwrite:artifacts:restore:message:)`` on a data-parallel run: the
    /// writer prepares the folder (and restores) first while the others wait; then they restore the same
    /// checkpoint (`outputDir` must be visible to every rank).
    static func prepareOutputFolder(_ outputDir: String, group: any DataParallelGroup, resume: String?, overwrite: Bool,
                                    artifacts: [String], restore: (String) throws -> Void, message: (String) -> Void) throws {
        try group.writerOnly {
            _ = try prepareOutputFolder(outputDir, resume: resume, overwrite: overwrite, artifacts: artifacts, restore: restore, message: message)
        }
        if !group.isWriter, let resume, let path = try resolve(resume, outputDir: outputDir) {
            try restore(path)
        }
    }

    /// Prepares `outputDir` for a run: resumes from `resume` (a checkpoint name, `latest` or
    /// a path) through `restore` and returns true, or checks that no checkpoint nor any of
    /// `artifacts` is there (removing them when `overwrite`; else throwing) and returns false.
    static func prepareOutputFolder(_ outputDir: String, resume: String?, overwrite: Bool, artifacts: [String],
                                    restore: (String) throws -> Void, message: (String) -> Void) throws -> Bool {
        let manager = FileManager.default
        try manager.createDirectory(atPath: outputDir, withIntermediateDirectories: true)
        removeTemporaries(in: outputDir)
        if let specification = resume {
            if let path = try resolve(specification, outputDir: outputDir) {
                try restore(path)
                return true
            }
            message("no checkpoint in \(outputDir) yet; starting a new run")
        }
        let checkpoints = list(in: outputDir)
        let present = artifacts.filter { manager.fileExists(atPath: (outputDir as NSString).appendingPathComponent($0)) }
        guard !checkpoints.isEmpty || !present.isEmpty else { return false }
        guard overwrite else { throw TrainingError.outputExists(outputDir) }
        for path in checkpoints.map(\.path) + present.map({ (outputDir as NSString).appendingPathComponent($0) }) {
            try manager.removeItem(atPath: path)
        }
        return false
    }
    /// `checkpoint-`.
    public static let prefix = "checkpoint-"
    /// File names inside a checkpoint.
    public static let modelFile = "model.safetensors"
    public static let optimizerFile = "optimizer.safetensors"
    public static let emaFile = "ema.safetensors"
    public static let stateFile = "trainer_state.json"
    public static let configurationFile = "train_config.json"

    /// The complete checkpoints of `outputDir`, oldest first.
    public static func list(in outputDir: String) -> [(step: Int, path: String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: outputDir)) ?? []
        return names.compactMap { name -> (Int, String)? in
            guard name.hasPrefix(prefix), let step = Int(name.dropFirst(prefix.count)) else { return nil }
            let path = (outputDir as NSString).appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent(stateFile)) else { return nil }
            return (step, path)
        }.sorted { $0.0 < $1.0 }
    }

    /// The folder `resume_from_checkpoint` names: `latest` (nil when there is
    /// none), a folder name inside `outputDir`, or a path.
    public static func resolve(_ specification: String, outputDir: String) throws -> String? {
        if specification == "latest" { return list(in: outputDir).last?.path }
        let candidates = [(outputDir as NSString).appendingPathComponent(specification), specification]
        for path in candidates where FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent(stateFile)) {
            return path
        }
        throw TrainingError.checkpointNotFound(specification, outputDir: outputDir)
    }

    /// Removes hidden temporary folders left by an interrupted write.
    public static func removeTemporaries(in outputDir: String) {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: outputDir)) ?? []
        for name in names where name.hasPrefix("." + prefix) {
            try? FileManager.default.removeItem(atPath: (outputDir as NSString).appendingPathComponent(name))
        }
    }

    /// Creates `checkpoint-<step>` atomically: `fill` writes the files into a
    /// temporary folder, which is then renamed (replacing an older folder of the
    /// same step). Returns the folder's path.
    @discardableResult
    public static func write(step: Int, in outputDir: String, fill: (String) throws -> Void) throws -> String {
        let manager = FileManager.default
        try manager.createDirectory(atPath: outputDir, withIntermediateDirectories: true)
        let unique = "\(getpid())-\(UUID().uuidString.prefix(8))"
        let temporary = (outputDir as NSString).appendingPathComponent(".\(prefix)\(step).tmp-\(unique)")
        let final = (outputDir as NSString).appendingPathComponent("\(prefix)\(step)")
        try manager.createDirectory(atPath: temporary, withIntermediateDirectories: false)
        do {
            try fill(temporary)
            synchronize(temporary)
            var displaced: String?
            if manager.fileExists(atPath: final) {
                let old = (outputDir as NSString).appendingPathComponent(".\(prefix)\(step).old-\(unique)")
                try manager.moveItem(atPath: final, toPath: old)
                displaced = old
            }
            guard rename(temporary, final) == 0 else {
                throw TrainingError.io("cannot rename \(temporary) to \(final): \(String(cString: strerror(errno)))")
            }
            synchronize(outputDir)
            if let displaced { try? manager.removeItem(atPath: displaced) }
        } catch {
            try? manager.removeItem(atPath: temporary)
            throw error
        }
        return final
    }

    /// Keeps the newest `limit` checkpoints, removing the others; returns the removed paths.
    @discardableResult
    public static func prune(in outputDir: String, keeping limit: Int) -> [String] {
        let all = list(in: outputDir)
        guard all.count > limit else { return [] }
        let removed = all.prefix(all.count - limit).map(\.path)
        for path in removed {
            // Rename first so a crash mid-delete leaves a hidden temporary, not a torn checkpoint.
            let hidden = (outputDir as NSString).appendingPathComponent("." + (path as NSString).lastPathComponent + ".tmp-delete")
            if rename(path, hidden) == 0 { try? FileManager.default.removeItem(atPath: hidden) }
        }
        return removed
    }

    /// Writes `value` as sorted, indented JSON at `path` (atomically).
    static func writeJSON<Value: Encodable>(_ value: Value, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        try AtomicFile.write(Array(try encoder.encode(value)) + [10], to: path)
    }

    /// Reads the trainer state of checkpoint folder `path`.
    public static func readState(_ path: String) throws -> TrainerState {
        let file = (path as NSString).appendingPathComponent(stateFile)
        guard let data = FileManager.default.contents(atPath: file) else { throw TrainingError.corruptCheckpoint("\(file) cannot be read") }
        do {
            let decoder = JSONDecoder()
            decoder.keyDecodingStrategy = .convertFromSnakeCase
            return try decoder.decode(TrainerState.self, from: data)
        } catch {
            throw TrainingError.corruptCheckpoint("\(file): \(error)")
        }
    }

    /// `fsync` on a file or folder (best effort).
    static func synchronize(_ path: String) {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        for name in names {
            let descriptor = open((path as NSString).appendingPathComponent(name), O_RDONLY)
            if descriptor >= 0 { fsync(descriptor); close(descriptor) }
        }
        let descriptor = open(path, O_RDONLY)
        if descriptor >= 0 { fsync(descriptor); close(descriptor) }
    }
}

/// Why a training run stopped or could not start.
public enum TrainingError: Error, CustomStringConvertible, Equatable {
    /// The loss (or the gradient norm) is not finite.
    case nonFiniteLoss(step: Int, value: Float, lastCheckpoint: String?)
    /// `resume_from_checkpoint` names nothing.
    case checkpointNotFound(String, outputDir: String)
    /// A checkpoint does not fit this run or is damaged.
    case corruptCheckpoint(String)
    /// The output folder holds an earlier run.
    case outputExists(String)
    /// Reading or writing files failed.
    case io(String)
    /// The data cannot train this model.
    case data(String)

    public var description: String {
        switch self {
        case let .nonFiniteLoss(step, value, checkpoint):
            return "the loss became \(value) at step \(step); training stopped. "
                + (checkpoint.map { "The last good checkpoint is \($0); resume from it with a lower learning_rate or max_grad_norm." }
                   ?? "No checkpoint was written yet.")
        case let .checkpointNotFound(name, outputDir):
            return "no checkpoint \"\(name)\" (looked in \(outputDir) and at the path itself)"
        case .corruptCheckpoint(let reason): return "checkpoint does not fit this run: \(reason)"
        case .outputExists(let path):
            return "\(path) holds an earlier run; continue it with --resume latest, or start again with --overwrite-output-dir"
        case .io(let reason): return reason
        case .data(let reason): return reason
        }
    }
}
