import Foundation

/// What a job tells its listeners (`GET /api/v1/jobs/{id}/events`, one server-sent event each).
public enum JobEvent: Sendable {
    /// Waiting behind `position` other jobs.
    case queued(position: Int)
    /// Sampling began.
    case started(steps: Int)
    /// One step done: x_t and the predicted x0 as small base64 PNGs when previews are due.
    case step(StepProgress)
    /// A log line of the run (guidance loss reports, warnings).
    case log(String)
    /// The job ended (succeeded, failed or cancelled).
    case finished(JobSnapshot)

    /// The SSE event name.
    public var name: String {
        switch self {
        case .queued: return "queued"
        case .started: return "started"
        case .step: return "step"
        case .log: return "log"
        case .finished(let snapshot): return snapshot.state.rawValue
        }
    }

    /// True for the last event of a job.
    public var isFinal: Bool {
        if case .finished = self { return true }
        return false
    }

    /// The event's data as JSON.
    public var json: String {
        switch self {
        case .queued(let position): return JSONOutput.string(["position": position])
        case .started(let steps): return JSONOutput.string(["steps": steps])
        case .step(let progress): return JSONOutput.string(progress)
        case .log(let line): return JSONOutput.string(["message": line])
        case .finished(let snapshot): return JSONOutput.string(snapshot)
        }
    }

    /// The bytes of one server-sent event.
    public var serverSentEvent: String { "event: \(name)\ndata: \(json)\n\n" }
}

/// One step of a running job.
public struct StepProgress: Codable, Sendable {
    /// Steps done (1-based).
    public var step: Int
    public var steps: Int
    /// The timestep the model was evaluated at.
    public var timestep: Float
    /// A small base64 PNG of x_t (nil between previews).
    public var sample: String?
    /// A small base64 PNG of the predicted x0 (nil between previews).
    public var predictedOriginal: String?
    /// Steps per second so far.
    public var stepsPerSecond: Double
    /// The mean per-image loss guidance loss of this step's x0 (nil without loss guidance).
    public var guidanceLoss: Double?
    /// The mean log p(class | x_t) of classifier guidance (nil without it).
    public var logProbability: Double?
}
