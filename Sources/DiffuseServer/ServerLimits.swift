/// What one request may ask for: larger requests are refused (400 or 413) naming the limit.
public struct ServerLimits: Sendable {
    /// The widest image, in pixels.
    public var maximumWidth = 1024
    /// The tallest image, in pixels.
    public var maximumHeight = 1024
    /// The most inference steps.
    public var maximumSteps = 200
    /// The most images one request makes.
    public var maximumCount = 8
    /// The largest request body, in bytes.
    public var maximumBodyBytes = 16 << 20
    /// Jobs waiting per model (beyond the running one); more are refused with 429.
    public var queueCapacity = 8
    /// The most images one batched sampling run makes from compatible waiting jobs (1: every job runs alone).
    public var maximumBatch = 8
    /// Finished jobs kept for `GET /api/v1/jobs/{id}`.
    public var keptJobs = 64

    public init() {}
}
