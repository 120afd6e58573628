import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Writes TensorBoard event files (`events.out.tfevents.<seconds>.<hostname>`)
/// that TensorBoard reads directly: scalar curves and images.
///
/// Every record goes to the file in a single `write(2)` as soon as it is
/// added, so a crash (even `kill -9`) loses nothing already added; ``flush()``
/// additionally asks the kernel to put it on disk. An existing file of the
/// same name is appended to, never truncated. All methods are thread-safe.
///
///     let writer = try TensorBoardWriter(directory: "runs/mnist")
///     try writer.addScalar(tag: "train/loss", value: loss, step: step)
///     try writer.addImage(tag: "samples", pngData: png, width: 64, height: 64, channels: 1, step: step)
public final class TensorBoardWriter: @unchecked Sendable {
    /// An error from opening or writing the event file.
    public enum WriterError: Error, CustomStringConvertible {
        /// The file could not be opened.
        case cannotOpen(path: String, errno: Int32)
        /// Writing to or syncing the file failed.
        case writeFailed(path: String, errno: Int32)
        /// The writer was closed.
        case closed(path: String)
        /// An image's width, height or channel count is not valid.
        case invalidImage(String)

        public var description: String {
            switch self {
            case .cannotOpen(let path, let code): return "cannot open \(path): \(String(cString: strerror(code)))"
            case .writeFailed(let path, let code): return "cannot write \(path): \(String(cString: strerror(code)))"
            case .closed(let path): return "the TensorBoard writer for \(path) is closed"
            case .invalidImage(let reason): return "invalid image: \(reason)"
            }
        }
    }

    /// The event file's full path.
    public let path: String

    private let lock = NSLock()
    private var fileDescriptor: Int32
    private let clock: @Sendable () -> Double

    /// Opens (creating `directory` if needed) the event file
    /// `events.out.tfevents.<creationTime seconds>.<hostname>` and, if the
    /// file is new, writes the `brain.Event:2` header record.
    ///
    /// - Parameters:
    ///   - directory: The log directory (TensorBoard's `--logdir` or a run below it).
    ///   - creationTime: Wall time of the header, in seconds since 1970; now if `nil`.
    ///   - hostname: The file name's last component; this machine's name if `nil`.
    ///   - clock: Wall time of events added without an explicit one.
    public init(directory: String, creationTime: Double? = nil, hostname: String? = nil,
                clock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let startTime = creationTime ?? clock()
        let host = hostname ?? Self.hostname()
        path = (directory as NSString).appendingPathComponent("events.out.tfevents.\(Int64(startTime.rounded(.down))).\(host)")
        self.clock = clock
        fileDescriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fileDescriptor >= 0 else { throw WriterError.cannotOpen(path: path, errno: errno) }
        var status = stat()
        if fstat(fileDescriptor, &status) == 0, status.st_size == 0 {
            try write(TensorBoardEvent(wallTime: startTime, payload: .fileVersion(TensorBoardEvent.currentFileVersion)))
        }
    }

    deinit {
        if fileDescriptor >= 0 { _ = Glibc.close(fileDescriptor) }
    }

    /// Adds one point to the scalar curve `tag`.
    public func addScalar(tag: String, value: Float, step: Int, wallTime: Double? = nil) throws {
        try addScalars([(tag, value)], step: step, wallTime: wallTime)
    }

    /// Adds one point to each of several scalar curves, in a single event.
    public func addScalars(_ values: [(tag: String, value: Float)], step: Int, wallTime: Double? = nil) throws {
        let summary = values.map { TensorBoardEvent.Value(tag: $0.tag, content: .scalar($0.value)) }
        try write(TensorBoardEvent(wallTime: wallTime ?? clock(), step: Int64(step), payload: .summary(summary)))
    }

    /// Adds an already encoded PNG image to the image series `tag`.
    ///
    /// - Parameters:
    ///   - pngData: The PNG file's bytes.
    ///   - width: Width in pixels.
    ///   - height: Height in pixels.
    ///   - channels: 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA).
    public func addImage(tag: String, pngData: [UInt8], width: Int, height: Int, channels: Int,
                         step: Int, wallTime: Double? = nil) throws {
        guard width > 0, height > 0, width <= Int(Int32.max), height <= Int(Int32.max) else {
            throw WriterError.invalidImage("size \(width)×\(height)")
        }
        guard (1...4).contains(channels) else { throw WriterError.invalidImage("\(channels) channels") }
        let image = TensorBoardEvent.Image(height: height, width: width, colorspace: channels, encodedImage: pngData)
        let value = TensorBoardEvent.Value(tag: tag, content: .image(image))
        try write(TensorBoardEvent(wallTime: wallTime ?? clock(), step: Int64(step), payload: .summary([value])))
    }

    /// Appends `event` as one TFRecord.
    public func write(_ event: TensorBoardEvent) throws {
        let record = TFRecord.frame(event.encoded())
        lock.lock()
        defer { lock.unlock() }
        guard fileDescriptor >= 0 else { throw WriterError.closed(path: path) }
        try record.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = Glibc.write(fileDescriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    throw WriterError.writeFailed(path: path, errno: errno)
                }
                offset += written
            }
        }
    }

    /// Makes everything written so far durable on disk (`fsync`). Records
    /// already reach the file (and survive a crash of this process) without it.
    public func flush() throws {
        lock.lock()
        defer { lock.unlock() }
        guard fileDescriptor >= 0 else { return }
        guard fsync(fileDescriptor) == 0 else { throw WriterError.writeFailed(path: path, errno: errno) }
    }

    /// Flushes and closes the file; later writes throw ``WriterError/closed(path:)``.
    public func close() throws {
        try flush()
        lock.lock()
        defer { lock.unlock() }
        guard fileDescriptor >= 0 else { return }
        let result = Glibc.close(fileDescriptor)
        fileDescriptor = -1
        guard result == 0 else { throw WriterError.writeFailed(path: path, errno: errno) }
    }

    /// This machine's host name, or `localhost` when it cannot be read.
    static func hostname() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(cString: buffer)
        return name.isEmpty ? "localhost" : name
    }
}
