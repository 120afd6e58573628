import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// Image-to-image at strength 0.6 on Stable Diffusion 1.5's configuration (random weights) against diffusers'
/// `StableDiffusionImg2ImgPipeline`: runs when `DIFFUSE_SD_PIPELINE_LARGE=FOLDER` names a folder made by
/// `Scripts/make-sd-pipeline-goldens --assemble-large` on which `--img2img-large FOLDER --steps 10 --size 256` wrote
/// FOLDER/diffusers-img2img.safetensors and img2img-init.png. Recorded in Tests/Fixtures/sd-pipeline/large-run.txt.
final class StableDiffusionLargeImageToImageTests: XCTestCase {
    func testStableDiffusion15ImageToImage() throws {
        guard let path = ProcessInfo.processInfo.environment["DIFFUSE_SD_PIPELINE_LARGE"] else {
            throw XCTSkip("set DIFFUSE_SD_PIPELINE_LARGE to a folder made by Scripts/make-sd-pipeline-goldens --assemble-large")
        }
        let folder = URL(fileURLWithPath: path)
        let file = folder.appendingPathComponent("diffusers-img2img.safetensors").path
        guard FileManager.default.fileExists(atPath: file) else {
            throw XCTSkip("run Scripts/make-sd-pipeline-goldens --img2img-large \(path) --steps 10 --size 256 first")
        }
        let reference = try Safetensors.load(path: file, as: .float32)
        let metadata = try SafetensorsCheckpoint(path: file).metadata
        let pipeline = try StableDiffusionPipeline.load(folder: folder)
        var parameters = StableDiffusionParameters(prompt: try XCTUnwrap(metadata["prompt"]))
        parameters.steps = try XCTUnwrap(Int(metadata["steps"] ?? ""))
        parameters.scheduler = .ddim
        parameters.strength = try XCTUnwrap(Double(metadata["strength"] ?? ""))
        let picture = try ImageFile.read(folder.appendingPathComponent("img2img-init.png").path)
        parameters.initImage = try StableDiffusionImageProcessor.preprocess(picture)
        parameters.posteriorNoise = try XCTUnwrap(reference["posterior_noise"])
        parameters.noise = try XCTUnwrap(reference["noise"])
        var generator = RandomGenerator(seed: 0)
        let start = Date()
        let output = try pipeline.generate(parameters, generator: &generator)
        let seconds = Date().timeIntervalSince(start)
        let latentError = StableDiffusionParityTests.relativeError(output.latents, try XCTUnwrap(reference["final_latents"]))
        let ours = StableDiffusionImageProcessor.pixelImages(output.images)[0].samples
        let theirs = StableDiffusionImageProcessor.pixelImages(try XCTUnwrap(reference["image"]))[0].samples
        let levels = zip(ours, theirs).map { abs(Int($0) - Int($1)) }
        print(String(format: "StableDiffusion large sd15 image-to-image: %dx%d, strength %.1f, %d timesteps: final latents max relative "
                     + "error %.2e, pixels differing %d of %d (largest %d levels); generate %.1f s", picture.width, picture.height,
                     parameters.strength, output.timesteps.count, latentError, levels.filter { $0 > 0 }.count, levels.count,
                     levels.max() ?? 0, seconds))
        print("diffusers: " + (metadata["timing"] ?? "(no timing recorded)"))
        XCTAssertLessThan(latentError, 1e-3)
        XCTAssertLessThanOrEqual(levels.max() ?? 0, 2)
    }
}
