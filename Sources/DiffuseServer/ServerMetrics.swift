import Foundation

/// Counters for `/metrics`, in Prometheus' text exposition format.
public final class ServerMetrics: @unchecked Sendable {
    /// Upper bounds of the job latency histogram, in seconds.
    public static let latencyBuckets: [Double] = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]

    private let lock = NSLock()
    private var jobs: [JobState: Int] = [:]
    private var rejected = 0
    private var steps = 0
    private var stepSeconds = 0.0
    private var latencyCounts = [Int](repeating: 0, count: ServerMetrics.latencyBuckets.count)
    private var latencySum = 0.0
    private var latencyCount = 0
    private var requests: [Int: Int] = [:]
    private var batchedRuns = 0
    private var batchedJobs = 0
    private var batchedImages = 0

    public init() {}

    func jobFinished(_ state: JobState, seconds: Double) {
        lock.withLock {
            jobs[state, default: 0] += 1
            guard state == .succeeded else { return }
            for (index, bound) in Self.latencyBuckets.enumerated() where seconds <= bound { latencyCounts[index] += 1 }
            latencySum += seconds
            latencyCount += 1
        }
    }

    func jobRejected() { lock.withLock { rejected += 1 } }

    /// One batched sampling run of `jobs` jobs making `images` images.
    func batchedRun(jobs: Int, images: Int) {
        lock.withLock {
            batchedRuns += 1
            batchedJobs += jobs
            batchedImages += images
        }
    }

    func stepsDone(_ count: Int, seconds: Double) {
        lock.withLock {
            steps += count
            stepSeconds += seconds
        }
    }

    func response(status: Int) { lock.withLock { requests[status, default: 0] += 1 } }

    /// Jobs that ended in `state` so far.
    public func finishedJobs(_ state: JobState) -> Int { lock.withLock { jobs[state, default: 0] } }

    /// The exposition text; `queues` gives each model's waiting and running jobs.
    public func exposition(queues: [(model: String, waiting: Int, running: Int)]) -> String {
        lock.withLock {
            var lines: [String] = []
            lines.append("# HELP diffuse_queue_length Jobs waiting for a model's worker.")
            lines.append("# TYPE diffuse_queue_length gauge")
            for queue in queues { lines.append("diffuse_queue_length{model=\"\(Self.escape(queue.model))\"} \(queue.waiting)") }
            lines.append("# HELP diffuse_jobs_running Jobs sampling now.")
            lines.append("# TYPE diffuse_jobs_running gauge")
            for queue in queues { lines.append("diffuse_jobs_running{model=\"\(Self.escape(queue.model))\"} \(queue.running)") }
            lines.append("# HELP diffuse_jobs_total Jobs ended, by final state; rejected: refused with 429.")
            lines.append("# TYPE diffuse_jobs_total counter")
            for state in [JobState.succeeded, .failed, .cancelled] { lines.append("diffuse_jobs_total{state=\"\(state.rawValue)\"} \(jobs[state, default: 0])") }
            lines.append("diffuse_jobs_total{state=\"rejected\"} \(rejected)")
            lines.append("# HELP diffuse_steps_total Sampling steps run.")
            lines.append("# TYPE diffuse_steps_total counter")
            lines.append("diffuse_steps_total \(steps)")
            lines.append("# HELP diffuse_steps_per_second Sampling steps per second of sampling time.")
            lines.append("# TYPE diffuse_steps_per_second gauge")
            lines.append("diffuse_steps_per_second \(stepSeconds > 0 ? Double(steps) / stepSeconds : 0)")
            lines.append("# HELP diffuse_batched_runs_total Batched sampling runs (several jobs, or one job's images of several seeds).")
            lines.append("# TYPE diffuse_batched_runs_total counter")
            lines.append("diffuse_batched_runs_total \(batchedRuns)")
            lines.append("# HELP diffuse_batched_jobs_total Jobs run in batched sampling runs.")
            lines.append("# TYPE diffuse_batched_jobs_total counter")
            lines.append("diffuse_batched_jobs_total \(batchedJobs)")
            lines.append("# HELP diffuse_batched_images_total Images made by batched sampling runs.")
            lines.append("# TYPE diffuse_batched_images_total counter")
            lines.append("diffuse_batched_images_total \(batchedImages)")
            lines.append("# HELP diffuse_job_seconds Seconds from submission to result of succeeded jobs.")
            lines.append("# TYPE diffuse_job_seconds histogram")
            for (index, bound) in Self.latencyBuckets.enumerated() {
                lines.append("diffuse_job_seconds_bucket{le=\"\(bound)\"} \(latencyCounts[index])")
            }
            lines.append("diffuse_job_seconds_bucket{le=\"+Inf\"} \(latencyCount)")
            lines.append("diffuse_job_seconds_sum \(latencySum)")
            lines.append("diffuse_job_seconds_count \(latencyCount)")
            lines.append("# HELP diffuse_http_responses_total Responses by status code.")
            lines.append("# TYPE diffuse_http_responses_total counter")
            for status in requests.keys.sorted() { lines.append("diffuse_http_responses_total{code=\"\(status)\"} \(requests[status]!)") }
            return lines.joined(separator: "\n") + "\n"
        }
    }

    private static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }
}
