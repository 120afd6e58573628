import Foundation

/// Where a job is.
public enum JobState: String, Codable, Sendable {
    case queued, running, succeeded, failed, cancelled

    /// True once the job will not change again.
    public var isFinished: Bool { self == .succeeded || self == .failed || self == .cancelled }
}

/// A job as `GET /api/v1/jobs/{id}` shows it.
public struct JobSnapshot: Codable, Sendable {
    public var id: String
    public var model: String
    public var state: JobState
    /// Steps done and in all.
    public var step: Int
    public var steps: Int
    public var seed: UInt64
    /// The parameters as A1111's infotext line.
    public var info: String
    /// Seconds from submission to the end (nil while unfinished).
    public var seconds: Double?
    /// The images as base64 PNGs (only when succeeded; absent in events unless asked).
    public var images: [String]?
    /// Why it failed or was cancelled.
    public var error: String?
    /// Images in the batched sampling run that made this job's images, with other jobs' (nil: it ran alone).
    public var batchedImages: Int?
}
