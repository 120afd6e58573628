import Foundation

/// The jobs the server knows: running, queued, and the last few finished.
final class JobTable: @unchecked Sendable {
    private let lock = NSLock()
    private var jobs: [String: Job] = [:]
    private var order: [String] = []
    private let kept: Int

    init(kept: Int) { self.kept = kept }

    func add(_ job: Job) {
        lock.withLock {
            jobs[job.id] = job
            order.append(job.id)
            // Forget the oldest finished jobs beyond `kept`.
            var finished = order.filter { jobs[$0]?.currentState.isFinished ?? true }
            while finished.count > kept, let oldest = finished.first {
                finished.removeFirst()
                jobs[oldest] = nil
                order.removeAll { $0 == oldest }
            }
        }
    }

    func job(_ id: String) -> Job? { lock.withLock { jobs[id] } }

    /// All jobs, oldest first.
    var all: [Job] { lock.withLock { order.compactMap { jobs[$0] } } }
}
