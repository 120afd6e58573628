import Foundation
import NN
import Tensors

// What the four trainers (pixel UNet, text-to-image, VAE, CLIP) do alike around a checkpoint:
// pruning and logging after a write, checking a restored data position, restoring the EMA
// weights, and swapping the averaged weights in for sampling.

extension TrainingCheckpoint {
    /// After writing `path`: keeps the newest `limit` checkpoints (when set) and logs the
    /// `checkpoint` event, naming the folders removed.
    static func pruneAndLog(_ path: String, step: Int, in outputDir: String, keeping limit: Int?, log: TrainingLog?) {
        let removed = limit.map { prune(in: outputDir, keeping: $0) } ?? []
        let names = removed.map { ($0 as NSString).lastPathComponent }.joined(separator: ", ")
        log?.event("checkpoint", step: step, fields: [("path", .string(path))],
                   text: "checkpoint \(path)" + (removed.isEmpty ? "" : " (removed \(names))"))
    }

    /// Throws `corruptCheckpoint` when the restored data position lies beyond a dataset of
    /// `count` items (`noun` names them in the message).
    static func checkDataPosition(_ state: TrainerState, datasetCount count: Int, noun: String = "examples") throws {
        guard state.dataLoader.offset <= count else {
            throw TrainingError.corruptCheckpoint("its data position \(state.dataLoader) is beyond a dataset of \(count) \(noun)")
        }
    }
}

extension ExponentialMovingAverage {
    /// Loads the EMA weights of the checkpoint folder `path`; a checkpoint written without EMA
    /// starts the average from `parameters` (the checkpoint's weights), with a warning.
    func restore(fromCheckpoint path: String, parameters: [Tensor], message: (String) -> Void) throws {
        let file = (path as NSString).appendingPathComponent(TrainingCheckpoint.emaFile)
        if FileManager.default.fileExists(atPath: file) {
            try load(state: Safetensors.load(path: file))
        } else {
            message("warning: \(path) has no EMA weights; the average starts from the checkpoint's weights")
            for (shadow, parameter) in zip(shadowParameters, parameters) { shadow.copyValues(from: parameter) }
        }
    }

    /// Runs `body` with the averaged weights in `parameters`; the trained ones are put back after.
    /// Without an average (`ema` nil) just runs `body`.
    static func withAveragedWeights<Result>(_ ema: ExponentialMovingAverage?, in parameters: @autoclosure () -> [Tensor],
                                            _ body: () throws -> Result) rethrows -> Result {
        guard let ema else { return try body() }
        let parameters = parameters()
        let saved = ema.store(parameters)
        ema.copy(to: parameters)
        defer { for (parameter, copy) in zip(parameters, saved) { parameter.copyValues(from: copy) } }
        return try body()
    }
}
