import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A live progress line for training and sampling loops.
///
/// On a terminal it redraws one line in place (`\r`):
///
///     train 370/1000 [###########.................]  37% | epoch 2/5 | loss 0.0321 | 12.40 it/s | ETA 0:00:51
///
/// When the output is not a terminal (CI logs, `| tee`), it prints the same
/// line without the bar as a plain line every `plainInterval` seconds, so logs
/// stay readable. The rate is smoothed with an exponential moving average
/// (like tqdm's `smoothing=0.3`) and the ETA is `remaining steps / rate`.
/// Thread-safe.
public final class ProgressBar: @unchecked Sendable {
    /// The step count at which the bar is full.
    public let total: Int
    /// Text at the start of every line, such as `train`.
    public let label: String

    private let output: ProgressOutput
    private let clock: () -> Double
    private let plainInterval: Double
    private let redrawInterval: Double
    private let smoothing: Double
    private let lock = NSLock()

    private let startTime: Double
    private let startStep: Int
    private var lastRateTime: Double
    private var lastRateStep: Int
    private var smoothedRate: Double?
    private var lastDrawTime: Double?
    private var lastStep: Int
    private var lastFields: [(String, String)] = []
    private var finished = false

    /// A progress bar for `total` steps.
    ///
    /// - Parameters:
    ///   - total: Steps in the whole run (all epochs), for the percentage and ETA.
    ///   - label: Text at the start of every line.
    ///   - initialStep: The step a resumed run starts from.
    ///   - output: Where to draw; standard error by default.
    ///   - clock: Monotonic seconds; injectable for tests.
    ///   - plainInterval: Seconds between lines when the output is not a terminal.
    ///   - redrawInterval: Minimum seconds between redraws on a terminal.
    ///   - smoothing: Weight of the newest rate in the moving average (0...1).
    public init(total: Int, label: String = "", initialStep: Int = 0,
                output: ProgressOutput = FileDescriptorOutput(), clock: @escaping () -> Double = ProgressBar.monotonicSeconds,
                plainInterval: Double = 10, redrawInterval: Double = 0.1, smoothing: Double = 0.3) {
        self.total = max(total, 0)
        self.label = label
        self.output = output
        self.clock = clock
        self.plainInterval = plainInterval
        self.redrawInterval = redrawInterval
        self.smoothing = min(max(smoothing, 0), 1)
        startTime = clock()
        startStep = initialStep
        lastRateTime = startTime
        lastRateStep = initialStep
        lastStep = initialStep
    }

    /// Reports that `step` steps are done, with extra `fields` such as
    /// `[("epoch", "2/5"), ("loss", "0.0321")]` shown after the count.
    public func update(step: Int, fields: [(String, String)] = []) {
        lock.lock()
        defer { lock.unlock() }
        guard !finished else { return }
        let now = clock()
        if step > lastRateStep, now > lastRateTime {
            let rate = Double(step - lastRateStep) / (now - lastRateTime)
            smoothedRate = smoothedRate.map { smoothing * rate + (1 - smoothing) * $0 } ?? rate
            lastRateTime = now
            lastRateStep = step
        }
        lastStep = step
        lastFields = fields
        let interval = output.isTerminal ? redrawInterval : plainInterval
        let due = lastDrawTime.map { now - $0 >= interval } ?? true
        guard due || step >= total else { return }
        lastDrawTime = now
        draw(text: line(step: step, fields: fields, rate: smoothedRate, tail: "ETA " + eta()))
    }

    /// Draws the final line (average rate and elapsed time) and ends it with
    /// a newline. Later calls to ``update(step:fields:)`` are ignored.
    public func finish(fields: [(String, String)]? = nil) {
        lock.lock()
        defer { lock.unlock() }
        guard !finished else { return }
        finished = true
        let elapsed = clock() - startTime
        let rate = elapsed > 0 && lastStep > startStep ? Double(lastStep - startStep) / elapsed : smoothedRate
        draw(text: line(step: lastStep, fields: fields ?? lastFields, rate: rate,
                        tail: "elapsed " + Self.formatDuration(elapsed)))
        if output.isTerminal { output.write("\n") }
    }

    /// The steps per second currently used for the ETA, if known.
    public var rate: Double? {
        lock.lock()
        defer { lock.unlock() }
        return smoothedRate
    }

    /// `seconds` as `h:mm:ss` (hours not wrapped), or `-:--:--` if unknown.
    public static func formatDuration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0, seconds < 1e12 else { return "-:--:--" }
        let whole = Int(seconds.rounded())
        let (hours, minutes, rest) = (whole / 3600, (whole / 60) % 60, whole % 60)
        return "\(hours):" + (minutes < 10 ? "0" : "") + "\(minutes):" + (rest < 10 ? "0" : "") + "\(rest)"
    }

    /// `12.40 it/s`, or for slow loops `3.50 s/it`; `? it/s` if unknown.
    public static func formatRate(_ stepsPerSecond: Double?) -> String {
        guard let rate = stepsPerSecond, rate.isFinite, rate > 0 else { return "? it/s" }
        return rate >= 1 ? String(format: "%.2f it/s", rate) : String(format: "%.2f s/it", 1 / rate)
    }

    /// Seconds from an arbitrary start that never goes backwards.
    public static func monotonicSeconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) * 1e-9
    }

    private func eta() -> String {
        guard let rate = smoothedRate, rate > 0 else { return Self.formatDuration(.nan) }
        return Self.formatDuration(Double(max(total - lastStep, 0)) / rate)
    }

    /// The line without bar; the bar is inserted by ``draw(text:)`` on terminals.
    private func line(step: Int, fields: [(String, String)], rate: Double?, tail: String) -> Line {
        let percent = total > 0 ? min(max(Double(step) / Double(total), 0), 1) : 1
        let head = (label.isEmpty ? "" : label + " ") + "\(step)/\(total)"
        var rest = [String(format: "%3d%%", Int((percent * 100).rounded(.down)))]
        rest += fields.map { $0.0.isEmpty ? $0.1 : "\($0.0) \($0.1)" }
        rest += [Self.formatRate(rate), tail]
        return Line(head: head, fraction: percent, rest: rest)
    }

    /// Characters between the bar's brackets: the room the text leaves, at
    /// most 30; with less than 10 the bar is left out.
    static let minimumBarWidth = 10
    static let maximumBarWidth = 30

    private struct Line {
        var head: String
        var fraction: Double
        var rest: [String]
    }

    private func draw(text: Line) {
        let body = text.rest.joined(separator: " | ")
        guard output.isTerminal else {
            output.write("\(text.head) \(body)\n")
            return
        }
        let columns = max(output.columns, 20)
        let available = columns - 1 - text.head.count - body.count - 4  // spaces and brackets
        var line = text.head
        if available >= Self.minimumBarWidth {
            let width = min(available, Self.maximumBarWidth)
            let filled = Int((text.fraction * Double(width)).rounded(.down))
            line += " [" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "]"
        }
        line += " " + body
        if line.count > columns - 1 { line = String(line.prefix(columns - 1)) }
        output.write("\r" + line + "\u{1B}[K")
    }
}
