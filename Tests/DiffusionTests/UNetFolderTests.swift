import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// diffusers model and pipeline folders: a folder Python's `DDPMPipeline.save_pretrained`
/// wrote loads and gives diffusers' outputs (also a 3-step sampling run and the fp16
/// variant); folders Diffuse writes reload, match the diffusers files byte for byte
/// where they should, and report mismatched weights by name.
final class UNetFolderTests: XCTestCase {
    private let pipelineFolder = UNetParityTests.fixtures.appendingPathComponent("pipeline")

    func testPythonPipelineFolderLoadsAndMatchesDiffusers() throws {
        let pipeline = try DDPMPipeline.load(folder: pipelineFolder)
        XCTAssertEqual(pipeline.className, "DDPMPipeline")
        XCTAssertTrue(pipeline.scheduler is DDPMScheduler)
        XCTAssertEqual(pipeline.unet.loadReport?.isClean, true)
        let golden = try SafetensorsFixture.load("pipeline-io", subdirectory: "unet")
        let output = noGrad { pipeline.unet(try! golden.tensor("sample"), timesteps: try! golden.tensor("timesteps")) }
        let error = UNetParityTests.relativeError(output, try golden.tensor("output"))
        print(String(format: "pipeline folder: unet output max relative error %.2e", error))
        XCTAssertLessThan(error, 1e-4)
    }

    /// diffusers' `DDPMPipeline.__call__` for 3 steps, with the noise it drew.
    func testPipelineSamplingMatchesDiffusers() throws {
        let pipeline = try DDPMPipeline.load(folder: pipelineFolder)
        let golden = try SafetensorsFixture.load("pipeline-io", subdirectory: "unet")
        let scheduler = pipeline.scheduler
        try scheduler.setTimesteps(3)
        XCTAssertEqual(scheduler.timesteps, try golden.tensor("sampling_timesteps").toArray())
        var sample = try golden.tensor("initial_noise")
        var generator = RandomGenerator(seed: 0)
        for (index, timestep) in scheduler.timesteps.enumerated() {
            let output = noGrad { pipeline.unet(sample, timestep: timestep) }
            sample = noGrad {
                scheduler.step(output, timestep: timestep, sample: sample, noise: golden.tensors["step_noise_\(index)"], generator: &generator).prevSample
            }
        }
        let images = noGrad { (sample / 2 + 0.5).clamped(min: 0, max: 1) }
        let error = UNetParityTests.relativeError(images, try golden.tensor("images"))
        print(String(format: "pipeline folder: 3-step DDPM images max relative error %.2e", error))
        XCTAssertLessThan(error, 1e-4)
    }

    func testFP16VariantLoads() throws {
        let unetFolder = pipelineFolder.appendingPathComponent("unet")
        let full = try UNet2DModel.load(folder: unetFolder)
        let half = try UNet2DModel.load(folder: unetFolder, variant: "fp16")
        for ((name, a), (_, b)) in zip(full.namedParameters(), half.namedParameters()) {
            XCTAssertEqual(b.dataType, .float32, name)
            let rounded = a.converted(to: .float16).converted(to: .float32).toArray()
            XCTAssertEqual(b.toArray(), rounded, name)
        }
        let golden = try SafetensorsFixture.load("pipeline-io", subdirectory: "unet")
        let output = noGrad { half(try! golden.tensor("sample"), timesteps: try! golden.tensor("timesteps")) }
        XCTAssertLessThan(UNetParityTests.relativeError(output, try golden.tensor("output_fp16_weights")), 1e-4)
        // Kept in 16 bits (mapped from the file), the same output as the widened weights, at half the memory.
        let kept = try UNet2DModel.load(folder: unetFolder, variant: "fp16", precision: .asStored)
        XCTAssertTrue(kept.parameters().allSatisfy { $0.dataType == .float16 && $0.storage.isBorrowed })
        XCTAssertEqual(kept.parameterBytes * 2, half.parameterBytes)
        let keptOutput = noGrad { kept(try! golden.tensor("sample"), timesteps: try! golden.tensor("timesteps")) }
        XCTAssertEqual(keptOutput.toArray(), output.toArray())
        XCTAssertThrowsError(try UNet2DModel.load(folder: unetFolder, variant: "bf16")) { error in
            guard case .missingFile(_, let hint)? = error as? ModelFolderError else { return XCTFail("\(error)") }
            XCTAssertTrue(hint.contains("\"fp16\""), hint)
        }
    }

    /// Missing, unexpected and mis-shaped weights are all reported by name.
    func testMismatchedWeightsAreReportedByName() throws {
        let folder = try temporaryFolderURL("unet-report")
        let source = pipelineFolder.appendingPathComponent("unet")
        try FileManager.default.copyItem(at: source.appendingPathComponent("config.json"), to: folder.appendingPathComponent("config.json"))
        var tensors = try Safetensors.load(path: source.appendingPathComponent("diffusion_pytorch_model.safetensors").path)
        tensors.removeValue(forKey: "mid_block.attentions.0.to_q.bias")
        tensors.removeValue(forKey: "conv_out.bias")
        tensors["class_embedding.weight"] = Tensor.zeros([10, 32])
        tensors["conv_in.weight"] = Tensor.zeros([8, 3, 3, 3])
        try Safetensors.save(tensors, to: folder.appendingPathComponent("diffusion_pytorch_model.safetensors").path, metadata: ["format": "pt"])

        XCTAssertThrowsError(try UNet2DModel.load(folder: folder)) { error in
            guard let report = error as? StateDictReport else { return XCTFail("\(error)") }
            XCTAssertEqual(Set(report.missing), ["conv_out.bias", "mid_block.attentions.0.to_q.bias"])
            XCTAssertEqual(report.unexpected, ["class_embedding.weight"])
            XCTAssertEqual(report.mismatched, [.init(name: "conv_in.weight", expected: [8, 1, 3, 3], found: [8, 3, 3, 3])])
            let message = "\(report)"
            for name in ["conv_out.bias", "mid_block.attentions.0.to_q.bias", "class_embedding.weight", "conv_in.weight"] {
                XCTAssertTrue(message.contains(name), message)
            }
        }
        let lenient = try UNet2DModel.load(folder: folder, strict: false)
        XCTAssertEqual(lenient.loadReport?.unexpected, ["class_embedding.weight"])
        XCTAssertEqual(lenient.loadReport?.missing.count, 2)
    }

    func testUnsupportedConfigurationKeyInAFolderIsAnError() throws {
        let folder = try temporaryFolderURL("unet-config")
        let source = pipelineFolder.appendingPathComponent("unet")
        let text = try String(contentsOf: source.appendingPathComponent("config.json"), encoding: .utf8)
            .replacingOccurrences(of: "\"act_fn\"", with: "\"addition_embed_type\": \"text\",\n  \"act_fn\"")
        try text.write(to: folder.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
        try FileManager.default.copyItem(at: source.appendingPathComponent("diffusion_pytorch_model.safetensors"),
                                         to: folder.appendingPathComponent("diffusion_pytorch_model.safetensors"))
        XCTAssertThrowsError(try UNet2DModel.load(folder: folder)) { error in
            XCTAssertEqual(error as? UNet2DConfigurationError, .unsupportedKey("addition_embed_type"))
        }
    }

    func testModelIndexNamingOtherComponentsIsAnError() throws {
        let folder = try temporaryFolderURL("unet-index")
        let index = "{\"_class_name\": \"DDPMPipeline\", \"scheduler\": [\"diffusers\", \"DDPMScheduler\"], "
            + "\"unet\": [\"diffusers\", \"UNet2DModel\"], \"vae\": [\"diffusers\", \"AutoencoderKL\"]}"
        try index.write(to: folder.appendingPathComponent("model_index.json"), atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try DDPMPipeline.load(folder: folder)) { error in
            XCTAssertTrue("\(error)".contains("\"vae\""), "\(error)")
        }
        try "{\"_class_name\": \"StableDiffusionPipeline\"}".write(to: folder.appendingPathComponent("model_index.json"), atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try DDPMPipeline.load(folder: folder)) { error in
            XCTAssertTrue("\(error)".contains("StableDiffusionPipeline"), "\(error)")
        }
    }

    /// Saving what was loaded gives diffusers' files back: the same model_index.json and
    /// config.json bytes, the same tensors.
    func testSavedPipelineReloadsAndMatchesDiffusersFiles() throws {
        let pipeline = try DDPMPipeline.load(folder: pipelineFolder)
        let folder = try temporaryFolderURL("unet-save")
        try pipeline.save(folder: folder)
        try pipeline.unet.save(folder: folder.appendingPathComponent("unet"), variant: "fp16")
        for path in ["model_index.json", "unet/config.json"] {
            XCTAssertEqual(try String(contentsOf: folder.appendingPathComponent(path), encoding: .utf8),
                           try String(contentsOf: pipelineFolder.appendingPathComponent(path), encoding: .utf8), path)
        }
        let ours = try Safetensors.load(path: folder.appendingPathComponent("unet/diffusion_pytorch_model.safetensors").path)
        let theirs = try Safetensors.load(path: pipelineFolder.appendingPathComponent("unet/diffusion_pytorch_model.safetensors").path)
        XCTAssertEqual(Set(ours.keys), Set(theirs.keys))
        for (name, tensor) in theirs { XCTAssertEqual(ours[name]?.toArray(), tensor.toArray(), name) }
        let half = try Safetensors.load(path: folder.appendingPathComponent("unet/diffusion_pytorch_model.fp16.safetensors").path)
        XCTAssertTrue(half.values.allSatisfy { $0.dataType == .float16 })
        let reloaded = try DDPMPipeline.load(folder: folder)
        XCTAssertEqual(reloaded.unet.configuration, pipeline.unet.configuration)
        XCTAssertEqual(reloaded.scheduler.configurationJSON, pipeline.scheduler.configurationJSON)
    }

    func testPipelineGeneratesImagesInTheUnitRange() throws {
        let pipeline = try DDPMPipeline.load(folder: pipelineFolder)
        var generator = RandomGenerator(seed: 1)
        let images = try pipeline(batchSize: 2, steps: 2, generator: &generator)
        XCTAssertEqual(images.shape, [2, 1, 16, 16])
        XCTAssertTrue(images.toArray().allSatisfy { $0 >= 0 && $0 <= 1 })
    }

    /// Writes a pipeline folder for `Scripts/make-unet-goldens --verify-diffuse-folder`:
    /// a randomly initialised UNet (the fixture pipeline's configuration), its fp16
    /// variant, the scheduler, and `diffuse_check.safetensors` with an input and
    /// Diffuse's outputs. Set `DIFFUSE_UNET_EXPORT` to keep the folder.
    func testWriteFolderForPythonVerification() throws {
        let environment = ProcessInfo.processInfo.environment["DIFFUSE_UNET_EXPORT"]
        let folder = try environment.map { URL(fileURLWithPath: $0) } ?? temporaryFolderURL("unet-export")
        try? FileManager.default.removeItem(at: folder)
        Initialization.seed(2024)
        let configuration = try UNet2DConfiguration.load(contentsOf: pipelineFolder.appendingPathComponent("unet/config.json"))
        let unet = try UNet2DModel(configuration: configuration)
        // Non-trivial norm parameters, so a transposed or dropped scale would show.
        for (name, parameter) in unet.namedParameters() where name.contains("norm") {
            var generator = RandomGenerator(seed: UInt64(name.utf8.count))
            parameter.copyValues(from: noGrad { parameter + Tensor.randn(parameter.shape, generator: &generator) * 0.1 })
        }
        let scheduler = try DDPMScheduler(configuration: SchedulerConfiguration(values: ["beta_schedule": .string("squaredcos_cap_v2")]))
        let pipeline = DDPMPipeline(unet: unet, scheduler: scheduler)
        try pipeline.save(folder: folder)
        try unet.save(folder: folder.appendingPathComponent("unet"), variant: "fp16")

        var generator = RandomGenerator(seed: 9)
        let sample = Tensor.randn([2, 1, 16, 16], generator: &generator)
        let timesteps = Tensor([999, 250])
        let output = noGrad { unet(sample, timesteps: timesteps) }
        let half = try UNet2DModel.load(folder: folder.appendingPathComponent("unet"), variant: "fp16")
        let halfOutput = noGrad { half(sample, timesteps: timesteps) }
        try Safetensors.save(["sample": sample, "timesteps": timesteps, "output": output, "output_fp16_weights": halfOutput],
                             to: folder.appendingPathComponent("diffuse_check.safetensors").path)
        let reloaded = try DDPMPipeline.load(folder: folder)
        let again = noGrad { reloaded.unet(sample, timesteps: timesteps) }
        XCTAssertEqual(again.toArray(), output.toArray())
        if let environment { print("wrote a Diffuse pipeline folder to \(environment)") }
    }
}
