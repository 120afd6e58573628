import Foundation
import Hummingbird

/// The body of `POST /api/v1/jobs`: the options of `diffuse sample` and `diffuse generate`.
struct JobBody: Decodable {
    /// Class labels: `"0-9"`, `"Sneaker,Bag"`, `3` or `[0, 1, 2]`.
    struct Classes: Decodable {
        let text: String
        init(from decoder: Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let number = try? container.decode(Int.self) {
                text = String(number)
            } else if let numbers = try? container.decode([Int].self) {
                text = numbers.map(String.init).joined(separator: ",")
            } else {
                text = try container.decode(String.self)
            }
        }
    }

    /// A LoRA: `"name"`, `"name:0.8"` or `{"name": "name", "scale": 0.8}`.
    struct LoRA: Decodable {
        let name: String
        let scale: Double

        private enum Keys: String, CodingKey { case name, scale }

        init(from decoder: Decoder) throws {
            if let text = try? decoder.singleValueContainer().decode(String.self) {
                if let colon = text.lastIndex(of: ":"), let scale = Double(text[text.index(after: colon)...]) {
                    (name, self.scale) = (String(text[..<colon]), scale)
                } else {
                    (name, scale) = (text, 1)
                }
            } else {
                let container = try decoder.container(keyedBy: Keys.self)
                name = try container.decode(String.self, forKey: .name)
                scale = try container.decodeIfPresent(Double.self, forKey: .scale) ?? 1
            }
        }
    }

    var model: String?
    var prompt: String?
    var negativePrompt: String?
    var steps: Int?
    var scheduler: String?
    var eta: Double?
    var seed: Int64?
    var count: Int?
    var classes: Classes?
    var guidanceScale: Double?
    var guidanceRescale: Double?
    var guides: [String]?
    /// `#RRGGBB`: the same as `guides: ["color=#RRGGBB"]`.
    var color: String?
    var guideScale: Double?
    var guideMode: String?
    var width: Int?
    var height: Int?
    var clipSkip: Int?
    var initImage: String?
    /// Base64 inpainting mask for `initImage` (white repaints).
    var mask: String?
    var strength: Double?
    var previewEvery: Int?
    var loras: [LoRA]?
    var clipModel: String?
    var clipGuidanceScale: Double?
    var clipPrompt: String?
    var clipCutouts: Int?
    var classifier: String?
    var classifierScale: Double?
    /// Cancel the job when the last events listener disconnects (default true).
    var cancelOnDisconnect: Bool?

    var fields: GenerationFields {
        var fields = GenerationFields()
        fields.prompt = prompt
        fields.negativePrompt = negativePrompt
        fields.steps = steps
        fields.scheduler = scheduler
        fields.eta = eta
        fields.seed = seed
        fields.count = count
        fields.classes = classes?.text
        fields.guidanceScale = guidanceScale
        fields.guidanceRescale = guidanceRescale
        fields.guides = (guides ?? []) + (color.map { ["color=\($0)"] } ?? [])
        fields.guideScale = guideScale
        fields.guideMode = guideMode
        fields.width = width
        fields.height = height
        fields.clipSkip = clipSkip
        fields.initImage = initImage
        fields.mask = mask
        fields.strength = strength
        fields.previewEvery = previewEvery
        fields.loras = (loras ?? []).map { ($0.name, $0.scale) }
        fields.clipModel = clipModel
        fields.clipGuidanceScale = clipGuidanceScale
        fields.clipPrompt = clipPrompt
        fields.clipCutouts = clipCutouts
        fields.classifier = classifier
        fields.classifierScale = classifierScale
        return fields
    }
}

/// What `GET /api/v1/models` lists.
struct ModelDescription: Encodable {
    let name: String
    let kind: ServedModelKind
    let takesPrompt: Bool
    let width: Int
    let height: Int
    let channels: Int
    let classes: [String]
    let scheduler: String
    let queued: Int
    let running: Bool
}

/// What `GET /api/v1/models` answers: the models, and the LoRAs, CLIP models and classifiers requests may name.
struct ModelList: Encodable {
    let models: [ModelDescription]
    let loras: [String]
    let clipModels: [String]
    let classifiers: [String]
}

extension DiffuseServer {
    func addJobRoutes(to router: Router<BasicRequestContext>) {
        router.get("/api/v1/models") { _, _ in
            JSONResponse.make(ModelList(models: self.models.map { model in
                ModelDescription(name: model.name, kind: model.kind, takesPrompt: model.kind.takesPrompt, width: model.width, height: model.height,
                                 channels: model.channels, classes: model.classNames, scheduler: model.schedulerName,
                                 queued: self.workers[model.name]?.waitingCount ?? 0, running: self.workers[model.name]?.runningJob != nil)
            }, loras: self.resources.loras.keys.sorted(), clipModels: self.resources.clipModels.keys.sorted(),
               classifiers: self.resources.classifiers.keys.sorted()))
        }
        router.post("/api/v1/jobs") { request, _ in
            let (body, _) = try await self.decodeBody(JobBody.self, from: request)
            let model = try self.model(named: body.model, wantsPrompt: body.prompt != nil)
            let order = try OrderBuilder.make(body.fields, model: model, limits: self.limits, resources: self.resources)
            let (job, position) = try self.submit(order, model: model)
            job.cancelsOnDisconnect = body.cancelOnDisconnect ?? true
            var snapshot = job.snapshot(includingImages: false)
            snapshot.images = nil
            return JSONResponse.make(JobCreated(job: snapshot, position: position, events: "/api/v1/jobs/\(job.id)/events",
                                                result: "/api/v1/jobs/\(job.id)"), status: .accepted)
        }
        router.get("/api/v1/jobs") { _, _ in
            JSONResponse.make(["jobs": self.jobs.all.map { $0.snapshot(includingImages: false) }])
        }
        router.get("/api/v1/jobs/:id") { _, context in
            JSONResponse.make(try self.job(context.parameters.get("id")).snapshot(includingImages: true))
        }
        router.delete("/api/v1/jobs/:id") { _, context in
            let job = try self.job(context.parameters.get("id"))
            job.cancel(reason: "cancelled by DELETE")
            return JSONResponse.make(job.snapshot(includingImages: false))
        }
        router.get("/api/v1/jobs/:id/images/:index") { _, context in
            let job = try self.job(context.parameters.get("id"))
            let text = context.parameters.get("index") ?? ""
            let stem = text.hasSuffix(".png") ? String(text.dropLast(4)) : text
            guard let index = Int(stem), index >= 0 else { throw APIError.badRequest("image index \"\(text.prefix(40))\" is not a number") }
            let images = job.pngImages
            guard job.currentState == .succeeded else { throw APIError(.conflict, "job \(job.id) is \(job.currentState.rawValue); it has no images") }
            guard index < images.count else { throw APIError.notFound("job \(job.id) has \(images.count) images; no image \(index)") }
            return Response(status: .ok, headers: [.contentType: "image/png",
                                                   .contentDisposition: "attachment; filename=\"diffuse-\(job.order.seed)-\(index).png\""],
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: images[index])))
        }
        router.get("/api/v1/jobs/:id/events") { _, context in
            let job = try self.job(context.parameters.get("id"))
            let events = job.events()
            let headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]
            return Response(status: .ok, headers: headers, body: ResponseBody { writer in
                var sawFinal = false
                do {
                    for await event in events {
                        try await writer.write(ByteBuffer(string: event.serverSentEvent))
                        if event.isFinal { sawFinal = true }
                    }
                } catch {
                    if job.cancelsOnDisconnect { job.cancel(reason: "the client disconnected") }
                    throw error
                }
                // The stream ended without the final event: the request was cancelled (the client went away).
                if !sawFinal && job.cancelsOnDisconnect { job.cancel(reason: "the client disconnected") }
                try await writer.finish(nil)
            })
        }
    }
}

/// What `POST /api/v1/jobs` answers (202).
struct JobCreated: Encodable {
    let job: JobSnapshot
    /// Jobs ahead of it.
    let position: Int
    /// Its server-sent events.
    let events: String
    /// Where its state and images are.
    let result: String
}
