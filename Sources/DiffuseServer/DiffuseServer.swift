import Foundation
import Hummingbird
import ServiceLifecycle
import UnixSignals

/// `diffuse serve`: loaded models, one worker each, and the HTTP routes of Diffuse's API, the
/// AUTOMATIC1111 web UI's API, OpenAI's image generation and the page at `/`.
public final class DiffuseServer: Sendable {
    public let models: [ServedModel]
    public let limits: ServerLimits
    /// When set, every route but `/healthz` needs `Authorization: Bearer KEY` (or `?api_key=KEY` for the page).
    public let apiKey: String?
    /// The LoRAs, CLIP models and classifiers requests may name.
    public let resources: ServerResources
    public let metrics: ServerMetrics
    let workers: [String: ModelWorker]
    let jobs: JobTable
    /// The model of A1111 requests that name none (set by `POST /sdapi/v1/options`).
    let textModelChoice: ModelChoice

    public init(models: [ServedModel], limits: ServerLimits = ServerLimits(), apiKey: String? = nil,
                resources: ServerResources = ServerResources()) {
        self.models = models
        self.resources = resources
        self.limits = limits
        self.apiKey = apiKey.flatMap { $0.isEmpty ? nil : $0 }
        let metrics = ServerMetrics()
        self.metrics = metrics
        workers = Dictionary(models.map { ($0.name, ModelWorker(model: $0, capacity: limits.queueCapacity,
                                                                   maximumBatch: limits.maximumBatch, metrics: metrics)) },
                             uniquingKeysWith: { first, _ in first })
        jobs = JobTable(kept: limits.keptJobs)
        textModelChoice = ModelChoice(models.first { $0.kind.takesPrompt }?.name)
    }

    /// The model a request names, or the first one that suits (`prompt`: a text-to-image model first).
    func model(named name: String?, wantsPrompt: Bool) throws -> ServedModel {
        if let name, !name.isEmpty {
            let stem = (name as NSString).lastPathComponent.components(separatedBy: " [").first ?? name
            if let model = models.first(where: { $0.name == name || $0.name == stem }) { return model }
            throw APIError.badRequest("unknown model \"\(name.prefix(80))\"; this server has \(models.map(\.name).joined(separator: ", "))")
        }
        if wantsPrompt, let model = models.first(where: { $0.kind.takesPrompt }) { return model }
        guard let first = models.first else { throw APIError(.serviceUnavailable, "no model is loaded") }
        if wantsPrompt {
            throw APIError.badRequest("no model on this server can take a prompt: \(models.map { "\($0.name) is \($0.kind.rawValue)" }.joined(separator: ", "))")
        }
        return first
    }

    /// Queues a job; 429 with `Retry-After` when the model's queue is full.
    func submit(_ order: GenerationOrder, model: ServedModel) throws -> (job: Job, position: Int) {
        guard let worker = workers[model.name] else { throw APIError(.serviceUnavailable, "the model \(model.name) has no worker") }
        let metrics = self.metrics
        let job = Job(model: model, order: order, onFinish: { state, seconds in metrics.jobFinished(state, seconds: seconds) })
        do {
            let position = try worker.submit(job)
            jobs.add(job)
            return (job, position)
        } catch let full as ModelWorker.QueueFull {
            metrics.jobRejected()
            let retry = retryAfter(worker: worker)
            throw APIError(.tooManyRequests, full.capacity == 0 ? "the server is shutting down"
                           : "the queue of \(model.name) is full (\(full.capacity) waiting, the server's --queue); retry in \(retry) s",
                           headers: [.retryAfter: String(retry)])
        }
    }

    /// Seconds until a queue slot is likely free: the running job's remaining steps at its speed, at least 1.
    private func retryAfter(worker: ModelWorker) -> Int {
        guard let running = worker.runningJob, let progress = running.progress, progress.stepsPerSecond > 0 else { return 1 }
        let remaining = Double(progress.steps - progress.step) / progress.stepsPerSecond
        return Swift.min(Swift.max(1, Int(remaining.rounded(.up))), 300)
    }

    func job(_ id: String?) throws -> Job {
        guard let id, let job = jobs.job(id) else { throw APIError.notFound("no job \"\((id ?? "").prefix(80))\"") }
        return job
    }

    /// Queue lengths for `/metrics`.
    var queues: [(model: String, waiting: Int, running: Int)] {
        models.map { model in
            let worker = workers[model.name]
            return (model.name, worker?.waitingCount ?? 0, worker?.runningJob == nil ? 0 : 1)
        }
    }

    /// Cancels every job and stops the workers (SIGTERM).
    public func shutdown() {
        workers.values.forEach { $0.stop() }
    }

    /// The router with every route and the middleware (errors as JSON, auth, metrics).
    public func makeRouter() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: ServerMiddleware(server: self))
        addPageRoutes(to: router)
        addJobRoutes(to: router)
        addAutomatic1111Routes(to: router)
        addOpenAIRoutes(to: router)
        return router
    }

    /// The application on `host:port`; SIGTERM and SIGINT cancel the jobs and end it cleanly.
    public func makeApplication(host: String, port: Int) -> some ApplicationProtocol {
        Application(router: makeRouter(), configuration: .init(address: .hostname(host, port: port), serverName: "Diffuse"),
                    services: [WorkerShutdownService(server: self)])
    }
}

/// Stops the workers at SIGTERM or SIGINT, or when the service group shuts down, so running jobs end
/// within a step. It watches the signals itself: the group shuts its services down one at a time, the
/// HTTP server first, and the server waits for open event streams, which end only when their jobs do.
struct WorkerShutdownService: Service {
    let server: DiffuseServer

    func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) { break }
            }
            group.addTask { try? await gracefulShutdown() }
            await group.next()
            group.cancelAll()
        }
        server.shutdown()
        // A service may end only once the group shuts down (it does on the same signals).
        try? await gracefulShutdown()
    }
}
