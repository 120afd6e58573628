import DiffuseServer
import Diffusion
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// Diffuse's own API on pixel models: jobs, events, images, cancellation, models.
final class JobRoutesTests: XCTestCase {
    func testModelsListsKindsSizesAndClasses() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self),
                                            try ServerFixtures.pixelModel(self, name: "shapes", classNames: ["square", "circle", "line"])])
        try await withRouter(server) { client in
            let response = try await client.send(.get, "/api/v1/models")
            XCTAssertEqual(response.status, .ok)
            let models = response.jsonObject["models"] as? [[String: Any]] ?? []
            XCTAssertEqual(models.map { $0["name"] as? String }, ["tiny-pixel", "shapes"])
            XCTAssertEqual(models.map { $0["kind"] as? String }, ["unconditional", "class-conditional"])
            XCTAssertEqual(models[1]["classes"] as? [String], ["square", "circle", "line"])
            XCTAssertEqual(models[0]["width"] as? Int, 8)
            XCTAssertEqual(models[0]["takes_prompt"] as? Bool, false)
        }
    }

    func testPixelJobStreamsStepsWithPreviewsAndEndsWithImagesCarryingParameters() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self)])
        try await withRouter(server) { client in
            let created = try await client.send(.post, "/api/v1/jobs", json: ["steps": 5, "count": 2, "seed": 7, "scheduler": "ddim"])
            XCTAssertEqual(created.status, .accepted, created.text)
            let job = created.jsonObject["job"] as? [String: Any] ?? [:]
            let id = try XCTUnwrap(job["id"] as? String)
            XCTAssertEqual(created.jsonObject["events"] as? String, "/api/v1/jobs/\(id)/events")

            let events = try await client.send(.get, "/api/v1/jobs/\(id)/events")
            XCTAssertEqual(events.status, .ok)
            XCTAssertEqual(events.headers[.contentType], "text/event-stream")
            let blocks = events.text.components(separatedBy: "\n\n").filter { !$0.isEmpty }
            XCTAssertEqual(blocks.last?.hasPrefix("event: succeeded\ndata: "), true, events.text)
            let steps = blocks.filter { $0.hasPrefix("event: step\n") }.map { block -> [String: Any] in
                let data = block.components(separatedBy: "\ndata: ")[1]
                return (try? JSONSerialization.jsonObject(with: Data(data.utf8))) as? [String: Any] ?? [:]
            }
            // The stream may join after the first steps; the last one is always there.
            XCTAssertGreaterThanOrEqual(steps.count, 1)
            XCTAssertEqual(steps.last?["step"] as? Int, 5)
            XCTAssertEqual(steps.last?["steps"] as? Int, 5)
            XCTAssertNotNil(steps.last?["timestep"] as? Double)
            XCTAssertEqual(Array(pngBytes(steps.last?["sample"] as? String).prefix(8)), pngSignature)
            XCTAssertEqual(Array(pngBytes(steps.last?["predicted_original"] as? String).prefix(8)), pngSignature)
            XCTAssertNil(steps.last?["guidance_loss"], "no guidance, no loss")

            let finished = try await client.send(.get, "/api/v1/jobs/\(id)").jsonObject
            XCTAssertEqual(finished["state"] as? String, "succeeded")
            XCTAssertEqual(finished["seed"] as? Int, 7)
            let images = finished["images"] as? [String] ?? []
            XCTAssertEqual(images.count, 2)
            let decoded = try PNG.decode(pngBytes(images[0]))
            XCTAssertEqual([decoded.width, decoded.height, decoded.channels], [8, 8, 3])

            let file = try await client.send(.get, "/api/v1/jobs/\(id)/images/1.png")
            XCTAssertEqual(file.status, .ok)
            XCTAssertEqual(file.headers[.contentType], "image/png")
            let text = String(decoding: Data(buffer: file.body), as: UTF8.self)
            XCTAssertTrue(text.contains("tEXtparameters\u{0}Steps: 5"), "the PNG carries its parameters")
            XCTAssertTrue(text.contains("Seed: 7"))
            let missing = try await client.send(.get, "/api/v1/jobs/\(id)/images/9.png")
            XCTAssertEqual(missing.status, .notFound)
            let notNumber = try await client.send(.get, "/api/v1/jobs/\(id)/images/..%2F..%2Fetc%2Fpasswd")
            XCTAssertEqual(notNumber.status, .badRequest)
        }
    }

    func testColourGuidedJobReportsItsLossInEveryStepEvent() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self)])
        try await withRouter(server) { client in
            let created = try await client.send(.post, "/api/v1/jobs", json: ["steps": 12, "color": "#E0301E", "guide_scale": 30, "seed": 2])
            let id = try XCTUnwrap((created.jsonObject["job"] as? [String: Any])?["id"] as? String)
            let events = try await client.send(.get, "/api/v1/jobs/\(id)/events").text
            let steps = events.components(separatedBy: "\n\n").filter { $0.hasPrefix("event: step\n") }.map { block in
                (try? JSONSerialization.jsonObject(with: Data(block.components(separatedBy: "\ndata: ")[1].utf8))) as? [String: Any] ?? [:]
            }
            XCTAssertFalse(steps.isEmpty)
            for step in steps { XCTAssertNotNil(step["guidance_loss"] as? Double, "\(step.keys.sorted())") }
            XCTAssertTrue(events.contains("event: log\ndata: {\"message\":\"step 11/12  guidance loss "), events.prefix(2000).description)
        }
    }

    /// One way through: the server's images are `diffuse sample`'s, pixel for pixel, for the same request.
    func testServerImagesEqualTheCommandLineRun() async throws {
        let folder = try ServerFixtures.pixelFolder(self, name: "shapes", classNames: ["square", "circle"])
        let server = DiffuseServer(models: [try ServedModel.load(folder: folder)])
        var request = SampleRequest(pipeline: folder)
        request.steps = 4
        request.count = 2
        request.seed = 11
        request.classes = "1"
        request.guidanceScale = 2
        request.guides = ["color=#1AE680"]
        request.guideScale = 20
        request.output = nil
        let expected = try SampleRun.run(request).images
        try await withRouter(server) { client in
            let created = try await client.send(.post, "/api/v1/jobs", json: [
                "steps": 4, "count": 2, "seed": 11, "classes": "circle", "guidance_scale": 2, "color": "#1AE680", "guide_scale": 20,
            ])
            XCTAssertEqual(created.status, .accepted, created.text)
            let id = try XCTUnwrap((created.jsonObject["job"] as? [String: Any])?["id"] as? String)
            let job = try await client.waitForJob(id)
            XCTAssertEqual(job["state"] as? String, "succeeded", "\(job)")
            let images = try (job["images"] as? [String] ?? []).map { try PNG.decode(pngBytes($0)) }
            XCTAssertEqual(images, expected)
            XCTAssertTrue((job["info"] as? String ?? "").contains("Classes: circle"))
            let events = try await client.send(.get, "/api/v1/jobs/\(id)/events")
            XCTAssertTrue(events.text.hasPrefix("event: succeeded"), "a finished job's stream is its final event")
        }
    }

    func testDeleteCancelsARunningJobWithinAStepAndAQueuedOneAtOnce() async throws {
        var limits = ServerLimits()
        limits.maximumSteps = 1000
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self, steps: 1000, size: 32)], limits: limits)
        try await withRouter(server) { client in
            let long = try await client.send(.post, "/api/v1/jobs", json: ["steps": 1000, "count": 8, "scheduler": "ddpm", "preview_every": 0])
            let longID = try XCTUnwrap((long.jsonObject["job"] as? [String: Any])?["id"] as? String)
            let queued = try await client.send(.post, "/api/v1/jobs", json: ["steps": 3])
            let queuedID = try XCTUnwrap((queued.jsonObject["job"] as? [String: Any])?["id"] as? String)
            XCTAssertEqual(queued.jsonObject["position"] as? Int, 1)
            // Wait for the first job to run some steps.
            var step = 0
            for _ in 0..<500 where step < 3 {
                step = try await client.send(.get, "/api/v1/jobs/\(longID)").jsonObject["step"] as? Int ?? 0
                try await Task.sleep(nanoseconds: 10_000_000)
            }
            XCTAssertGreaterThanOrEqual(step, 3)
            let cancelledQueued = try await client.send(.delete, "/api/v1/jobs/\(queuedID)")
            XCTAssertEqual(cancelledQueued.status, .ok)
            XCTAssertEqual(cancelledQueued.jsonObject["state"] as? String, "cancelled")
            let deleted = try await client.send(.delete, "/api/v1/jobs/\(longID)")
            XCTAssertEqual(deleted.status, .ok)
            let stepAtDelete = deleted.jsonObject["step"] as? Int ?? 0
            let job = try await client.waitForJob(longID)
            XCTAssertEqual(job["state"] as? String, "cancelled")
            XCTAssertLessThanOrEqual((job["step"] as? Int ?? 0) - stepAtDelete, 1, "stopped within a step")
            XCTAssertLessThan(job["step"] as? Int ?? 0, 1000)
            XCTAssertEqual(job["error"] as? String, "cancelled by DELETE")
            let again = try await client.send(.delete, "/api/v1/jobs/\(longID)")
            XCTAssertEqual(again.jsonObject["state"] as? String, "cancelled")
            let events = try await client.send(.get, "/api/v1/jobs/\(longID)/events")
            XCTAssertTrue(events.text.hasPrefix("event: cancelled\n"), events.text)
        }
        XCTAssertEqual(server.metrics.finishedJobs(.cancelled), 2)
    }

    func testFullQueueAnswers429WithRetryAfter() async throws {
        var limits = ServerLimits()
        limits.queueCapacity = 1
        limits.maximumSteps = 1000
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self, steps: 1000, size: 32)], limits: limits)
        try await withRouter(server) { client in
            let body: [String: Any] = ["steps": 1000, "count": 8, "scheduler": "ddpm", "preview_every": 0]
            let first = try await client.send(.post, "/api/v1/jobs", json: body)
            var ids = [try XCTUnwrap((first.jsonObject["job"] as? [String: Any])?["id"] as? String)]
            var attempts = 0
            while try await client.send(.get, "/api/v1/jobs/\(ids[0])").jsonObject["state"] as? String == "queued", attempts < 500 {
                attempts += 1
                try await Task.sleep(nanoseconds: 10_000_000)
            }
            var statuses: [HTTPResponse.Status] = []
            var rejected: TestResponse?
            for _ in 0..<3 {
                let response = try await client.send(.post, "/api/v1/jobs", json: body)
                statuses.append(response.status)
                if let id = (response.jsonObject["job"] as? [String: Any])?["id"] as? String { ids.append(id) }
                if response.status == .tooManyRequests { rejected = response }
            }
            XCTAssertEqual(statuses, [.accepted, .tooManyRequests, .tooManyRequests], "one running, one waiting")
            let response = try XCTUnwrap(rejected)
            XCTAssertNotNil(response.headers[.retryAfter].flatMap(Int.init))
            XCTAssertTrue(response.message.contains("queue"), response.message)
            for id in ids { try await client.send(.delete, "/api/v1/jobs/\(id)") }
            let metrics = try await client.send(.get, "/metrics").text
            XCTAssertTrue(metrics.contains("diffuse_jobs_total{state=\"rejected\"} 2"), metrics)
        }
    }

    func testJobBadInputIsAnswered400NamingTheProblem() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self),
                                            try ServerFixtures.pixelModel(self, name: "shapes", classNames: ["square", "circle"])])
        let cases: [(body: [String: Any], expected: String)] = [
            (["prompt": "a cat"], "take a prompt"),
            (["model": "tiny-pixel", "prompt": "a cat"], "is an unconditional pixel model and cannot take a prompt"),
            (["steps": 150, "scheduler": "ddpm"], "more than the 100 timesteps"),
            (["steps": 0], "steps 0 is outside 1…200"),
            (["steps": 100_000], "--max-steps"),
            (["count": 100], "--max-count"),
            (["count": -3], "count -3"),
            (["scheduler": "warp-drive"], "unknown sampler or scheduler"),
            (["model": "../../etc/passwd"], "unknown model"),
            (["model": "nope"], "unknown model"),
            (["seed": -5], "seed -5 is negative"),
            (["steps": "many"], "field \"steps\": expected an integer"),
            (["seed": 1e30], "out of range"),
            (["classes": "2"], "takes no classes"),
            (["model": "shapes", "classes": "7"], "outside the model's classes"),
            (["model": "shapes", "classes": "dog"], "neither a class number nor a class name"),
            (["color": "#12345"], "guide"),
            (["guides": ["sparkle=1"]], "not understood"),
            (["guide_mode": "sideways", "color": "#ff0000"], "guide mode"),
            (["width": 64], "makes 8×8 images"),
            (["width": 100_000], "--max-width"),
            (["guidance_scale": 3], "needs a class-conditional model"),
            (["model": "shapes", "guidance_scale": 1e9], "guidance scale"),
            (["eta": -1], "eta"),
            (["init_image": "AAAA"], "cannot take an init image"),
            (["preview_every": -1], "preview_every"),
        ]
        try await withRouter(server) { client in
            for (body, expected) in cases {
                let response = try await client.send(.post, "/api/v1/jobs", json: body)
                XCTAssertEqual(response.status, .badRequest, "\(body): \(response.text)")
                XCTAssertTrue(response.message.contains(expected), "\(body): \(response.message)")
            }
            for (raw, expected) in [("{", "not valid JSON"), ("[1, 2]", "must be a JSON object"), ("", "empty"), ("\"text\"", "JSON object")] {
                let response = try await client.send(.post, "/api/v1/jobs", raw: raw)
                XCTAssertEqual(response.status, .badRequest, raw)
                XCTAssertTrue(response.message.contains(expected), "\(raw): \(response.message)")
            }
            let unknown = try await client.send(.get, "/api/v1/jobs/not-a-job")
            XCTAssertEqual(unknown.status, .notFound)
            XCTAssertTrue(unknown.message.contains("no job"))
            for method in [HTTPRequest.Method.delete, .get] {
                let response = try await client.send(method, "/api/v1/jobs/00000000-0000-0000-0000-000000000000" + (method == .get ? "/events" : ""))
                XCTAssertEqual(response.status, .notFound)
            }
        }
    }

    func testBodyOverTheLimitIsAnswered413NamingIt() async throws {
        var limits = ServerLimits()
        limits.maximumBodyBytes = 1000
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self)], limits: limits)
        try await withRouter(server) { client in
            let body = ["steps": 3, "padding": String(repeating: "x", count: 5000)] as [String: Any]
            for uri in ["/api/v1/jobs", "/sdapi/v1/txt2img", "/v1/images/generations"] {
                let response = try await client.send(.post, uri, json: body)
                XCTAssertEqual(response.status, .contentTooLarge, uri)
                XCTAssertTrue(response.message.contains("1000 bytes"), response.message)
            }
        }
    }
}
