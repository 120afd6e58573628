import Foundation
import Hummingbird

/// The body of A1111's `txt2img` and `img2img` (the fields Diffuse uses; others are accepted and ignored).
struct Automatic1111Body: Decodable {
    struct OverrideSettings: Decodable {
        var sdModelCheckpoint: String?
    }

    var prompt: String?
    var negativePrompt: String?
    var steps: Int?
    var cfgScale: Double?
    var samplerName: String?
    var samplerIndex: String?
    var seed: Int64?
    var width: Int?
    var height: Int?
    var batchSize: Int?
    var nIter: Int?
    var eta: Double?
    var denoisingStrength: Double?
    var initImages: [String]?
    var mask: String?
    var overrideSettings: OverrideSettings?
}

/// A1111's `POST /sdapi/v1/options` (only the model is an option here).
struct Automatic1111Options: Decodable {
    var sdModelCheckpoint: String?
}

/// The text-to-image model A1111 requests use when they name none (`/sdapi/v1/options`).
final class ModelChoice: @unchecked Sendable {
    private let lock = NSLock()
    private var name: String?

    init(_ name: String?) { self.name = name }

    var current: String? {
        get { lock.withLock { name } }
        set { lock.withLock { name = newValue } }
    }
}

/// A1111's `GET /sdapi/v1/progress`.
struct Automatic1111Progress: Encodable {
    struct State: Encodable {
        let skipped: Bool
        let interrupted: Bool
        let job: String
        let jobCount: Int
        let jobTimestamp: String
        let jobNo: Int
        let samplingStep: Int
        let samplingSteps: Int
    }

    let progress: Double
    let etaRelative: Double
    let state: State
    let currentImage: String?
    let textinfo: String?
}

extension DiffuseServer {
    func addAutomatic1111Routes(to router: Router<BasicRequestContext>) {
        router.post("/sdapi/v1/txt2img") { request, _ in try await self.automatic1111(request, imageToImage: false) }
        router.post("/sdapi/v1/img2img") { request, _ in try await self.automatic1111(request, imageToImage: true) }
        router.get("/sdapi/v1/samplers") { _, _ in
            JSONResponse.make(object: SamplerNames.table.map { ["name": $0.name, "aliases": $0.aliases, "options": [String: String]()] as [String: Any] })
        }
        router.get("/sdapi/v1/sd-models") { _, _ in
            JSONResponse.make(object: self.models.filter { $0.kind.takesPrompt }.map { model -> [String: Any] in
                ["title": model.name, "model_name": model.name, "hash": NSNull(), "sha256": NSNull(), "filename": model.folder, "config": NSNull()]
            })
        }
        router.get("/sdapi/v1/options") { _, _ in
            JSONResponse.make(object: ["sd_model_checkpoint": self.textModelChoice.current ?? NSNull(), "samples_format": "png"] as [String: Any])
        }
        router.post("/sdapi/v1/options") { request, _ in
            let (body, _) = try await self.decodeBody(Automatic1111Options.self, from: request)
            if let name = body.sdModelCheckpoint {
                let model = try self.model(named: name, wantsPrompt: true)
                guard model.kind.takesPrompt else {
                    throw APIError.badRequest("the model \(model.name) is \(model.kind.rawValue) and cannot take a prompt")
                }
                self.textModelChoice.current = model.name
            }
            return JSONResponse.make(object: [String: String]())
        }
        router.post("/sdapi/v1/interrupt") { _, _ in
            for worker in self.workers.values { worker.runningJobs.forEach { $0.cancel(reason: "interrupted") } }
            return JSONResponse.make(object: [String: String]())
        }
        router.get("/sdapi/v1/progress") { request, _ in
            let skipImage = request.uri.queryParameters.get("skip_current_image") == "true"
            let running = self.workers.values.compactMap(\.runningJob).first
            let waiting = self.workers.values.reduce(0) { $0 + $1.waitingCount }
            let progress = running?.progress
            let fraction = progress.map { Double($0.step) / Double(Swift.max($0.steps, 1)) } ?? 0
            let eta = progress.map { $0.stepsPerSecond > 0 ? Double($0.steps - $0.step) / $0.stepsPerSecond : 0 } ?? 0
            return JSONResponse.make(Automatic1111Progress(
                progress: fraction, etaRelative: eta,
                state: .init(skipped: false, interrupted: running?.isCancelRequested ?? false, job: running.map { "job(\($0.id))" } ?? "",
                             jobCount: waiting + (running == nil ? 0 : 1),
                             jobTimestamp: running.map { Self.timestamp($0.created) } ?? "0", jobNo: 0,
                             samplingStep: progress?.step ?? 0, samplingSteps: progress?.steps ?? 0),
                currentImage: skipImage ? nil : progress?.predictedOriginal, textinfo: running.map { "Sampling with \($0.model.name)" }))
        }
    }

    private static func timestamp(_ date: Date) -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyyMMddHHmmss"
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: date)
    }

    /// `txt2img` / `img2img`: one job, waited for, answered with `images`, `parameters` and `info`.
    private func automatic1111(_ request: Request, imageToImage: Bool) async throws -> Response {
        let (body, object) = try await decodeBody(Automatic1111Body.self, from: request)
        let model = try self.model(named: body.overrideSettings?.sdModelCheckpoint ?? textModelChoice.current, wantsPrompt: true)
        guard model.kind.takesPrompt else {
            throw APIError.badRequest("the model \(model.name) is \(model.kind.rawValue) and cannot take a prompt")
        }
        var fields = GenerationFields()
        fields.prompt = body.prompt ?? ""
        fields.negativePrompt = body.negativePrompt
        fields.steps = body.steps
        fields.guidanceScale = body.cfgScale
        fields.scheduler = body.samplerName ?? body.samplerIndex
        fields.seed = body.seed
        fields.width = body.width
        fields.height = body.height
        fields.eta = body.eta
        let batch = try OrderBuilder.checked("batch_size", body.batchSize ?? 1, 1...limits.maximumCount, limit: "the server's --max-count")
        let iterations = try OrderBuilder.checked("n_iter", body.nIter ?? 1, 1...limits.maximumCount, limit: "the server's --max-count")
        fields.count = try OrderBuilder.checked("batch_size × n_iter", batch * iterations, 1...limits.maximumCount, limit: "the server's --max-count")
        if imageToImage {
            guard let first = body.initImages?.first else { throw APIError.badRequest("init_images is required: one base64 PNG or JPEG") }
            fields.initImage = first
            fields.mask = body.mask
            fields.strength = body.denoisingStrength ?? 0.75
            fields.width = nil
            fields.height = nil
        }
        // The web UI's seeds: image i of batch_size × n_iter (i = iteration × batch_size + position) is made from seed + i
        // (modules/processing.py: all_seeds = [seed + x for x in range(len(all_prompts))]), each with its own noise.
        var order = try OrderBuilder.make(fields, model: model, limits: limits)
        order.seedPerImage = true
        let job = try await runToEnd(order, model: model)
        let count = order.count
        let info: [String: Any] = [
            "prompt": body.prompt ?? "", "all_prompts": Array(repeating: body.prompt ?? "", count: count),
            "negative_prompt": body.negativePrompt ?? "", "all_negative_prompts": Array(repeating: body.negativePrompt ?? "", count: count),
            "seed": order.seed, "all_seeds": order.allSeeds, "subseed": -1, "all_subseeds": Array(repeating: -1, count: count),
            "subseed_strength": 0, "width": body.width ?? model.width, "height": body.height ?? model.height,
            "sampler_name": body.samplerName ?? body.samplerIndex ?? "", "cfg_scale": body.cfgScale ?? 7.5, "steps": order.steps,
            "batch_size": batch, "n_iter": iterations, "index_of_first_image": 0, "sd_model_name": model.name,
            "infotexts": (0..<count).map { order.parameterLine(image: $0) }, "job_timestamp": Self.timestamp(job.created),
        ]
        let infoText = String(decoding: (try? JSONSerialization.data(withJSONObject: info, options: [.sortedKeys])) ?? Data(), as: UTF8.self)
        var parameters = object
        parameters["init_images"] = nil
        return JSONResponse.make(object: ["images": job.pngImages.map { Data($0).base64EncodedString() }, "parameters": parameters, "info": infoText])
    }

    /// Submits `order` and waits for its end (a client that goes away cancels it); a failed job is a 500, a cancelled one a 409.
    func runToEnd(_ order: GenerationOrder, model: ServedModel) async throws -> Job {
        let (job, _) = try submit(order, model: model)
        await withTaskCancellationHandler {
            await job.waitUntilFinished()
        } onCancel: {
            job.cancel(reason: "the client disconnected")
        }
        switch job.currentState {
        case .succeeded: return job
        case .cancelled: throw APIError(.conflict, "the job was cancelled: \(job.snapshot(includingImages: false).error ?? "interrupted")")
        default: throw APIError(.internalServerError, "the job failed: \(job.snapshot(includingImages: false).error ?? "unknown error")")
        }
    }
}
