import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// Stable Diffusion pipeline folders both ways, the errors a bad folder or request gives before any
/// work, and `diffuse generate`'s request type end to end.
final class StableDiffusionFolderTests: XCTestCase {
    private let tiny = StableDiffusionParityTests.tiny

    /// A copy of the tiny pipeline folder to break.
    private func copyOfTiny(_ name: String) throws -> URL {
        let folder = try temporaryFolderURL("sd-pipeline-\(name)").appendingPathComponent("pipeline")
        try FileManager.default.copyItem(at: tiny, to: folder)
        return folder
    }

    private func editModelIndex(_ folder: URL, _ edit: (inout [String: Any]) -> Void) throws {
        let url = folder.appendingPathComponent("model_index.json")
        var object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        edit(&object)
        try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys]).write(to: url)
    }

    private func assertThrows(_ expression: @autoclosure () throws -> some Any, containing text: String,
                              file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try expression(), file: file, line: line) { error in
            XCTAssert("\(error)".contains(text), "\"\(error)\" does not mention \"\(text)\"", file: file, line: line)
        }
    }

    func testDiffusersFolderLoadsWithCleanReports() throws {
        let pipeline = try StableDiffusionPipeline.load(folder: tiny)
        XCTAssertEqual(pipeline.textEncoder.loadReport, StateDictReport())
        XCTAssertEqual(pipeline.unet.loadReport, StateDictReport())
        XCTAssertEqual(pipeline.vae.loadReport, StateDictReport())
        XCTAssert(pipeline.scheduler is PNDMScheduler)
        XCTAssertEqual(pipeline.componentsNotRun, [])
        XCTAssertEqual(pipeline.vaeScaleFactor, 8)
        XCTAssertEqual(pipeline.defaultSize.height, 64)
        XCTAssertEqual(pipeline.promptLength, 77)
        let index = try StableDiffusionModelIndex.load(contentsOf: tiny.appendingPathComponent("model_index.json"))
        XCTAssertEqual(index.component("text_encoder"), .init(library: "transformers", className: "CLIPTextModel"))
        XCTAssertEqual(index.requiresSafetyChecker, false)
        // 16-bit weights kept as stored.
        let half = try StableDiffusionPipeline.load(folder: tiny, variant: "fp16", precision: .asStored)
        XCTAssertEqual(half.unet.parameters().first?.dataType, .float16)
        XCTAssertEqual(half.textEncoder.parameters().first?.dataType, .float16)
    }

    func testSafetyCheckerAndFeatureExtractorAreReportedAsNotRun() throws {
        let folder = try copyOfTiny("safety")
        try editModelIndex(folder) {
            $0["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
            $0["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
            $0["requires_safety_checker"] = true
        }
        let pipeline = try StableDiffusionPipeline.load(folder: folder)
        XCTAssertEqual(pipeline.componentsNotRun, ["safety_checker (StableDiffusionSafetyChecker)", "feature_extractor (CLIPImageProcessor)"])
    }

    func testSavedFolderReloadsAndGeneratesTheSame() throws {
        let pipeline = try StableDiffusionParityTests.pipeline()
        let folder = try temporaryFolderURL("sd-pipeline-save")
        try pipeline.save(folder: folder)
        try pipeline.save(folder: folder, variant: "fp16")
        let names = try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted()
        XCTAssertEqual(names, ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder.appendingPathComponent("tokenizer").path).sorted(),
                       ["merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"])
        XCTAssertEqual(try String(contentsOf: folder.appendingPathComponent("scheduler/scheduler_config.json"), encoding: .utf8),
                       pipeline.scheduler.configurationJSON)
        let index = try String(contentsOf: folder.appendingPathComponent("model_index.json"), encoding: .utf8)
        XCTAssert(index.contains("\"safety_checker\": [\n    null,\n    null\n  ]"), index)
        let reloaded = try StableDiffusionPipeline.load(folder: folder)
        XCTAssertEqual(reloaded.tokenizer.vocabulary, pipeline.tokenizer.vocabulary)
        var parameters = StableDiffusionParameters(prompt: "a red fox")
        parameters.steps = 3
        parameters.height = 32
        parameters.width = 32
        var first = RandomGenerator(seed: 3), second = RandomGenerator(seed: 3)
        let original = try pipeline.generate(parameters, generator: &first)
        let again = try reloaded.generate(parameters, generator: &second)
        XCTAssertEqual(again.images.toArray(), original.images.toArray())
        let half = try StableDiffusionPipeline.load(folder: folder, variant: "fp16")
        var third = RandomGenerator(seed: 3)
        let halfOutput = try half.generate(parameters, generator: &third)
        XCTAssertLessThan(StableDiffusionParityTests.relativeError(halfOutput.latents, original.latents), 2e-2)
    }

    func testBadFoldersAreNamedErrors() throws {
        let missing = try copyOfTiny("missing")
        try FileManager.default.removeItem(at: missing.appendingPathComponent("vae"))
        assertThrows(try StableDiffusionPipeline.load(folder: missing), containing: "vae")

        let unknown = try copyOfTiny("unknown")
        try editModelIndex(unknown) { $0["controlnet"] = ["diffusers", "ControlNetModel"] }
        assertThrows(try StableDiffusionPipeline.load(folder: unknown), containing: "\"controlnet\"")

        let wrongClass = try copyOfTiny("class")
        try editModelIndex(wrongClass) { $0["_class_name"] = "StableDiffusionXLPipeline" }
        assertThrows(try StableDiffusionPipeline.load(folder: wrongClass), containing: "StableDiffusionXLPipeline")

        let wrongText = try copyOfTiny("text")
        try editModelIndex(wrongText) { $0["text_encoder"] = ["transformers", "CLIPTextModelWithProjection"] }
        assertThrows(try StableDiffusionPipeline.load(folder: wrongText), containing: "CLIPTextModelWithProjection")

        let nullUNet = try copyOfTiny("null")
        try editModelIndex(nullUNet) { $0["unet"] = [NSNull(), NSNull()] }
        assertThrows(try StableDiffusionPipeline.load(folder: nullUNet), containing: "\"unet\" is null")

        let noVariant = try copyOfTiny("variant")
        assertThrows(try StableDiffusionPipeline.load(folder: noVariant, variant: "bf16"), containing: "fp16")

        // A scheduler class Diffuse does not implement: an error, unless another is chosen.
        let lcm = try copyOfTiny("lcm")
        try editModelIndex(lcm) { $0["scheduler"] = ["diffusers", "LCMScheduler"] }
        assertThrows(try StableDiffusionPipeline.load(folder: lcm), containing: "LCMScheduler")
        XCTAssert(try StableDiffusionPipeline.load(folder: lcm, scheduler: .ddim).scheduler is DDIMScheduler)
    }

    func testMismatchedPartsAndBadRequestsFailBeforeWork() throws {
        let pipeline = try StableDiffusionParityTests.pipeline()
        var configuration = pipeline.textEncoder.configuration
        configuration.hiddenSize = 16
        configuration.attentionHeadCount = 2
        assertThrows(try StableDiffusionPipeline(textEncoder: CLIPTextModel(configuration), tokenizer: pipeline.tokenizer, unet: pipeline.unet,
                                                 vae: pipeline.vae, scheduler: pipeline.scheduler),
                     containing: "cross_attention_dim is 32")
        var generator = RandomGenerator(seed: 0)
        var parameters = StableDiffusionParameters(prompt: "a cat")
        parameters.width = 36
        assertThrows(try pipeline.generate(parameters, generator: &generator), containing: "divisible by 8")
        parameters.width = 32
        parameters.clipSkip = 3
        assertThrows(try pipeline.generate(parameters, generator: &generator), containing: "clip skip 3")
        parameters.clipSkip = nil
        parameters.negativePrompts = ["a", "b"]
        assertThrows(try pipeline.generate(parameters, generator: &generator), containing: "2 negative prompts for 1 prompts")
        parameters.negativePrompts = nil
        parameters.latents = Tensor.zeros([1, 4, 4, 4])
        assertThrows(try pipeline.generate(parameters, generator: &generator), containing: "latents have shape [1, 4, 4, 4]")
        parameters.latents = nil
        parameters.initImage = Tensor.zeros([1, 3, 32, 32])
        parameters.strength = 0.1
        parameters.steps = 5
        parameters.scheduler = .ddim  // (PNDM's extra first timestep would leave one step, as in diffusers)
        assertThrows(try pipeline.generate(parameters, generator: &generator), containing: "leaves no step to run")
    }

    /// One PNDM step: diffusers' schedule is the single timestep 1 (`_timesteps[-2:-1]` is empty), and it runs.
    func testSinglePNDMStep() throws {
        let pipeline = try StableDiffusionParityTests.pipeline()
        var parameters = StableDiffusionParameters(prompt: "a cat")
        parameters.steps = 1
        parameters.height = 32
        parameters.width = 32
        XCTAssertEqual(try pipeline.timesteps(for: parameters), [1])
        var generator = RandomGenerator(seed: 0)
        XCTAssertEqual(try pipeline.generate(parameters, generator: &generator).timesteps, [1])
    }

    /// The request type `diffuse generate` and a server share: PNGs written, the same seed the same
    /// image, and given latents reproduce diffusers' image to the byte (or one level).
    func testRequestWritesImagesAsDiffusersWould() throws {
        let folder = try temporaryFolderURL("sd-pipeline-request")
        let golden = try SafetensorsFixture.load("pndm-cfg", subdirectory: "sd-pipeline")
        let latents = folder.appendingPathComponent("latents.safetensors").path
        try Safetensors.save(["latents": try golden.tensor("latents")], to: latents, metadata: ["format": "pt"])
        var request = StableDiffusionRequest(pipeline: tiny.path, prompt: "a photo of an astronaut riding a horse on mars")
        request.steps = 4
        request.width = 32
        request.height = 48
        request.initLatents = latents
        request.output = folder.appendingPathComponent("out/astronaut.png").path
        var steps = 0
        let outcome = try StableDiffusionRun.run(request, onStep: { _ in steps += 1 })
        XCTAssertEqual(outcome.paths, [request.output])
        XCTAssertEqual(steps, 5)
        XCTAssertEqual(outcome.schedulerName, "PNDMScheduler")
        let written = try ImageFile.read(request.output)
        let expected = StableDiffusionImageProcessor.pixelImages(try golden.tensor("image"))[0]
        let largest = zip(written.samples, expected.samples).map { abs(Int($0) - Int($1)) }.max() ?? 0
        print("StableDiffusion request: PNG vs diffusers' image quantised: largest difference \(largest) levels")
        XCTAssertLessThanOrEqual(largest, 1)

        var seeded = StableDiffusionRequest(pipeline: tiny.path, prompt: "a cat")
        seeded.steps = 3
        seeded.count = 2
        seeded.scheduler = "euler"
        seeded.seed = 7
        seeded.output = folder.appendingPathComponent("cat.png").path
        let first = try StableDiffusionRun.run(seeded)
        XCTAssertEqual(first.paths.map { URL(fileURLWithPath: $0).lastPathComponent }, ["cat-1.png", "cat-2.png"])
        let images = try first.paths.map { try ImageFile.read($0) }
        XCTAssertEqual(images[0].width, 64)
        XCTAssertNotEqual(images[0].samples, images[1].samples)
        seeded.output = folder.appendingPathComponent("again.png").path
        let second = try StableDiffusionRun.run(seeded)
        XCTAssertEqual(try second.paths.map { try ImageFile.read($0).samples }, images.map(\.samples))

        var imageToImage = StableDiffusionRequest(pipeline: tiny.path, prompt: "a watercolor landscape")
        imageToImage.initImage = StableDiffusionParityTests.fixtures.appendingPathComponent("init-odd.png").path
        imageToImage.strength = 0.5
        imageToImage.steps = 4
        imageToImage.output = folder.appendingPathComponent("i2i.png").path
        let outcome2 = try StableDiffusionRun.run(imageToImage)
        XCTAssertEqual(outcome2.steps, 3)  // PNDM: timesteps[2:] of 5
        let picture = try ImageFile.read(outcome2.paths[0])
        XCTAssertEqual([picture.width, picture.height], [32, 48])
        imageToImage.width = 32
        XCTAssertThrowsError(try StableDiffusionRun.run(imageToImage))
    }

    /// Writes a pipeline folder for `Scripts/make-sd-pipeline-goldens --verify-diffuse-folder` (runs when
    /// `DIFFUSE_SD_PIPELINE_EXPORT=DIR` is set): the tiny pipeline saved by Diffuse (float32 and fp16
    /// variant), with a text-to-image run's parameters and results in diffuse_check.json / .safetensors.
    func testWriteFolderForPythonVerification() throws {
        guard let path = ProcessInfo.processInfo.environment["DIFFUSE_SD_PIPELINE_EXPORT"] else {
            throw XCTSkip("set DIFFUSE_SD_PIPELINE_EXPORT to a folder to write")
        }
        let folder = URL(fileURLWithPath: path)
        let pipeline = try StableDiffusionParityTests.pipeline()
        try pipeline.save(folder: folder)
        try pipeline.save(folder: folder, variant: "fp16")
        var parameters = StableDiffusionParameters(prompt: "a lighthouse at dusk, oil painting")
        parameters.steps = 4
        parameters.guidanceScale = 6
        parameters.height = 40
        parameters.width = 56
        var draws = RandomGenerator(seed: 21)
        let latents = Tensor.randn([1, 4, 5, 7], generator: &draws)
        parameters.latents = latents
        var steps: [Tensor] = []
        let output = try pipeline.generate(parameters, generator: &draws) { steps.append($0.latents) }
        try Safetensors.save(["latents": latents, "step_latents": Tensor.concatenate(steps.map { $0.reshaped([1] + $0.shape) }, axis: 0),
                              "image": output.images, "prompt_ids": Tensor(output.embeddings.promptIDs[0].map(Float.init))],
                             to: folder.appendingPathComponent("diffuse_check.safetensors").path, metadata: ["format": "pt"])
        let json = "{\"prompt\": \"a lighthouse at dusk, oil painting\", \"steps\": 4, \"guidance_scale\": 6.0, \"height\": 40, \"width\": 56}\n"
        try json.write(to: folder.appendingPathComponent("diffuse_check.json"), atomically: true, encoding: .utf8)
    }
}
