import Diffusion
import Foundation

/// One generation in the server: its order, its state, and the listeners of its events.
/// Thread-safe: the worker thread updates it, request handlers read it and listen.
public final class Job: @unchecked Sendable {
    /// Thrown from the step callback to stop a cancelled job.
    struct Cancelled: Error {}

    public let id: String
    public let model: ServedModel
    public let order: GenerationOrder
    public let created = Date()
    /// Cancel the job when an events listener disconnects before its end.
    public var cancelsOnDisconnect: Bool {
        get { lock.withLock { cancelOnDisconnect } }
        set { lock.withLock { cancelOnDisconnect = newValue } }
    }

    private let lock = NSLock()
    private var state = JobState.queued
    private var step = 0
    private var steps: Int
    private var lastProgress: StepProgress?
    private var images: [[UInt8]] = []
    private var error: String?
    private var finished: Date?
    private var cancelRequested = false
    private var cancelOnDisconnect = true
    private var batchedImages: Int?
    private var listeners: [UUID: AsyncStream<JobEvent>.Continuation] = [:]
    private var waiters: [CheckedContinuation<Void, Never>] = []

    /// Told once when the job ends (the server's metrics): the final state and the seconds since submission.
    private let onFinish: @Sendable (JobState, Double) -> Void

    init(id: String = UUID().uuidString.lowercased(), model: ServedModel, order: GenerationOrder,
         onFinish: @escaping @Sendable (JobState, Double) -> Void = { _, _ in }) {
        self.id = id
        self.model = model
        self.order = order
        self.steps = order.steps
        self.onFinish = onFinish
    }

    /// True once `cancel` was called (the worker stops at the next step).
    public var isCancelRequested: Bool { lock.withLock { cancelRequested } }

    public var currentState: JobState { lock.withLock { state } }

    /// The last step's progress (with the last previews sent).
    public var progress: StepProgress? { lock.withLock { lastProgress } }

    /// The PNG files of a succeeded job.
    public var pngImages: [[UInt8]] { lock.withLock { images } }

    /// What `GET /api/v1/jobs/{id}` shows.
    public func snapshot(includingImages: Bool) -> JobSnapshot {
        lock.withLock {
            JobSnapshot(id: id, model: model.name, state: state, step: step, steps: steps, seed: order.seed, info: order.parameterLine,
                        seconds: finished.map { $0.timeIntervalSince(created) },
                        images: includingImages && state == .succeeded ? images.map { Data($0).base64EncodedString() } : nil,
                        error: error, batchedImages: batchedImages)
        }
    }

    /// The events from now on, starting with where the job is; the stream ends after the final event.
    public func events() -> AsyncStream<JobEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: JobEvent.self, bufferingPolicy: .bufferingNewest(32))
        let key = UUID()
        let current: JobEvent? = lock.withLock {
            switch state {
            case .queued: listeners[key] = continuation; return .queued(position: 0)
            case .running: listeners[key] = continuation; return lastProgress.map { .step($0) } ?? .started(steps: steps)
            default: return nil
            }
        }
        if let current {
            continuation.yield(current)
            continuation.onTermination = { [weak self] _ in self?.removeListener(key) }
        } else {
            continuation.yield(.finished(snapshot(includingImages: false)))
            continuation.finish()
        }
        return stream
    }

    private func removeListener(_ key: UUID) {
        _ = lock.withLock { listeners.removeValue(forKey: key) }
    }

    /// Waits until the job has finished.
    public func waitUntilFinished() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done: Bool = lock.withLock {
                if state.isFinished { return true }
                waiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Asks the job to stop: a queued job ends at once (its worker skips it), a running one within a step.
    /// Returns false when it had already finished.
    @discardableResult
    public func cancel(reason: String = "cancelled") -> Bool {
        let queued: Bool = lock.withLock {
            guard !state.isFinished else { return false }
            cancelRequested = true
            if error == nil { error = reason }
            return state == .queued
        }
        if queued { finish(.cancelled, images: [], error: reason) }
        return true
    }

    // MARK: Updates from the worker

    /// Marks the job running; false when it was cancelled while queued.
    func start() -> Bool {
        let started: Bool = lock.withLock {
            guard state == .queued, !cancelRequested else { return false }
            state = .running
            return true
        }
        if started { publish(.started(steps: steps)) }
        return started
    }

    /// Notes that the job runs in a batched run of `images` images.
    func markBatched(images: Int) {
        lock.withLock { batchedImages = images }
    }

    func record(_ progress: StepProgress) {
        lock.withLock {
            step = progress.step
            steps = progress.steps
            if progress.sample != nil || lastProgress == nil {
                lastProgress = progress
            } else {
                lastProgress?.step = progress.step
                lastProgress?.steps = progress.steps
                lastProgress?.timestep = progress.timestep
                lastProgress?.stepsPerSecond = progress.stepsPerSecond
            }
        }
        publish(.step(progress))
    }

    func publish(_ event: JobEvent) {
        let targets = lock.withLock { Array(listeners.values) }
        targets.forEach { $0.yield(event) }
    }

    /// Ends the job; later calls do nothing.
    func finish(_ final: JobState, images: [[UInt8]], error: String?) {
        let done: (targets: [AsyncStream<JobEvent>.Continuation], waiters: [CheckedContinuation<Void, Never>])? = lock.withLock {
            guard !state.isFinished else { return nil }
            state = final
            self.images = images
            self.error = final == .succeeded ? nil : (error ?? self.error)
            finished = Date()
            defer { listeners = [:]; waiters = [] }
            return (Array(listeners.values), waiters)
        }
        guard let done else { return }
        onFinish(final, Date().timeIntervalSince(created))
        let event = JobEvent.finished(snapshot(includingImages: false))
        for target in done.targets {
            target.yield(event)
            target.finish()
        }
        done.waiters.forEach { $0.resume() }
    }
}
