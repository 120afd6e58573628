import DiffuseServer
import Diffusion
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// Classifier guidance, CLIP guidance and LoRAs through `POST /api/v1/jobs`, by the names the server was started with
/// (`--classifier`, `--clip-model`, `--lora`), through the request types the command line builds.
final class GuidanceRoutesTests: XCTestCase {
    static var loraFile: String { ServerFixtures.fixtures + "/lora/peft/pytorch_lora_weights.safetensors" }
    static var clipFolder: String { ServerFixtures.fixtures + "/sd-clip-guidance/clip" }
    static var classifierFolder: String { ServerFixtures.fixtures + "/guidance/classifier" }

    static func resources() throws -> ServerResources {
        var resources = ServerResources()
        resources.loras = try ServerResources.named([loraFile], kind: "LoRA")
        resources.clipModels = try ServerResources.named([clipFolder], kind: "CLIP model")
        resources.classifiers = try ServerResources.named([classifierFolder], kind: "classifier")
        return resources
    }

    func images(_ job: [String: Any]) throws -> [PixelImage] {
        try (job["images"] as? [String] ?? []).map { try PNG.decode(pngBytes($0)) }
    }

    func runJob(_ client: any TestClientProtocol, _ body: [String: Any]) async throws -> [String: Any] {
        let created = try await client.send(.post, "/api/v1/jobs", json: body)
        XCTAssertEqual(created.status, .accepted, created.text)
        let id = try XCTUnwrap((created.jsonObject["job"] as? [String: Any])?["id"] as? String)
        let job = try await client.waitForJob(id)
        XCTAssertEqual(job["state"] as? String, "succeeded", "\(body): \(job["error"] ?? "")")
        return job
    }

    /// A LoRA changes the image to the library's (the same file attached, unfused, to a pipeline of its own), and the
    /// served pipeline is as before afterwards: the next request without it gets the first image again.
    func testLoRAJobMatchesTheLibraryAndLeavesThePipelineUnchanged() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.stableDiffusionModel()], resources: try Self.resources())
        var request = StableDiffusionRequest(pipeline: "", prompt: "a paper boat")
        request.steps = 2
        request.seed = 5
        request.width = 32
        request.height = 32
        request.loras = [LoRARequest(path: Self.loraFile, scale: 0.8)]
        request.fuseLoRA = false
        let pipeline = try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: ServerFixtures.fixtures + "/sd-pipeline/tiny"))
        try StableDiffusionRun.applyLoRAs(request, to: pipeline)
        let expected = try StableDiffusionRun.generate(request, pipeline: pipeline).images
        try await withRouter(server) { client in
            let body: [String: Any] = ["prompt": "a paper boat", "steps": 2, "seed": 5, "width": 32, "height": 32]
            let plain = try await self.runJob(client, body)
            var withLoRA = body
            withLoRA["loras"] = [["name": "pytorch_lora_weights", "scale": 0.8]]
            let adapted = try await self.runJob(client, withLoRA)
            XCTAssertEqual(try self.images(adapted), expected)
            XCTAssertNotEqual(try self.images(adapted), try self.images(plain), "the LoRA changes the image")
            XCTAssertTrue((adapted["info"] as? String ?? "").contains("Lora: pytorch_lora_weights:0.8"))
            var asText = body
            asText["loras"] = ["pytorch_lora_weights:0.8"]
            let named = try await self.runJob(client, asText)
            XCTAssertEqual(try self.images(named), expected, "\"name:scale\" is the same LoRA")
            let after = try await self.runJob(client, body)
            XCTAssertEqual(try self.images(after), try self.images(plain), "the adapters are gone after the job")
        }
    }

    /// Stable Diffusion CLIP guidance by the CLIP model's name: the library's image for the same options.
    func testCLIPGuidedJobMatchesTheLibrary() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.stableDiffusionModel()], resources: try Self.resources())
        var request = StableDiffusionRequest(pipeline: "", prompt: "a red apple")
        request.steps = 2
        request.seed = 8
        request.width = 32
        request.height = 32
        request.scheduler = "ddim"
        var options = StableDiffusionCLIPGuidanceOptions(model: Self.clipFolder, scale: 300)
        options.cutouts = 2
        request.clipGuidance = options
        let pipeline = try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: ServerFixtures.fixtures + "/sd-pipeline/tiny"))
        let expected = try StableDiffusionRun.generate(request, pipeline: pipeline).images
        try await withRouter(server) { client in
            let body: [String: Any] = ["prompt": "a red apple", "steps": 2, "seed": 8, "width": 32, "height": 32, "scheduler": "ddim"]
            var guided = body
            guided["clip_model"] = "clip"
            guided["clip_guidance_scale"] = 300
            guided["clip_cutouts"] = 2
            let job = try await self.runJob(client, guided)
            XCTAssertEqual(try self.images(job), expected)
            XCTAssertTrue((job["info"] as? String ?? "").contains("CLIP guidance: clip, scale 300"))
            let plain = try await self.runJob(client, body)
            XCTAssertNotEqual(try self.images(plain), expected, "the guidance changes the image")
        }
    }

    /// Classifier guidance of a pixel model by the classifier's name: `diffuse sample --classifier`'s images, and
    /// log p(class | x_t) in every step event. (The classifier fixture was trained on 1,000 linear-β timesteps: the model's.)
    func testClassifierGuidedJobMatchesTheCommandLineAndReportsLogProbability() async throws {
        let folder = try ServerFixtures.pixelFolder(self, steps: 1000)
        let server = DiffuseServer(models: [try ServedModel.load(folder: folder)], resources: try Self.resources())
        var request = SampleRequest(pipeline: folder)
        request.output = nil
        request.steps = 4
        request.seed = 3
        request.count = 2
        request.classes = "one"
        request.classifier = Self.classifierFolder
        request.classifierScale = 5
        let expected = try SampleRun.run(request).images
        try await withRouter(server) { client in
            let created = try await client.send(.post, "/api/v1/jobs", json: [
                "steps": 4, "seed": 3, "count": 2, "classes": "one", "classifier": "classifier", "classifier_scale": 5,
            ])
            XCTAssertEqual(created.status, .accepted, created.text)
            let id = try XCTUnwrap((created.jsonObject["job"] as? [String: Any])?["id"] as? String)
            let events = try await client.send(.get, "/api/v1/jobs/\(id)/events").text
            let steps = events.components(separatedBy: "\n\n").filter { $0.hasPrefix("event: step\n") }.map { block in
                (try? JSONSerialization.jsonObject(with: Data(block.components(separatedBy: "\ndata: ")[1].utf8))) as? [String: Any] ?? [:]
            }
            XCTAssertFalse(steps.isEmpty)
            for step in steps { XCTAssertNotNil(step["log_probability"] as? Double, "\(step.keys.sorted())") }
            let job = try await client.waitForJob(id)
            XCTAssertEqual(job["state"] as? String, "succeeded", "\(job)")
            XCTAssertEqual(try self.images(job), expected)
            XCTAssertTrue((job["info"] as? String ?? "").contains("Classifier: classifier"))
        }
    }

    func testGuidanceAndLoRABadInputIsAnswered400NamingTheProblem() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self), try ServerFixtures.stableDiffusionModel()],
                                   resources: try Self.resources())
        let bare = DiffuseServer(models: [try ServerFixtures.stableDiffusionModel()])
        let text: [String: Any] = ["model": "tiny-sd", "prompt": "x", "steps": 2]
        @Sendable func with(_ base: [String: Any], _ extra: [String: Any]) -> [String: Any] { base.merging(extra) { $1 } }
        let cases: [(body: [String: Any], expected: String)] = [
            (with(text, ["loras": ["nope"]]), "unknown LoRA \"nope\"; this server has pytorch_lora_weights"),
            (with(text, ["loras": ["../../etc/passwd"]]), "unknown LoRA"),
            (with(text, ["loras": [["name": "pytorch_lora_weights", "scale": 1e9]]]), "LoRA scale"),
            (with(text, ["loras": ["pytorch_lora_weights", "pytorch_lora_weights:0.5"]]), "named twice"),
            (with(text, ["loras": 5]), "field \"loras\""),
            (with(text, ["loras": [["scale": 1]]]), "name"),
            (["model": "tiny-pixel", "loras": ["pytorch_lora_weights"]], "LoRAs are for Stable Diffusion models"),
            (with(text, ["clip_model": "nope"]), "unknown CLIP model \"nope\"; this server has clip"),
            (with(text, ["clip_guidance_scale": 100]), "CLIP guidance needs clip_model"),
            (with(text, ["clip_model": "clip", "clip_guidance_scale": -1]), "CLIP guidance scale"),
            (with(text, ["clip_model": "clip", "clip_cutouts": 0]), "clip_cutouts 0"),
            (["model": "tiny-pixel", "clip_guidance_scale": 100], "pixel models take a guide"),
            (["model": "tiny-pixel", "guides": ["clip=a cat"]], "needs clip_model"),
            (["model": "tiny-pixel", "guides": ["clip=a cat"], "clip_model": "clip"], "no tokenizer files"),
            (["model": "tiny-pixel", "clip_model": "clip"], "none is given"),
            (["model": "tiny-pixel", "classifier": "nope", "classes": "0"], "unknown classifier \"nope\""),
            (["model": "tiny-pixel", "classifier": "classifier"], "classifier guidance needs classes"),
            (["model": "tiny-pixel", "classifier": "classifier", "classes": "5"], "outside"),
            (["model": "tiny-pixel", "classifier": "classifier", "classes": "zebra"], "neither a class number nor a class name"),
            (["model": "tiny-pixel", "classifier_scale": 3], "classifier_scale needs a classifier"),
            (["model": "tiny-pixel", "classifier": "classifier", "classes": "1", "classifier_scale": -2], "classifier scale"),
            (with(text, ["classifier": "classifier"]), "classifier guidance is for pixel models"),
        ]
        try await withRouter(server) { client in
            for (body, expected) in cases {
                let response = try await client.send(.post, "/api/v1/jobs", json: body)
                XCTAssertEqual(response.status, .badRequest, "\(body): \(response.text)")
                XCTAssertTrue(response.message.contains(expected), "\(body): \(response.message)")
            }
        }
        try await withRouter(bare) { client in
            for (extra, expected) in [(["loras": ["a"]], "started without --lora"), (["clip_model": "clip"], "started without --clip-model")] as [([String: Any], String)] {
                let response = try await client.send(.post, "/api/v1/jobs", json: with(text, extra))
                XCTAssertEqual(response.status, .badRequest)
                XCTAssertTrue(response.message.contains(expected), response.message)
            }
        }
        XCTAssertThrowsError(try ServerResources.named(["/no/such/file.safetensors"], kind: "LoRA"))
        XCTAssertThrowsError(try ServerResources.named([Self.loraFile, Self.loraFile], kind: "LoRA"))
    }
}
