import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// LoRA files on the tiny Stable Diffusion fixture against diffusers + peft (Scripts/make-lora-goldens,
/// Tests/Fixtures/lora): the PEFT file diffusers' `save_lora_weights` wrote and its kohya form give
/// diffusers' UNet and text-encoder outputs at scales 1 and 0.5 and its generation's final latents;
/// fused equals unfused; a LoRA Diffuse saves has diffusers' keys and loads back to the same outputs.
final class LoRATests: XCTestCase {
    static let fixtures = StableDiffusionParityTests.fixtures.deletingLastPathComponent().appendingPathComponent("lora")
    static let peftFile = fixtures.appendingPathComponent("peft/pytorch_lora_weights.safetensors").path
    static let kohyaFile = fixtures.appendingPathComponent("kohya.safetensors").path

    /// A pipeline of its own (adapters change it).
    static func pipeline() throws -> StableDiffusionPipeline {
        try StableDiffusionPipeline.load(folder: StableDiffusionParityTests.tiny)
    }

    static func golden() throws -> GoldenCase { try SafetensorsFixture.load("outputs", subdirectory: "lora") }

    static func relativeError(_ ours: Tensor, _ reference: Tensor) -> Float {
        StableDiffusionParityTests.relativeError(ours, reference)
    }

    static func unetOutput(_ pipeline: StableDiffusionPipeline, _ golden: GoldenCase) throws -> Tensor {
        let timestep = try golden.tensor("unet_timestep").toArray()[0]
        return noGrad { pipeline.unet(try! golden.tensor("unet_sample"), timestep: timestep, encoderHiddenStates: try! golden.tensor("unet_context")) }
    }

    static func textOutput(_ pipeline: StableDiffusionPipeline, _ golden: GoldenCase) throws -> Tensor {
        let ids = try golden.tensor("text_ids").toArray().map { Int($0) }
        return noGrad { pipeline.textEncoder(ids: ids).lastHiddenState }
    }

    /// Loads `file` and compares the UNet (scale 1 and 0.5) and the text encoder with diffusers'.
    func checkFile(_ file: String, format: LoRAFileFormat) throws {
        let golden = try Self.golden()
        let pipeline = try Self.pipeline()
        XCTAssertLessThan(Self.relativeError(try Self.unetOutput(pipeline, golden), try golden.tensor("unet_base")), 1e-5)
        XCTAssertLessThan(Self.relativeError(try Self.textOutput(pipeline, golden), try golden.tensor("text_base")), 1e-5)
        let loaded = try LoRAFile(path: file)
        XCTAssertEqual(loaded.format, format)
        let report = try pipeline.attachLoRA(loaded)
        XCTAssertEqual(report.adaptedLayers, ["unet": 32, "text_encoder": 8])
        XCTAssertEqual(report.unmatchedKeys, [])
        let unet1 = Self.relativeError(try Self.unetOutput(pipeline, golden), try golden.tensor("unet_scale1"))
        let text = Self.relativeError(try Self.textOutput(pipeline, golden), try golden.tensor("text_lora"))
        pipeline.setLoRAScale(0.5)
        let unet05 = Self.relativeError(try Self.unetOutput(pipeline, golden), try golden.tensor("unet_scale05"))
        print(String(format: "LoRA %@: UNet scale 1 %.2e, scale 0.5 %.2e, text encoder %.2e", format.rawValue, unet1, unet05, text))
        XCTAssertLessThan(unet1, 1e-4)
        XCTAssertLessThan(unet05, 1e-4)
        XCTAssertLessThan(text, 1e-4)
    }

    func testPEFTFileMatchesDiffusers() throws { try checkFile(Self.peftFile, format: .peft) }

    func testKohyaFileMatchesDiffusers() throws { try checkFile(Self.kohyaFile, format: .kohya) }

    /// The alphas come from the `lora_adapter_metadata` header (UNet 8 over rank 4, text encoder 4 over rank 2).
    func testAlphasFromMetadata() throws {
        let file = try LoRAFile(path: Self.peftFile)
        XCTAssertEqual(file.entries.count, 40)
        for entry in file.entries {
            XCTAssertEqual(entry.alpha / Float(entry.down.shape[0]), 2, entry.key)
        }
    }

    func testGenerationMatchesDiffusers() throws {
        let golden = try Self.golden()
        let pipeline = try Self.pipeline()
        try pipeline.loadLoRA(path: Self.peftFile)
        for (scale, name) in [(Float(1), "final_latents"), (0.5, "final_latents05")] {
            pipeline.setLoRAScale(scale)
            var parameters = StableDiffusionParameters(prompts: [try golden.string("prompt")])
            parameters.steps = 3
            parameters.guidanceScale = 7.5
            parameters.height = 48
            parameters.width = 32
            parameters.latents = try golden.tensor("latents")
            var final: Tensor?
            var generator = RandomGenerator(seed: 0)
            _ = try pipeline.generate(parameters, generator: &generator) { final = $0.latents }
            let error = Self.relativeError(try XCTUnwrap(final), try golden.tensor(name))
            print(String(format: "LoRA generation at scale %.1f: final latents %.2e", scale, error))
            XCTAssertLessThan(error, 1e-4, name)
        }
    }

    func testFusedEqualsUnfusedAndUnloadRestores() throws {
        let golden = try Self.golden()
        let pipeline = try Self.pipeline()
        let base = try Self.unetOutput(pipeline, golden)
        try pipeline.loadLoRA(path: Self.peftFile, scale: 0.7)
        let unfused = try Self.unetOutput(pipeline, golden)
        let unfusedText = try Self.textOutput(pipeline, golden)
        pipeline.fuseLoRA()
        let fusedError = Self.relativeError(try Self.unetOutput(pipeline, golden), unfused)
        let fusedTextError = Self.relativeError(try Self.textOutput(pipeline, golden), unfusedText)
        print(String(format: "LoRA fused vs unfused: UNet %.2e, text encoder %.2e", fusedError, fusedTextError))
        XCTAssertLessThan(fusedError, 1e-5)
        XCTAssertLessThan(fusedTextError, 1e-5)
        XCTAssertGreaterThan(Self.relativeError(unfused, base), 1e-2, "the LoRA changes the output")
        pipeline.unloadLoRA()
        XCTAssertEqual(pipeline.loraAdapterNames, [])
        XCTAssertLessThan(Self.relativeError(try Self.unetOutput(pipeline, golden), base), 1e-5)
    }

    /// Two adapters at 0.5 each add up to one at 1.
    func testSeveralLoRAsAdd() throws {
        let golden = try Self.golden()
        let pipeline = try Self.pipeline()
        try pipeline.loadLoRA(path: Self.peftFile, scale: 0.5, name: "first")
        try pipeline.loadLoRA(path: Self.kohyaFile, scale: 0.5, name: "second")
        XCTAssertEqual(pipeline.loraAdapterNames.sorted(), ["first", "second"])
        XCTAssertLessThan(Self.relativeError(try Self.unetOutput(pipeline, golden), try golden.tensor("unet_scale1")), 1e-4)
        XCTAssertThrowsError(try pipeline.loadLoRA(path: Self.peftFile, name: "first"))
    }

    /// Keys naming no layer are reported (diffusers warns and loads the rest); a file matching nothing is an error.
    func testUnmatchedKeys() throws {
        let pipeline = try Self.pipeline()
        var tensors = try Safetensors.load(path: Self.peftFile)
        tensors["unet.down_blocks.9.attentions.0.to_q.lora_A.weight"] = Tensor.zeros([4, 16])
        tensors["unet.down_blocks.9.attentions.0.to_q.lora_B.weight"] = Tensor.zeros([16, 4])
        let report = try pipeline.attachLoRA(try LoRAFile(tensors: tensors))
        XCTAssertEqual(report.unmatchedKeys, ["unet.down_blocks.9.attentions.0.to_q.lora_A.weight"])
        XCTAssertNotNil(report.warning)
        let stray = ["unet.nothing.here.lora_A.weight": Tensor.zeros([2, 2]), "unet.nothing.here.lora_B.weight": Tensor.zeros([2, 2])]
        XCTAssertThrowsError(try pipeline.attachLoRA(try LoRAFile(tensors: stray))) { error in
            XCTAssert("\(error)".contains("unet.nothing.here"), "\(error)")
        }
    }

    /// Saving: exactly the keys diffusers' `save_lora_weights` wrote, and the saved file loads back to the same outputs.
    /// With DIFFUSE_LORA_EXPORT=FILE the file is also written there for `Scripts/make-lora-goldens --verify FILE`.
    func testSaveHasDiffusersKeysAndLoadsBack() throws {
        let golden = try Self.golden()
        let pipeline = try Self.pipeline()
        try pipeline.loadLoRA(path: Self.peftFile)
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("lora-save-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = try pipeline.saveLoRA(to: folder.path)
        XCTAssertTrue(file.hasSuffix("pytorch_lora_weights.safetensors"))
        if let export = ProcessInfo.processInfo.environment["DIFFUSE_LORA_EXPORT"] { try pipeline.saveLoRA(to: export) }
        let expectedKeys = try String(contentsOf: Self.fixtures.appendingPathComponent("diffusers-keys.txt"), encoding: .utf8)
            .split(separator: "\n").map(String.init)
        let savedKeys = try SafetensorsFile(path: file).names
        XCTAssertEqual(savedKeys, expectedKeys.sorted())
        let metadata = try Safetensors.metadata(path: file)
        XCTAssertNotNil(metadata["lora_adapter_metadata"])
        let reloaded = try Self.pipeline()
        try reloaded.loadLoRA(path: file)
        XCTAssertLessThan(Self.relativeError(try Self.unetOutput(reloaded, golden), try golden.tensor("unet_scale1")), 1e-4)
        XCTAssertLessThan(Self.relativeError(try Self.textOutput(reloaded, golden), try golden.tensor("text_lora")), 1e-4)
    }

    /// `--lora FILE[:SCALE]` and the request path: loaded, fused, and diffusers' output at that scale.
    func testRequestLoRAs() throws {
        XCTAssertEqual(LoRARequest(argument: "a/b.safetensors"), LoRARequest(path: "a/b.safetensors", scale: 1))
        XCTAssertEqual(LoRARequest(argument: "c:/x.safetensors:0.5"), LoRARequest(path: "c:/x.safetensors", scale: 0.5))
        XCTAssertNil(LoRARequest(argument: ":0.5"))
        let golden = try Self.golden()
        let pipeline = try Self.pipeline()
        var request = StableDiffusionRequest(pipeline: StableDiffusionParityTests.tiny.path, prompt: "a red shirt")
        request.loras = [LoRARequest(path: Self.peftFile, scale: 0.5)]
        var messages: [String] = []
        try StableDiffusionRun.applyLoRAs(request, to: pipeline) { messages.append($0) }
        XCTAssertEqual(messages, [])
        XCTAssertEqual(pipeline.loraAdapterNames, ["lora0"])
        XCTAssertLessThan(Self.relativeError(try Self.unetOutput(pipeline, golden), try golden.tensor("unet_scale05")), 1e-4)
    }
}
