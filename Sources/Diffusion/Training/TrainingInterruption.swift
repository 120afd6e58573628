import Dispatch
import Foundation

/// Ctrl-C (SIGINT) and SIGTERM during training: the first one sets a flag the
/// trainer reads at the end of each optimizer step (it then writes a
/// checkpoint and returns); a second one ends the process at once with the
/// conventional status 128 + signal.
public final class TrainingInterruption: @unchecked Sendable {
    private let lock = NSLock()
    private var received: Int32?
    private var sources: [DispatchSourceSignal] = []
    private let signals: [Int32]

    /// A flag nothing sets until `install()`.
    public init(signals: [Int32] = [SIGINT, SIGTERM]) {
        self.signals = signals
    }

    deinit { uninstall() }

    /// The signal received, if any.
    public var signal: Int32? {
        lock.lock(); defer { lock.unlock() }
        return received
    }

    /// True once a signal arrived (or `request()` was called).
    public var isRequested: Bool { signal != nil }

    /// Sets the flag as a signal would (for tests and embedding).
    public func request(_ signal: Int32 = SIGINT) {
        lock.lock(); defer { lock.unlock() }
        if received == nil { received = signal }
    }

    /// Starts catching the signals (their default action is replaced until `uninstall()`).
    public func install(onFirst: (@Sendable (Int32) -> Void)? = nil) {
        guard sources.isEmpty else { return }
        for number in signals {
            Foundation.signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [weak self] in
                guard let self else { return }
                self.lock.lock()
                let first = self.received == nil
                if first { self.received = number }
                self.lock.unlock()
                if first {
                    onFirst?(number)
                } else {
                    FileHandle.standardError.write(Data("\nsecond interrupt: stopping now, without a checkpoint\n".utf8))
                    _exit(128 + number)
                }
            }
            source.resume()
            sources.append(source)
        }
    }

    /// Restores the default actions.
    public func uninstall() {
        for source in sources { source.cancel() }
        if !sources.isEmpty {
            for number in signals { Foundation.signal(number, SIG_DFL) }
        }
        sources = []
    }
}
