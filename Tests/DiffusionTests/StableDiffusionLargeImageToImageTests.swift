import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// Image-to-image at strength 0.6 on Stable Diffusion 1.5's configuration (random weights) against diffusers'
/// `StableDiffusionImg2ImgPipeline`: runs when `DIFFUSE_SD_PIPELINE_LARGE=FOLDER` names a folder made by
/// `Scripts/make-sd-pipeline-large --assemble-large` on which `--img2img-large FOLDER --steps 10 --size 256` wrote
/// FOLDER/diffusers-img2img.safetensors and img2img-init.png. Recorded in Tests/Fixtures/sd-pipeline/large-run.txt.
final class StableDiffusionLargeImageToImageTests: XCTestCase {
    func testStableDiffusion15ImageToImage() throws {
        let folder = try StableDiffusionLarge.folder()
        let reference = try StableDiffusionLarge.reference("diffusers-img2img.safetensors", in: folder, option: "--img2img-large")
        let pipeline = try StableDiffusionPipeline.load(folder: folder)
        var parameters = StableDiffusionParameters(prompt: try reference.text("prompt"))
        parameters.steps = try reference.integer("steps")
        parameters.scheduler = .ddim
        parameters.strength = try XCTUnwrap(Double(reference.text("strength")))
        let picture = try ImageFile.read(folder.appendingPathComponent("img2img-init.png").path)
        parameters.initImage = try StableDiffusionImageProcessor.preprocess(picture)
        parameters.posteriorNoise = try reference.tensor("posterior_noise")
        parameters.noise = try reference.tensor("noise")
        var generator = RandomGenerator(seed: 0)
        let start = Date()
        let output = try pipeline.generate(parameters, generator: &generator)
        let seconds = Date().timeIntervalSince(start)
        let comparison = try StableDiffusionLarge.Comparison(latents: output.latents, images: output.images, reference: reference)
        print(String(format: "StableDiffusion large sd15 image-to-image: %dx%d, strength %.1f, %d timesteps: %@; generate %.1f s",
                     picture.width, picture.height, parameters.strength, output.timesteps.count, comparison.summary, seconds))
        print("diffusers: " + reference.timing)
        comparison.check()
    }
}
