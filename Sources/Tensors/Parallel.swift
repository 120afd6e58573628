import Dispatch
import Foundation
import Synchronization

/// The one threading story of Diffuse: every kernel splits its work with
/// `Parallel.forEach` over one pool of worker threads, and BLAS runs
/// single-threaded inside each piece. Mixing OpenBLAS's own pthreads with
/// another pool made both spin against each other on this 2-core machine.
///
/// The workers spin for a few milliseconds after each job before they sleep,
/// like OpenMP's: kernels in a training step come back to back, and waking a
/// sleeping thread (Dispatch's pool) cost as much as a small kernel itself.
/// A call from inside a worker, or while another thread is using the pool,
/// runs on the calling thread.
public enum Parallel {
    /// Worker count including the calling thread: `DIFFUSE_NUM_THREADS` if set, else the active cores.
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
        WorkerPool.shared.run(chunks: chunks) { chunk in
            let start = count * chunk / chunks
            let end = count * (chunk + 1) / chunks
            if start < end { body(start..<end) }
        }
    }

    /// Runs `body(task)` for `count` tasks, handed out one at a time to whichever
    /// worker is free (for uneven work).
    public static func forEachTask(_ count: Int, _ body: (Int) -> Void) {
        guard count > 0 else { return }
        if count == 1 || threadCount == 1 {
            for task in 0..<count { body(task) }
            return
        }
        WorkerPool.shared.run(chunks: count, body)
    }

    /// Runs `body` once for every index in `0..<count`, spread over the workers.
    @inline(__always)
    public static func forEachIndex(_ count: Int, _ body: (Int) -> Void) {
        forEach(count) { range in
            for index in range { body(index) }
        }
    }
}

/// Persistent worker threads that take chunks of one job at a time.
final class WorkerPool: @unchecked Sendable {
    static let shared = WorkerPool(workerCount: Parallel.threadCount - 1)

    /// One submitted job: chunks are claimed by counting up `nextChunk`.
    final class Job: @unchecked Sendable {
        var body: ((Int) -> Void)?
        let chunkCount: Int
        let nextChunk = Atomic<Int>(0)
        let finishedChunks = Atomic<Int>(0)

        init(body: @escaping (Int) -> Void, chunkCount: Int) {
            self.body = body
            self.chunkCount = chunkCount
        }

        /// Claims and runs chunks until none are left.
        func participate() {
            while true {
                let chunk = nextChunk.add(1, ordering: .relaxed).oldValue
                if chunk >= chunkCount { return }
                body?(WorkerPool.testingReversesChunks ? chunkCount - 1 - chunk : chunk)
                finishedChunks.add(1, ordering: .releasing)
            }
        }
    }

    private let generation = Atomic<Int>(0)
    private var currentJob: Job?
    private let jobLock = NSLock()
    private let submitLock = NSLock()
    private let sleepCondition = NSCondition()
    private var sleepingWorkers = 0
    private let workerCount: Int
    /// How long an idle worker spins before it sleeps.
    private let spinNanoseconds: UInt64 = 5_000_000

    /// For tests: how long a worker thread waits before it takes part in a job, so that the caller
    /// claims most of the work (a worker descheduled by the system, made reproducible).
    nonisolated(unsafe) static var testingWorkerDelayMicroseconds: UInt32 = 0

    /// For tests: chunks handed out last first, so that work finishes in another order than usual.
    nonisolated(unsafe) static var testingReversesChunks = false

    /// Non-zero on a worker thread and on a caller while it takes part in its job.
    private static let inside = ThreadLocalCount()

    init(workerCount: Int) {
        self.workerCount = Swift.max(0, workerCount)
        for index in 0..<self.workerCount {
            let thread = Thread { [unowned self] in self.workerLoop() }
            thread.name = "diffuse-worker-\(index + 1)"
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    private static var isInsideJob: Bool {
        inside.value != 0
    }

    func run(chunks: Int, _ body: (Int) -> Void) {
        // Nested or concurrent use runs inline: one job owns the workers at a time.
        if workerCount == 0 || WorkerPool.isInsideJob || !submitLock.try() {
            for chunk in 0..<chunks { body(chunk) }
            return
        }
        defer { submitLock.unlock() }
        withoutActuallyEscaping(body) { escapable in
            let job = Job(body: escapable, chunkCount: chunks)
            jobLock.lock()
            currentJob = job
            jobLock.unlock()
            generation.add(1, ordering: .releasing)
            sleepCondition.lock()
            if sleepingWorkers > 0 { sleepCondition.broadcast() }
            sleepCondition.unlock()

            WorkerPool.inside.value = 1
            job.participate()
            WorkerPool.inside.value = 0
            while job.finishedChunks.load(ordering: .acquiring) < chunks {}

            jobLock.lock()
            currentJob = nil
            jobLock.unlock()
            job.body = nil
        }
    }

    private func workerLoop() {
        WorkerPool.inside.value = 1
        var seen = 0
        while true {
            // Spin for a while: the next kernel usually follows within microseconds.
            let start = DispatchTime.now().uptimeNanoseconds
            var spins = 0
            while generation.load(ordering: .acquiring) == seen {
                spins += 1
                if spins & 255 == 0 && DispatchTime.now().uptimeNanoseconds - start > spinNanoseconds {
                    sleepCondition.lock()
                    sleepingWorkers += 1
                    while generation.load(ordering: .acquiring) == seen { sleepCondition.wait() }
                    sleepingWorkers -= 1
                    sleepCondition.unlock()
                    break
                }
            }
            jobLock.lock()
            let job = currentJob
            seen = generation.load(ordering: .acquiring)
            jobLock.unlock()
            if WorkerPool.testingWorkerDelayMicroseconds > 0 { usleep(WorkerPool.testingWorkerDelayMicroseconds) }
            job?.participate()
        }
    }
}
