#if canImport(Glibc)
import Glibc
#endif

/// Where a ``ProgressBar`` draws: a terminal, a CI log, or a test's buffer.
public protocol ProgressOutput: AnyObject {
    /// Whether the output is an interactive terminal, where one line can be
    /// redrawn in place with a carriage return.
    var isTerminal: Bool { get }
    /// The terminal's width in columns.
    var columns: Int { get }
    /// Writes `text` immediately (no buffering).
    func write(_ text: String)
}

/// A ``ProgressOutput`` writing to a file descriptor, by default standard error.
public final class FileDescriptorOutput: ProgressOutput, @unchecked Sendable {
    /// The descriptor written to.
    public let fileDescriptor: Int32

    /// Output to `fileDescriptor` (standard error unless given).
    public init(fileDescriptor: Int32 = STDERR_FILENO) {
        self.fileDescriptor = fileDescriptor
    }

    public var isTerminal: Bool { isatty(fileDescriptor) == 1 }

    /// The width from `ioctl(TIOCGWINSZ)`, else the `COLUMNS` variable, else 80.
    public var columns: Int {
        var size = winsize()
        if ioctl(fileDescriptor, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 {
            return Int(size.ws_col)
        }
        if let text = getenv("COLUMNS"), let value = Int(String(cString: text)), value > 0 {
            return value
        }
        return 80
    }

    public func write(_ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { Glibc.write(fileDescriptor, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            bytes = bytes.dropFirst(written)
        }
    }
}
