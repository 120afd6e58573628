import Dispatch
import Foundation

/// The one threading story of Diffuse: every kernel splits its work with
/// `Parallel.forEach` over Dispatch's pool, and BLAS runs single-threaded
/// inside each piece. Mixing OpenBLAS's own pthreads with Dispatch made both
/// spin against each other on this 2-core machine.
public enum Parallel {
    /// Worker count: `DIFFUSE_NUM_THREADS` if set, else the active cores.
    public nonisolated(unsafe) static var threadCount: Int = {
        if let text = ProcessInfo.processInfo.environment["DIFFUSE_NUM_THREADS"], let value = Int(text), value > 0 {
            return value
        }
        return Swift.max(1, ProcessInfo.processInfo.activeProcessorCount)
    }()

    /// Runs `body` on `count` indices split into at most `threadCount` contiguous
    /// chunks; each call gets a half-open range. Small jobs (below `grain`
    /// indices per extra thread) run on the calling thread.
    @inline(__always)
    public static func forEach(_ count: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
        guard count > 0 else { return }
        let chunks = Swift.min(threadCount, Swift.max(1, count / Swift.max(grain, 1)), count)
        if chunks <= 1 {
            body(0..<count)
            return
        }
        withoutActuallyEscaping(body) { escapable in
            DispatchQueue.concurrentPerform(iterations: chunks) { chunk in
                let start = count * chunk / chunks
                let end = count * (chunk + 1) / chunks
                if start < end { escapable(start..<end) }
            }
        }
    }

    /// Runs `body` once for every index in `0..<count`, spread over the workers.
    @inline(__always)
    public static func forEachIndex(_ count: Int, _ body: (Int) -> Void) {
        forEach(count) { range in
            for index in range { body(index) }
        }
    }
}
