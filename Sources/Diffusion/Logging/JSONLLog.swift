import Foundation
import NN
#if canImport(Glibc)
import Glibc
#endif

/// A value in a ``JSONLLog`` line.
public enum JSONScalar: Equatable, Sendable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByBooleanLiteral, ExpressibleByNilLiteral {
    /// A string, escaped as JSON requires.
    case string(String)
    /// An integer.
    case integer(Int)
    /// A single-precision number, written with the shortest decimal that
    /// reads back as the same `Float` (`0.1`, not `0.100000001`).
    case float(Float)
    /// A double-precision number, written with the shortest round-trip decimal.
    case double(Double)
    /// `true` or `false`.
    case bool(Bool)
    /// `null`.
    case null

    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .integer(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(nilLiteral: ()) { self = .null }

    /// The JSON text of this value. Non-finite numbers, which JSON cannot
    /// represent, become the strings `"nan"`, `"inf"` and `"-inf"`.
    public var jsonText: String {
        switch self {
        case .string(let string): return Self.quoted(string)
        case .integer(let integer): return String(integer)
        // Swift prints whole numbers as `1.0` and exponents as `1e-05`, both valid JSON.
        case .float(let float): return float.isFinite ? float.description : Self.nonFinite(Double(float))
        case .double(let double): return double.isFinite ? double.description : Self.nonFinite(double)
        case .bool(let bool): return bool ? "true" : "false"
        case .null: return "null"
        }
    }

    /// `string` as a JSON string literal: quotes, backslashes, control characters,
    /// DEL, U+2028 and U+2029 escaped, everything else left as UTF-8.
    public static func quoted(_ string: String) -> String {
        JSONStringLiteral.quoted(string, escaping: .javaScriptSafe)
    }

    private static func nonFinite(_ value: Double) -> String {
        value.isNaN ? "\"nan\"" : (value > 0 ? "\"inf\"" : "\"-inf\"")
    }
}

/// An append-only log with one JSON object per line (JSON Lines), readable
/// with `pandas.read_json(path, lines=True)` or `jq`.
///
/// Each line reaches the file in a single `write(2)` as soon as it is
/// appended, so a crash loses nothing and concurrent writers never interleave
/// within a line. An existing file is appended to. Thread-safe.
public final class JSONLLog: @unchecked Sendable {
    /// An error opening or writing the log.
    public enum LogError: Error, CustomStringConvertible {
        /// The file could not be opened.
        case cannotOpen(path: String, errno: Int32)
        /// Writing to or syncing the file failed.
        case writeFailed(path: String, errno: Int32)
        /// The log was closed.
        case closed(path: String)

        public var description: String {
            switch self {
            case .cannotOpen(let path, let code): return "cannot open \(path): \(String(cString: strerror(code)))"
            case .writeFailed(let path, let code): return "cannot write \(path): \(String(cString: strerror(code)))"
            case .closed(let path): return "the JSONL log \(path) is closed"
            }
        }
    }

    /// The log file's path.
    public let path: String
    private let lock = NSLock()
    private var fileDescriptor: Int32

    /// Opens `path` for appending, creating it (and its directory) if needed.
    public init(path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        self.path = path
        fileDescriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fileDescriptor >= 0 else { throw LogError.cannotOpen(path: path, errno: errno) }
    }

    deinit {
        if fileDescriptor >= 0 { _ = Glibc.close(fileDescriptor) }
    }

    /// The JSON object text (no newline) of `fields`, keys sorted.
    public static func line(_ fields: [String: JSONScalar]) -> String {
        line(orderedFields: fields.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
    }

    /// The JSON object text (no newline) of `fields`, in the given order.
    public static func line(orderedFields fields: [(String, JSONScalar)]) -> String {
        "{" + fields.map { JSONScalar.quoted($0.0) + ":" + $0.1.jsonText }.joined(separator: ",") + "}"
    }

    /// Appends one line with `fields`, keys sorted.
    public func append(_ fields: [String: JSONScalar]) throws {
        try appendLine(Self.line(fields))
    }

    /// Appends one line with `fields` in the given order (for example `step` first).
    public func append(orderedFields fields: [(String, JSONScalar)]) throws {
        try appendLine(Self.line(orderedFields: fields))
    }

    private func appendLine(_ line: String) throws {
        let bytes = Array((line + "\n").utf8)
        lock.lock()
        defer { lock.unlock() }
        guard fileDescriptor >= 0 else { throw LogError.closed(path: path) }
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.write(fileDescriptor, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                throw LogError.writeFailed(path: path, errno: errno)
            }
            offset += written
        }
    }

    /// Makes every line appended so far durable on disk (`fsync`). Lines
    /// already reach the file (and survive a crash of this process) without it.
    public func flush() throws {
        lock.lock()
        defer { lock.unlock() }
        guard fileDescriptor >= 0 else { return }
        guard fsync(fileDescriptor) == 0 else { throw LogError.writeFailed(path: path, errno: errno) }
    }

    /// Closes the file; later appends throw ``LogError/closed(path:)``.
    public func close() throws {
        lock.lock()
        defer { lock.unlock() }
        guard fileDescriptor >= 0 else { return }
        let result = Glibc.close(fileDescriptor)
        fileDescriptor = -1
        guard result == 0 else { throw LogError.writeFailed(path: path, errno: errno) }
    }
}
