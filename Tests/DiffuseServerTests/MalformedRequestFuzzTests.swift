import DiffuseServer
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// Over a thousand generated malformed requests, each answered with a 4xx and a message; the server
/// still serves afterwards.
final class MalformedRequestFuzzTests: XCTestCase {
    /// SplitMix64: the same requests on every run.
    struct Generator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
        mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
    }

    struct Malformed {
        let method: HTTPRequest.Method
        let uri: String
        let body: String?
        let kind: String
    }

    static let routes = ["/api/v1/jobs", "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/v1/images/generations"]
    static let traversal = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd", "..\\..\\windows\\win.ini", "%2e%2e/%2e%2e/etc/shadow",
                            "....//....//etc/passwd", "model/../../../root", "\u{0}", "~root/.ssh/id_rsa"]
    /// Values of the wrong type (null is absent, which every field may be).
    static let wrongTypes: [Any] = ["many", ["a"], ["k": 1], true, "1e9", -0.5]

    /// A valid body for a route (then broken).
    static func base(_ route: String) -> [String: Any] {
        switch route {
        case "/api/v1/jobs": return ["model": "tiny-pixel", "steps": 2, "count": 1, "seed": 1]
        case "/v1/images/generations": return ["prompt": "a cat", "n": 1, "size": "32x32", "response_format": "b64_json"]
        case "/sdapi/v1/img2img": return ["prompt": "a cat", "steps": 2, "init_images": [ServerFixtures.tinyPNG], "denoising_strength": 0.5]
        default: return ["prompt": "a cat", "steps": 2, "width": 32, "height": 32, "seed": 1]
        }
    }

    static func numericFields(_ route: String) -> [String] {
        switch route {
        case "/api/v1/jobs": return ["steps", "count", "seed", "width", "eta", "guide_scale", "preview_every"]
        case "/v1/images/generations": return ["n"]
        case "/sdapi/v1/img2img": return ["steps", "seed", "batch_size", "n_iter", "denoising_strength", "cfg_scale"]
        default: return ["steps", "seed", "width", "height", "batch_size", "n_iter", "cfg_scale"]
        }
    }

    static func json(_ object: Any) -> String {
        String(decoding: (try? JSONSerialization.data(withJSONObject: object, options: [.fragmentsAllowed])) ?? Data(), as: UTF8.self)
    }

    static func makeRequests(count: Int, bodyLimit: Int) -> [Malformed] {
        var random = Generator(state: 2026)
        var requests: [Malformed] = []
        while requests.count < count {
            let route = random.pick(routes)
            var body = base(route)
            switch random.below(9) {
            case 0:  // Broken JSON: a valid body cut short, or with a byte changed into a structural character.
                var text = Array(json(body).utf8)
                if random.below(2) == 0 { text = Array(text.prefix(random.below(text.count - 1))) } else {
                    text[random.below(text.count)] = random.pick(Array("{}[],:\"".utf8))
                }
                let string = String(decoding: text, as: UTF8.self)
                if (try? JSONSerialization.jsonObject(with: Data(string.utf8))) as? [String: Any] == nil {
                    requests.append(Malformed(method: .post, uri: route, body: string, kind: "broken JSON"))
                }
            case 1:  // Wrong types.
                let field = random.pick(numericFields(route) + (route == "/api/v1/jobs" ? ["model", "scheduler", "classes"] : ["prompt"]))
                let value = random.pick(wrongTypes)
                if field == "classes" && value is String { continue }
                if field == "model" || field == "scheduler" || field == "prompt", value is String { continue }
                if ["eta", "guide_scale", "denoising_strength", "cfg_scale"].contains(field), value is Double { continue }
                body[field] = value
                requests.append(Malformed(method: .post, uri: route, body: json(body), kind: "wrong type"))
            case 2:  // Negative and huge numbers.
                let field = random.pick(numericFields(route))
                body[field] = random.pick([-1_000_000, -2, 0, 1_000_000, Int.max, Int.min] as [Any] + [1e300, -1e300])
                if field == "seed" && (body[field] as? Int).map({ $0 >= 0 }) ?? false { body[field] = -2 }
                if ["eta", "guide_scale", "denoising_strength", "preview_every"].contains(field), body[field] as? Int == 0 { body[field] = -1 }
                if field == "cfg_scale", body[field] as? Int == 0 { body[field] = 1e300 }
                requests.append(Malformed(method: .post, uri: route, body: json(body), kind: "bad number"))
            case 3:  // Oversized bodies.
                body["padding"] = String(repeating: "A", count: bodyLimit + random.below(bodyLimit))
                requests.append(Malformed(method: .post, uri: route, body: json(body), kind: "oversized"))
            case 4:  // Garbage base64.
                let garbage = random.pick(["!!!!", "====", "AAAA", String(repeating: "%", count: 64), "data:image/png;base64,???",
                                           Data((0..<48).map { _ in UInt8(random.below(256)) }).base64EncodedString()])
                if route == "/sdapi/v1/img2img" { body["init_images"] = [garbage] } else if route == "/api/v1/jobs" {
                    body["init_image"] = garbage
                } else { continue }
                requests.append(Malformed(method: .post, uri: route, body: json(body), kind: "garbage base64"))
            case 5:  // Unknown samplers.
                let name = random.pick(["Warp", "euler b", "DPM++ 9M", "", "ddim;rm -rf /", String(repeating: "x", count: 300)])
                if name.isEmpty { continue }
                if route == "/api/v1/jobs" { body["scheduler"] = name } else if route.hasPrefix("/sdapi") { body["sampler_name"] = name } else { continue }
                requests.append(Malformed(method: .post, uri: route, body: json(body), kind: "unknown sampler"))
            case 6:  // Unknown models and path traversal in model names.
                let name = random.pick(traversal + ["sdxl", "dall-e-3", "tiny-pixel-2"])
                if route == "/api/v1/jobs", random.below(2) == 0 {
                    // LoRAs, CLIP models and classifiers are named, never given as paths.
                    let text = ["model": "tiny-sd", "prompt": "a cat", "steps": 2] as [String: Any]
                    let resource = random.pick([("loras", [name] as Any, text), ("loras", [["name": name, "scale": 1]] as Any, text),
                                                ("clip_model", name as Any, text), ("classifier", name as Any, body.merging(["classes": "0"]) { $1 })])
                    body = resource.2
                    body[resource.0] = resource.1
                    requests.append(Malformed(method: .post, uri: route, body: json(body), kind: "unknown resource"))
                    continue
                }
                if route == "/api/v1/jobs" || route == "/v1/images/generations" { body["model"] = name } else {
                    body["override_settings"] = ["sd_model_checkpoint": name]
                }
                requests.append(Malformed(method: .post, uri: route, body: json(body), kind: "unknown model"))
            case 7:  // Path traversal in URIs.
                let piece = random.pick(traversal).addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? "x"
                let uri = random.pick(["/api/v1/jobs/\(piece)", "/api/v1/jobs/\(piece)/events", "/api/v1/jobs/\(piece)/images/0",
                                       "/api/v1/jobs/\(UUID().uuidString)/images/\(piece)", "/\(piece)", "/static/\(piece)"])
                requests.append(Malformed(method: random.pick([.get, .delete]), uri: uri, body: nil, kind: "path traversal"))
            default:  // Bodies that are not objects, and empty ones.
                let depth = 1000 + random.below(4000)
                let text = random.pick(["", "null", "[]", "42", "\"prompt\"", "[{\"prompt\": \"x\"}]", "true", "\u{FEFF}",
                                        String(repeating: "[", count: depth) + String(repeating: "]", count: depth),
                                        String(repeating: "{\"a\":", count: depth / 2) + "1" + String(repeating: "}", count: depth / 2)])
                requests.append(Malformed(method: .post, uri: route, body: text, kind: "not an object"))
            }
        }
        return requests
    }

    func testOverAThousandMalformedRequestsAreAnswered4xxAndTheServerLives() async throws {
        var limits = ServerLimits()
        limits.maximumBodyBytes = 16 << 10
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self), try ServerFixtures.stableDiffusionModel()], limits: limits)
        let requests = Self.makeRequests(count: 1200, bodyLimit: limits.maximumBodyBytes)
        try await withRouter(server) { client in
            var kinds: [String: Int] = [:]
            for request in requests {
                let response = try await client.execute(uri: request.uri, method: request.method,
                                                        headers: request.body == nil ? [:] : [.contentType: "application/json"],
                                                        body: request.body.map { ByteBuffer(string: $0) })
                XCTAssertTrue((400..<500).contains(response.status.code),
                              "\(request.kind) \(request.method) \(request.uri) \(request.body?.prefix(200) ?? ""): \(response.status) \(response.text.prefix(300))")
                XCTAssertFalse(response.message.isEmpty, "\(request.kind) \(request.uri): a message")
                kinds[request.kind, default: 0] += 1
            }
            print("malformed requests: \(requests.count), each answered 4xx with a message; by kind: "
                  + kinds.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
            XCTAssertGreaterThanOrEqual(requests.count, 1000)
            XCTAssertEqual(Set(kinds.keys), ["broken JSON", "wrong type", "bad number", "oversized", "garbage base64", "unknown sampler",
                                             "unknown model", "unknown resource", "path traversal", "not an object"], "\(kinds)")
            // Alive and serving.
            let health = try await client.send(.get, "/healthz")
            XCTAssertEqual(health.status, .ok)
            let created = try await client.send(.post, "/api/v1/jobs", json: ["model": "tiny-pixel", "steps": 2])
            XCTAssertEqual(created.status, .accepted, created.text)
            let id = try XCTUnwrap((created.jsonObject["job"] as? [String: Any])?["id"] as? String)
            let job = try await client.waitForJob(id)
            XCTAssertEqual(job["state"] as? String, "succeeded")
        }
        XCTAssertEqual(server.metrics.finishedJobs(.succeeded), 1, "no malformed request ran a job")
    }
}
