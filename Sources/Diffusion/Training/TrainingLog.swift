import Foundation

/// What a training run writes for people: TensorBoard event files and a JSONL
/// log in `output_dir/logs/`, a live progress line on standard error, and
/// messages through a callback (standard output by default).
public final class TrainingLog {
    /// One optimizer step's numbers.
    public struct StepRecord: Equatable, Sendable {
        public var step: Int
        public var epoch: Int
        public var loss: Float
        public var learningRate: Float
        public var gradientNorm: Float
        public var imagesPerSecond: Double
    }

    /// `output_dir/logs`.
    public let directory: String
    /// The TensorBoard writer (nil when TensorBoard logging is off).
    public let tensorBoard: TensorBoardWriter?
    /// `logs/train.jsonl`: one line per optimizer step (and one per event such as a checkpoint).
    public let jsonl: JSONLLog
    /// Where messages go.
    public let message: (String) -> Void
    private var progress: ProgressBar?
    private let progressOutput: ProgressOutput?

    /// Opens (appending to) the logs of `outputDir`.
    /// - Parameter progressOutput: where the progress line goes (nil: no progress line).
    public init(outputDir: String, tensorBoard: Bool = true, progressOutput: ProgressOutput? = FileDescriptorOutput(),
                message: @escaping (String) -> Void) throws {
        directory = (outputDir as NSString).appendingPathComponent("logs")
        self.tensorBoard = tensorBoard ? try TensorBoardWriter(directory: directory) : nil
        jsonl = try JSONLLog(path: (directory as NSString).appendingPathComponent("train.jsonl"))
        self.message = message
        self.progressOutput = progressOutput
    }

    /// Starts the progress line at `step` of `total`.
    public func startProgress(total: Int, step: Int) {
        guard let progressOutput else { return }
        progress = ProgressBar(total: total, label: "train", initialStep: step, output: progressOutput)
    }

    /// Records one optimizer step everywhere.
    public func record(_ record: StepRecord, epochs: Int) throws {
        try jsonl.append(orderedFields: [
            ("step", .integer(record.step)), ("epoch", .integer(record.epoch)), ("loss", .float(record.loss)),
            ("lr", .float(record.learningRate)), ("grad_norm", .float(record.gradientNorm)),
            ("images_per_second", .double((record.imagesPerSecond * 10).rounded() / 10)),
            ("time", .double((Date().timeIntervalSince1970 * 1000).rounded() / 1000)),
        ])
        try tensorBoard?.addScalars([
            ("train/loss", record.loss), ("train/lr", record.learningRate),
            ("train/grad_norm", record.gradientNorm), ("train/images_per_second", Float(record.imagesPerSecond)),
        ], step: record.step)
        progress?.update(step: record.step, fields: [
            ("epoch", "\(record.epoch + 1)/\(epochs)"), ("loss", String(format: "%.4f", record.loss)),
            ("lr", String(format: "%.2e", record.learningRate)),
        ])
    }

    /// Writes an event line (`{"event": name, …}`) to the JSONL log and a message.
    public func event(_ name: String, step: Int, fields: [(String, JSONScalar)] = [], text: String) {
        try? jsonl.append(orderedFields: [("event", .string(name)), ("step", .integer(step))] + fields)
        say(text)
    }

    /// A message, on its own line even while the progress line is drawn.
    public func say(_ text: String) {
        if let progressOutput, progressOutput.isTerminal, progress != nil { progressOutput.write("\r\u{1B}[K") }
        message(text)
    }

    /// Adds a PNG to TensorBoard's images.
    public func image(tag: String, png: [UInt8], width: Int, height: Int, channels: Int, step: Int) {
        try? tensorBoard?.addImage(tag: tag, pngData: png, width: width, height: height, channels: channels, step: step)
    }

    /// Ends the progress line and flushes the files.
    public func finish() {
        progress?.finish()
        progress = nil
        try? tensorBoard?.flush()
        try? jsonl.flush()
    }
}
