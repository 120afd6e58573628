import Foundation

/// One thread per served model: runs its jobs from a bounded queue, compatible waiting jobs together as one
/// batched run (up to `maximumBatch` images), the others one at a time.
public final class ModelWorker: @unchecked Sendable {
    /// The queue is full: the request should come back later.
    public struct QueueFull: Error {
        public let capacity: Int
    }

    public let model: ServedModel
    public let capacity: Int
    /// The most images one batched run makes (1: every job runs alone).
    public let maximumBatch: Int
    private let metrics: ServerMetrics
    private let condition = NSCondition()
    private var waiting: [Job] = []
    private var current: [Job] = []
    private var stopping = false
    private var finished = false

    init(model: ServedModel, capacity: Int, maximumBatch: Int = 1, metrics: ServerMetrics) {
        self.model = model
        self.capacity = capacity
        self.maximumBatch = maximumBatch
        self.metrics = metrics
        let thread = Thread { [self] in loop() }
        thread.name = "diffuse-worker-\(model.name)"
        thread.stackSize = 16 << 20
        thread.start()
    }

    /// Jobs waiting (not the running one).
    public var waitingCount: Int { condition.withLock { waiting.count } }

    /// The job sampling now (the first of a batch).
    public var runningJob: Job? { condition.withLock { current.first } }

    /// The jobs sampling now (several when batched).
    public var runningJobs: [Job] { condition.withLock { current } }

    /// Queues a job; returns how many jobs are ahead of it.
    func submit(_ job: Job) throws -> Int {
        try condition.withLock {
            guard !stopping else { throw QueueFull(capacity: 0) }
            waiting.removeAll { $0.currentState.isFinished }
            guard waiting.count < capacity else { throw QueueFull(capacity: capacity) }
            waiting.append(job)
            condition.signal()
            return waiting.count - 1 + (current.isEmpty ? 0 : 1)
        }
    }

    /// Stops taking jobs, cancels the waiting and running ones and waits (up to `timeout` seconds) for the thread to end.
    func stop(timeout: Double = 30) {
        let jobs: [Job] = condition.withLock {
            stopping = true
            condition.broadcast()
            return waiting + current
        }
        jobs.forEach { $0.cancel(reason: "the server is shutting down") }
        let deadline = Date().addingTimeInterval(timeout)
        condition.withLock {
            while !finished && Date() < deadline { _ = condition.wait(until: Date().addingTimeInterval(0.05)) }
        }
    }

    /// The first waiting job and the waiting jobs that can share its batched run (in queue order, up to
    /// `maximumBatch` images); under the lock.
    private func takeBatch() -> [Job] {
        let first = waiting.removeFirst()
        guard maximumBatch > 1, first.order.count < maximumBatch, let key = JobBatchKey.of(first.order, model: model) else { return [first] }
        var batch = [first]
        var images = first.order.count
        var index = 0
        while index < waiting.count && images < maximumBatch {
            let job = waiting[index]
            if !job.currentState.isFinished, images + job.order.count <= maximumBatch, JobBatchKey.of(job.order, model: model) == key {
                batch.append(waiting.remove(at: index))
                images += job.order.count
            } else {
                index += 1
            }
        }
        return batch
    }

    private func loop() {
        while true {
            let next: [Job]? = condition.withLock {
                while waiting.isEmpty && !stopping { condition.wait() }
                guard !stopping else { return nil }
                current = takeBatch()
                return current
            }
            guard let jobs = next else { break }
            let started = jobs.filter { $0.start() }
            JobRunner.run(started, maximumBatch: maximumBatch, metrics: metrics)
            condition.withLock { current = [] }
        }
        condition.withLock {
            current = []
            finished = true
            condition.broadcast()
        }
    }
}
