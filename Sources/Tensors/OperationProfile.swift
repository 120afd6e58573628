import Foundation

/// An opt-in profile of where a training step spends its time, per recorded op:
/// `DIFFUSE_PROFILE=1` turns it on (or set `isEnabled`); `DIFFUSE_PROFILE=shapes`
/// also splits each op's row by its output shape.
///
/// Forward time is attributed to an op as the time since the previous op was
/// recorded (so module code between ops is counted with the op that follows);
/// only ops recorded for autograd are seen, i.e. not under `noGrad`. Backward
/// time is each node's backward rule, summing of its gradients excluded.
public enum OperationProfile {
    /// Whether ops are timed (default: the environment variable `DIFFUSE_PROFILE` is `1`).
    public static var isEnabled: Bool = ["1", "shapes"].contains(ProcessInfo.processInfo.environment["DIFFUSE_PROFILE"])
    /// Whether rows are split by output shape (default: `DIFFUSE_PROFILE` is `shapes`).
    public static var splitsByShape: Bool = ProcessInfo.processInfo.environment["DIFFUSE_PROFILE"] == "shapes"

    struct Entry {
        var forwardNanoseconds: UInt64 = 0
        var forwardCount = 0
        var backwardNanoseconds: UInt64 = 0
        var backwardCount = 0
    }

    private static var entries: [String: Entry] = [:]
    private static var lastMark: UInt64 = 0

    @inline(__always)
    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// Starts forward attribution from now (call before a forward pass).
    public static func mark() { lastMark = now() }

    static func key(_ name: String, _ shape: [Int]) -> String {
        splitsByShape ? name + " " + shape.map(String.init).joined(separator: "x") : name
    }

    /// An op named `name` was recorded: it gets the time since the last mark.
    static func recordForward(_ name: String, shape: [Int]) {
        let name = key(name, shape)
        let time = now()
        if lastMark != 0 {
            entries[name, default: Entry()].forwardNanoseconds += time - lastMark
            entries[name, default: Entry()].forwardCount += 1
        }
        lastMark = time
    }

    /// A backward rule of `name` took `nanoseconds`.
    static func recordBackward(_ name: String, shape: [Int], nanoseconds: UInt64) {
        let name = key(name, shape)
        entries[name, default: Entry()].backwardNanoseconds += nanoseconds
        entries[name, default: Entry()].backwardCount += 1
        lastMark = 0
    }

    /// Forgets everything recorded.
    public static func reset() { entries = [:]; lastMark = 0 }

    /// A table, largest total first: op, calls, forward ms, backward ms, share of the total.
    public static func report() -> String {
        func column(_ text: String, _ width: Int, left: Bool = false) -> String {
            let padding = String(repeating: " ", count: Swift.max(0, width - text.count))
            return left ? text + padding : padding + text
        }
        let width = Swift.max(30, (entries.keys.map(\.count).max() ?? 0) + 1)
        let rows = entries.sorted { $0.value.forwardNanoseconds + $0.value.backwardNanoseconds > $1.value.forwardNanoseconds + $1.value.backwardNanoseconds }
        let forward = rows.reduce(UInt64(0)) { $0 + $1.value.forwardNanoseconds }
        let backward = rows.reduce(UInt64(0)) { $0 + $1.value.backwardNanoseconds }
        let total = Double(forward + backward)
        var lines = [column("op", width, left: true) + column("calls", 7) + column("fwd ms", 10) + column("bwd ms", 10) + column("share", 8)]
        for (name, entry) in rows {
            let sum = Double(entry.forwardNanoseconds + entry.backwardNanoseconds)
            lines.append(column(name, width, left: true) + column("\(Swift.max(entry.forwardCount, entry.backwardCount))", 7)
                         + column(String(format: "%.1f", Double(entry.forwardNanoseconds) / 1e6), 10)
                         + column(String(format: "%.1f", Double(entry.backwardNanoseconds) / 1e6), 10)
                         + column(String(format: "%.1f%%", total > 0 ? 100 * sum / total : 0), 8))
        }
        lines.append(column("total", width, left: true) + column("", 7) + column(String(format: "%.1f", Double(forward) / 1e6), 10)
                     + column(String(format: "%.1f", Double(backward) / 1e6), 10))
        return lines.joined(separator: "\n")
    }
}
