import TestSupport
import DiffuseServer
import Diffusion
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// The AUTOMATIC1111 routes, on the tiny Stable Diffusion fixture and on a pixel model.
final class Automatic1111RoutesTests: XCTestCase {
    func testTxt2ImgAnswersImagesParametersAndInfo() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self), try ServerFixtures.stableDiffusionModel()])
        try await withRouter(server) { client in
            let response = try await client.send(.post, "/sdapi/v1/txt2img", json: [
                "prompt": "a red cube", "negative_prompt": "blurry", "steps": 2, "cfg_scale": 5, "sampler_name": "Euler a",
                "seed": 42, "width": 64, "height": 32, "batch_size": 2, "n_iter": 1, "send_images": true, "save_images": false,
            ])
            XCTAssertEqual(response.status, .ok, response.text)
            let body = response.jsonObject
            let images = body["images"] as? [String] ?? []
            XCTAssertEqual(images.count, 2)
            let image = try PNG.decode(pngBytes(images[0]))
            XCTAssertEqual([image.width, image.height], [64, 32])
            XCTAssertEqual((body["parameters"] as? [String: Any])?["prompt"] as? String, "a red cube")
            let info = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data((body["info"] as? String ?? "").utf8)) as? [String: Any])
            XCTAssertEqual(info["seed"] as? Int, 42)
            XCTAssertEqual(info["all_seeds"] as? [Int], [42, 43], "the web UI's seeds: seed + i for image i")
            XCTAssertTrue((info["infotexts"] as? [String])?.first?.contains("Prompt: a red cube") ?? false)

            // The same seed gives the same images; -1 picks one.
            let again = try await client.send(.post, "/sdapi/v1/txt2img", json: [
                "prompt": "a red cube", "negative_prompt": "blurry", "steps": 2, "cfg_scale": 5, "sampler_name": "Euler a",
                "seed": 42, "width": 64, "height": 32, "batch_size": 2,
            ])
            XCTAssertEqual(again.jsonObject["images"] as? [String], images)
            let random = try await client.send(.post, "/sdapi/v1/txt2img", json: ["prompt": "x", "steps": 1, "seed": -1])
            XCTAssertEqual(random.status, .ok)
        }
    }

    /// One way through: txt2img's images are `diffuse generate`'s (StableDiffusionRun.run from the folder), pixel for pixel:
    /// image i of `batch_size` 2 is `diffuse generate --seed 77+i` (the web UI's seed per image; the two images are one
    /// batched run, so within the batch bound of ``assertWithinBatchBound(_:_:_:file:line:)``).
    func testTxt2ImgImagesEqualTheCommandLineRun() async throws {
        let folder = try temporaryFolderPath("server")
        var pictures: [PixelImage] = []
        for index in 0..<2 {
            var request = StableDiffusionRequest(pipeline: ServerFixtures.fixtures + "/sd-pipeline/tiny", prompt: "a green hill")
            request.negativePrompt = "fog"
            request.steps = 3
            request.guidanceScale = 6
            request.scheduler = "dpm"
            request.seed = 77 + UInt64(index)
            request.width = 48
            request.height = 32
            request.count = 1
            request.output = folder + "/hill-\(index).png"
            let outcome = try StableDiffusionRun.run(request)
            pictures += try outcome.paths.map { try ImageFile.read($0) }
        }
        let expected = pictures
        let server = DiffuseServer(models: [try ServerFixtures.stableDiffusionModel()])
        try await withRouter(server) { client in
            let response = try await client.send(.post, "/sdapi/v1/txt2img", json: [
                "prompt": "a green hill", "negative_prompt": "fog", "steps": 3, "cfg_scale": 6, "sampler_name": "DPM++ 2M",
                "seed": 77, "width": 48, "height": 32, "batch_size": 2,
            ])
            XCTAssertEqual(response.status, .ok, response.text)
            let images = try (response.jsonObject["images"] as? [String] ?? []).map { try PNG.decode(pngBytes($0)) }
            assertWithinBatchBound(images, expected, "txt2img batch_size 2 and diffuse generate")
        }
    }

    func testImg2ImgTakesInitImagesAndDenoisingStrength() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.stableDiffusionModel()])
        let initImage = try ServerFixtures.initImageBase64
        let otherSize = Data(try PNG.encode(PixelImage(width: 16, height: 16, channels: 3, samples: [UInt8](repeating: 255, count: 16 * 16 * 3))))
            .base64EncodedString()
        try await withRouter(server) { client in
            let response = try await client.send(.post, "/sdapi/v1/img2img", json: [
                "prompt": "a blue sphere", "init_images": ["data:image/png;base64," + initImage], "denoising_strength": 0.5,
                "steps": 4, "sampler_name": "DDIM", "seed": 3,
            ])
            XCTAssertEqual(response.status, .ok, response.text)
            let images = response.jsonObject["images"] as? [String] ?? []
            XCTAssertEqual(images.count, 1)
            let image = try PNG.decode(pngBytes(images.first))
            XCTAssertEqual([image.width, image.height], [32, 48], "the init image's size")
            XCTAssertNil((response.jsonObject["parameters"] as? [String: Any])?["init_images"], "not echoed back")

            let cases: [(body: [String: Any], expected: String)] = [
                (["prompt": "x"], "init_images is required"),
                (["prompt": "x", "init_images": ["!!!not base64!!!"]], "not base64"),
                (["prompt": "x", "init_images": [Data("hello world".utf8).base64EncodedString()]], "neither a PNG nor a JPEG"),
                (["prompt": "x", "init_images": [Data(pngSignature + [1, 2, 3]).base64EncodedString()]], "init image"),
                (["prompt": "x", "init_images": [initImage], "mask": otherSize], "the mask is 16×16 but the init image is 32×48"),
                (["prompt": "x", "init_images": [initImage], "mask": "!!!"], "not base64"),
                (["prompt": "x", "init_images": [initImage], "denoising_strength": 2], "denoising strength"),
                (["prompt": "x", "init_images": [initImage], "denoising_strength": 0.1, "steps": 2], "leaves no step"),
                (["prompt": "x", "init_images": "not a list"], "field \"init_images\": expected an array"),
            ]
            for (body, expected) in cases {
                let response = try await client.send(.post, "/sdapi/v1/img2img", json: body)
                XCTAssertEqual(response.status, .badRequest, "\(body): \(response.text)")
                XCTAssertTrue(response.message.contains(expected), "\(expected): \(response.message)")
            }
        }
    }

    func testTxt2ImgBadInputIsAnswered400() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.stableDiffusionModel()])
        let cases: [(body: [String: Any], expected: String)] = [
            (["prompt": "x", "sampler_name": "Warp 9"], "unknown sampler"),
            (["prompt": "x", "width": 65], "not a multiple of 8"),
            (["prompt": "x", "width": 4096], "--max-width"),
            (["prompt": "x", "height": -8], "height -8"),
            (["prompt": "x", "steps": 0], "steps 0"),
            (["prompt": "x", "batch_size": 5, "n_iter": 5], "batch_size × n_iter 25"),
            (["prompt": "x", "n_iter": 0], "n_iter 0"),
            (["prompt": "x", "seed": -2], "seed -2"),
            (["prompt": "x", "cfg_scale": "high"], "field \"cfg_scale\": expected a number"),
            (["prompt": "x", "override_settings": ["sd_model_checkpoint": "sdxl.safetensors"]], "unknown model"),
            (["prompt": 5], "field \"prompt\": expected a string"),
        ]
        try await withRouter(server) { client in
            for (body, expected) in cases {
                let response = try await client.send(.post, "/sdapi/v1/txt2img", json: body)
                XCTAssertEqual(response.status, .badRequest, "\(body): \(response.text)")
                XCTAssertTrue(response.message.contains(expected), "\(expected): \(response.message)")
            }
        }
    }

    func testTextRoutesOnAServerWithoutATextModelSaySo() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self)])
        try await withRouter(server) { client in
            for uri in ["/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/v1/images/generations"] {
                let response = try await client.send(.post, uri, json: ["prompt": "a cat"])
                XCTAssertEqual(response.status, .badRequest, uri)
                XCTAssertTrue(response.message.contains("can take a prompt"), response.message)
            }
            let named = try await client.send(.post, "/sdapi/v1/txt2img", json: ["prompt": "a cat", "override_settings": ["sd_model_checkpoint": "tiny-pixel"]])
            XCTAssertEqual(named.status, .badRequest)
            XCTAssertTrue(named.message.contains("cannot take a prompt"), named.message)
        }
    }

    func testSamplersModelsProgressAndInterrupt() async throws {
        var limits = ServerLimits()
        limits.maximumSteps = 1000
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self, steps: 1000, size: 32), try ServerFixtures.stableDiffusionModel()], limits: limits)
        try await withRouter(server) { client in
            let samplers = try await client.send(.get, "/sdapi/v1/samplers").jsonArray
            XCTAssertTrue(samplers.contains { $0["name"] as? String == "Euler a" })
            XCTAssertTrue(samplers.contains { $0["name"] as? String == "DPM++ 2M" })
            let models = try await client.send(.get, "/sdapi/v1/sd-models").jsonArray
            XCTAssertEqual(models.map { $0["model_name"] as? String }, ["tiny-sd"], "text-to-image models only")
            XCTAssertEqual(models.first?["title"] as? String, "tiny-sd")

            let options = try await client.send(.get, "/sdapi/v1/options").jsonObject
            XCTAssertEqual(options["sd_model_checkpoint"] as? String, "tiny-sd")
            let set = try await client.send(.post, "/sdapi/v1/options", json: ["sd_model_checkpoint": "tiny-sd"])
            XCTAssertEqual(set.status, .ok)
            for (name, expected) in [("tiny-pixel", "cannot take a prompt"), ("sdxl", "unknown model")] {
                let refused = try await client.send(.post, "/sdapi/v1/options", json: ["sd_model_checkpoint": name])
                XCTAssertEqual(refused.status, .badRequest)
                XCTAssertTrue(refused.message.contains(expected), refused.message)
            }

            let idle = try await client.send(.get, "/sdapi/v1/progress").jsonObject
            XCTAssertEqual(idle["progress"] as? Double, 0)
            XCTAssertEqual((idle["state"] as? [String: Any])?["job_count"] as? Int, 0)

            let created = try await client.send(.post, "/api/v1/jobs", json: ["model": "tiny-pixel", "steps": 1000, "count": 8, "scheduler": "ddpm"])
            let id = try XCTUnwrap((created.jsonObject["job"] as? [String: Any])?["id"] as? String)
            var progress: [String: Any] = [:]
            for _ in 0..<500 {
                progress = try await client.send(.get, "/sdapi/v1/progress").jsonObject
                if let value = progress["progress"] as? Double, value > 0, progress["current_image"] is String { break }
                try await Task.sleep(nanoseconds: 10_000_000)
            }
            XCTAssertGreaterThan(progress["progress"] as? Double ?? 0, 0)
            XCTAssertEqual(Array(pngBytes(progress["current_image"] as? String).prefix(8)), pngSignature)
            let state = progress["state"] as? [String: Any] ?? [:]
            XCTAssertEqual(state["sampling_steps"] as? Int, 1000)
            XCTAssertEqual(state["job_count"] as? Int, 1)
            XCTAssertNotNil(progress["eta_relative"] as? Double)
            let skipped = try await client.send(.get, "/sdapi/v1/progress?skip_current_image=true").jsonObject
            XCTAssertNil(skipped["current_image"] as? String)

            let interrupt = try await client.send(.post, "/sdapi/v1/interrupt")
            XCTAssertEqual(interrupt.status, .ok)
            let job = try await client.waitForJob(id)
            XCTAssertEqual(job["state"] as? String, "cancelled")
            XCTAssertEqual(job["error"] as? String, "interrupted")
        }
    }
}
