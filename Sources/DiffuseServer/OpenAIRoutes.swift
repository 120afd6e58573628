import Foundation
import Hummingbird

/// OpenAI's `POST /v1/images/generations` body.
struct OpenAIImageBody: Decodable {
    var prompt: String?
    var model: String?
    var n: Int?
    var size: String?
    var responseFormat: String?
    var quality: String?
    var style: String?
    var user: String?
}

extension DiffuseServer {
    func addOpenAIRoutes(to router: Router<BasicRequestContext>) {
        router.post("/v1/images/generations") { request, _ in
            let (body, _) = try await self.decodeBody(OpenAIImageBody.self, from: request)
            guard let prompt = body.prompt, !prompt.isEmpty else { throw APIError.badRequest("prompt is required") }
            let model = try self.model(named: body.model, wantsPrompt: true)
            guard model.kind.takesPrompt else {
                throw APIError.badRequest("the model \(model.name) is \(model.kind.rawValue) and cannot take a prompt")
            }
            var fields = GenerationFields()
            fields.prompt = prompt
            fields.count = body.n ?? 1
            if let size = body.size, size != "auto" {
                let parts = size.lowercased().split(separator: "x")
                guard parts.count == 2, let width = Int(parts[0]), let height = Int(parts[1]) else {
                    throw APIError.badRequest("size \"\(size.prefix(40))\" is not WIDTHxHEIGHT (e.g. 512x512) or auto")
                }
                fields.width = width
                fields.height = height
            }
            let format = body.responseFormat ?? "b64_json"
            guard ["b64_json", "url"].contains(format) else {
                throw APIError.badRequest("response_format \"\(format.prefix(40))\" is not b64_json or url")
            }
            let order = try OrderBuilder.make(fields, model: model, limits: self.limits)
            let job = try await self.runToEnd(order, model: model)
            let host = request.head.authority ?? "localhost"
            let data: [[String: Any]] = job.pngImages.enumerated().map { index, png in
                format == "url" ? ["url": "http://\(host)/api/v1/jobs/\(job.id)/images/\(index).png", "revised_prompt": prompt]
                    : ["b64_json": Data(png).base64EncodedString(), "revised_prompt": prompt]
            }
            return JSONResponse.make(object: ["created": Int(job.created.timeIntervalSince1970), "data": data])
        }
    }
}
