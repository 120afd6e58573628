import Foundation

/// One thread per served model: runs its jobs one at a time from a bounded queue.
public final class ModelWorker: @unchecked Sendable {
    /// The queue is full: the request should come back later.
    public struct QueueFull: Error {
        public let capacity: Int
    }

    public let model: ServedModel
    public let capacity: Int
    private let metrics: ServerMetrics
    private let condition = NSCondition()
    private var waiting: [Job] = []
    private var current: Job?
    private var stopping = false
    private var finished = false

    init(model: ServedModel, capacity: Int, metrics: ServerMetrics) {
        self.model = model
        self.capacity = capacity
        self.metrics = metrics
        let thread = Thread { [self] in loop() }
        thread.name = "diffuse-worker-\(model.name)"
        thread.stackSize = 16 << 20
        thread.start()
    }

    /// Jobs waiting (not the running one).
    public var waitingCount: Int { condition.withLock { waiting.count } }

    /// The job sampling now.
    public var runningJob: Job? { condition.withLock { current } }

    /// Queues a job; returns how many jobs are ahead of it.
    func submit(_ job: Job) throws -> Int {
        try condition.withLock {
            guard !stopping else { throw QueueFull(capacity: 0) }
            waiting.removeAll { $0.currentState.isFinished }
            guard waiting.count < capacity else { throw QueueFull(capacity: capacity) }
            waiting.append(job)
            condition.signal()
            return waiting.count - 1 + (current == nil ? 0 : 1)
        }
    }

    /// Stops taking jobs, cancels the waiting and running ones and waits (up to `timeout` seconds) for the thread to end.
    func stop(timeout: Double = 30) {
        let jobs: [Job] = condition.withLock {
            stopping = true
            condition.broadcast()
            return waiting + (current.map { [$0] } ?? [])
        }
        jobs.forEach { $0.cancel(reason: "the server is shutting down") }
        let deadline = Date().addingTimeInterval(timeout)
        condition.withLock {
            while !finished && Date() < deadline { _ = condition.wait(until: Date().addingTimeInterval(0.05)) }
        }
    }

    private func loop() {
        while true {
            let next: Job? = condition.withLock {
                while waiting.isEmpty && !stopping { condition.wait() }
                guard !stopping else { return nil }
                let job = waiting.removeFirst()
                current = job
                return job
            }
            guard let job = next else { break }
            if job.start() {
                let outcome = JobRunner.run(job, metrics: metrics)
                job.finish(outcome.state, images: outcome.images, error: outcome.error)
            }
            condition.withLock { current = nil }
        }
        condition.withLock {
            current = nil
            finished = true
            condition.broadcast()
        }
    }
}
