import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// Inpainting (mask blending with Stable Diffusion 1.5's ordinary UNet, random weights) against diffusers'
/// `StableDiffusionInpaintPipeline`: runs when `DIFFUSE_SD_PIPELINE_LARGE=FOLDER` names a folder made by
/// `Scripts/make-sd-pipeline-goldens --assemble-large` on which `--inpaint-large FOLDER --steps 10 --size 256`
/// wrote FOLDER/diffusers-inpaint.safetensors, inpaint-init.png and inpaint-mask.png. Recorded in
/// Tests/Fixtures/sd-pipeline/large-run.txt. The 9-channel case: `--inpaint-unet-large FOLDER --steps 10 --size 256`
/// (a random SD 1.5-configuration UNet with in_channels 9 in FOLDER/inpaint-unet, diffusers-inpaint-unet.safetensors).
final class StableDiffusionLargeInpaintingTests: XCTestCase {
    func testStableDiffusion15InpaintingUNet() throws {
        guard let path = ProcessInfo.processInfo.environment["DIFFUSE_SD_PIPELINE_LARGE"] else {
            throw XCTSkip("set DIFFUSE_SD_PIPELINE_LARGE to a folder made by Scripts/make-sd-pipeline-goldens --assemble-large")
        }
        let folder = URL(fileURLWithPath: path)
        let file = folder.appendingPathComponent("diffusers-inpaint-unet.safetensors").path
        guard FileManager.default.fileExists(atPath: file) else {
            throw XCTSkip("run Scripts/make-sd-pipeline-goldens --inpaint-unet-large \(path) --steps 10 --size 256 first")
        }
        let reference = try Safetensors.load(path: file, as: .float32)
        let metadata = try SafetensorsCheckpoint(path: file).metadata
        // The parts one by one, so that the folder's own 4-channel UNet is never loaded beside the 9-channel one.
        let pipeline = try StableDiffusionPipeline(
            textEncoder: try CLIPTextModel.load(folder: folder.appendingPathComponent("text_encoder")),
            tokenizer: try CLIPTokenizer(folder: folder.appendingPathComponent("tokenizer")),
            unet: try UNet2DConditionModel.load(folder: folder.appendingPathComponent("inpaint-unet")),
            vae: try AutoencoderKL.load(folder: folder.appendingPathComponent("vae")),
            scheduler: try Schedulers.make(.dpmSolverMultistep, configuration: try SchedulerConfiguration.load(
                contentsOf: folder.appendingPathComponent("scheduler"))))
        XCTAssertTrue(pipeline.hasInpaintingUNet)
        var parameters = StableDiffusionParameters(prompt: try XCTUnwrap(metadata["prompt"]))
        parameters.steps = try XCTUnwrap(Int(metadata["steps"] ?? ""))
        parameters.strength = 1
        let picture = try ImageFile.read(folder.appendingPathComponent("inpaint-init.png").path)
        let mask = try ImageFile.read(folder.appendingPathComponent("inpaint-mask.png").path)
        parameters.initImage = try StableDiffusionImageProcessor.preprocess(picture)
        parameters.mask = try StableDiffusionImageProcessor.preprocessMask(mask)
        parameters.noise = try XCTUnwrap(reference["noise"])
        parameters.maskedImagePosteriorNoise = try XCTUnwrap(reference["masked_posterior_noise"])
        var generator = RandomGenerator(seed: 0)
        let start = Date()
        let output = try pipeline.generate(parameters, generator: &generator)
        let seconds = Date().timeIntervalSince(start)
        let latentError = StableDiffusionParityTests.relativeError(output.latents, try XCTUnwrap(reference["final_latents"]))
        let ours = StableDiffusionImageProcessor.pixelImages(output.images)[0].samples
        let theirs = StableDiffusionImageProcessor.pixelImages(try XCTUnwrap(reference["image"]))[0].samples
        let levels = zip(ours, theirs).map { abs(Int($0) - Int($1)) }
        print(String(format: "StableDiffusion large sd15 inpainting (9-channel UNet): %dx%d, %d timesteps: final latents max relative "
                     + "error %.2e, pixels differing %d of %d (largest %d levels); generate %.1f s", picture.width, picture.height,
                     output.timesteps.count, latentError, levels.filter { $0 > 0 }.count, levels.count, levels.max() ?? 0, seconds))
        print("diffusers: " + (metadata["timing"] ?? "(no timing recorded)"))
        XCTAssertLessThan(latentError, 1e-3)
        XCTAssertLessThanOrEqual(levels.max() ?? 0, 2)
    }

    func testStableDiffusion15InpaintingBlending() throws {
        guard let path = ProcessInfo.processInfo.environment["DIFFUSE_SD_PIPELINE_LARGE"] else {
            throw XCTSkip("set DIFFUSE_SD_PIPELINE_LARGE to a folder made by Scripts/make-sd-pipeline-goldens --assemble-large")
        }
        let folder = URL(fileURLWithPath: path)
        let file = folder.appendingPathComponent("diffusers-inpaint.safetensors").path
        guard FileManager.default.fileExists(atPath: file) else {
            throw XCTSkip("run Scripts/make-sd-pipeline-goldens --inpaint-large \(path) --steps 10 --size 256 first")
        }
        let reference = try Safetensors.load(path: file, as: .float32)
        let metadata = try SafetensorsCheckpoint(path: file).metadata
        let pipeline = try StableDiffusionPipeline.load(folder: folder)
        var parameters = StableDiffusionParameters(prompt: try XCTUnwrap(metadata["prompt"]))
        parameters.steps = try XCTUnwrap(Int(metadata["steps"] ?? ""))
        parameters.scheduler = .dpmSolverMultistep
        parameters.strength = 1
        let picture = try ImageFile.read(folder.appendingPathComponent("inpaint-init.png").path)
        let mask = try ImageFile.read(folder.appendingPathComponent("inpaint-mask.png").path)
        parameters.initImage = try StableDiffusionImageProcessor.preprocess(picture)
        parameters.mask = try StableDiffusionImageProcessor.preprocessMask(mask)
        parameters.posteriorNoise = try XCTUnwrap(reference["posterior_noise"])
        parameters.noise = try XCTUnwrap(reference["noise"])
        parameters.maskedImagePosteriorNoise = try XCTUnwrap(reference["masked_posterior_noise"])
        var generator = RandomGenerator(seed: 0)
        let start = Date()
        let output = try pipeline.generate(parameters, generator: &generator)
        let seconds = Date().timeIntervalSince(start)
        let latentError = StableDiffusionParityTests.relativeError(output.latents, try XCTUnwrap(reference["final_latents"]))
        let ours = StableDiffusionImageProcessor.pixelImages(output.images)[0].samples
        let theirs = StableDiffusionImageProcessor.pixelImages(try XCTUnwrap(reference["image"]))[0].samples
        let levels = zip(ours, theirs).map { abs(Int($0) - Int($1)) }
        print(String(format: "StableDiffusion large sd15 inpainting (blending): %dx%d, %d timesteps: final latents max relative error %.2e, "
                     + "pixels differing %d of %d (largest %d levels); generate %.1f s", picture.width, picture.height,
                     output.timesteps.count, latentError, levels.filter { $0 > 0 }.count, levels.count, levels.max() ?? 0, seconds))
        print("diffusers: " + (metadata["timing"] ?? "(no timing recorded)"))
        XCTAssertLessThan(latentError, 1e-3)
        XCTAssertLessThanOrEqual(levels.max() ?? 0, 2)
    }
}
