import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// Stable Diffusion 1.5 at full size with random weights, against diffusers from the same latents: runs
/// when `DIFFUSE_SD_PIPELINE_LARGE=FOLDER` names a pipeline folder made by
/// `Scripts/make-sd-pipeline-large --assemble-large` and timed by `--time-large` (which wrote
/// FOLDER/diffusers-run.safetensors). The recorded run: Tests/Fixtures/sd-pipeline/large-run.txt.
final class StableDiffusionLargeTests: XCTestCase {
    func testStableDiffusion15TextToImage() throws {
        let folder = try StableDiffusionLarge.folder()
        let reference = try StableDiffusionLarge.reference("diffusers-run.safetensors", in: folder, option: "--time-large",
                                                           arguments: " --steps 5 --size 512")
        let loadStart = Date()
        let pipeline = try StableDiffusionPipeline.load(folder: folder)
        let loadSeconds = Date().timeIntervalSince(loadStart)
        var parameters = StableDiffusionParameters(prompt: try reference.text("prompt"))
        parameters.steps = try reference.integer("steps")
        parameters.height = try reference.integer("size")
        parameters.width = parameters.height
        parameters.latents = try reference.tensor("latents")
        var generator = RandomGenerator(seed: 0)
        var stepSeconds: [Double] = []
        var last = Date()
        let start = Date()
        let output = try pipeline.generate(parameters, generator: &generator) { _ in
            stepSeconds.append(Date().timeIntervalSince(last))
            last = Date()
        }
        let decodeSeconds = Date().timeIntervalSince(last)
        let seconds = Date().timeIntervalSince(start)
        let comparison = try StableDiffusionLarge.Comparison(latents: output.latents, images: output.images, reference: reference)
        let imageError = StableDiffusionParityTests.relativeError(output.images, try reference.tensor("image"))
        print(String(format: "StableDiffusion large sd15: %dx%d, %d timesteps: %@, image max relative error %.2e; load %.1f s, "
                     + "generate %.1f s (text encoding + first step %.1f s, later steps %@ s, decode %.1f s)",
                     parameters.width!, parameters.height!, output.timesteps.count, comparison.summary, imageError, loadSeconds,
                     seconds, stepSeconds.first ?? 0, stepSeconds.dropFirst().map { String(format: "%.1f", $0) }.joined(separator: "/"),
                     decodeSeconds))
        print("diffusers: " + reference.timing)
        comparison.check()
    }
}
