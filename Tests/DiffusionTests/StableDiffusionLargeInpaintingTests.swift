import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// Inpainting (mask blending with Stable Diffusion 1.5's ordinary UNet, random weights) against diffusers'
/// `StableDiffusionInpaintPipeline`: runs when `DIFFUSE_SD_PIPELINE_LARGE=FOLDER` names a folder made by
/// `Scripts/make-sd-pipeline-large --assemble-large` on which `--inpaint-large FOLDER --steps 10 --size 256`
/// wrote FOLDER/diffusers-inpaint.safetensors, inpaint-init.png and inpaint-mask.png. Recorded in
/// Tests/Fixtures/sd-pipeline/large-run.txt. The 9-channel case: `--inpaint-unet-large FOLDER --steps 10 --size 256`
/// (a random SD 1.5-configuration UNet with in_channels 9 in FOLDER/inpaint-unet, diffusers-inpaint-unet.safetensors).
final class StableDiffusionLargeInpaintingTests: XCTestCase {
    func testStableDiffusion15InpaintingUNet() throws {
        let folder = try StableDiffusionLarge.folder()
        let reference = try StableDiffusionLarge.reference("diffusers-inpaint-unet.safetensors", in: folder, option: "--inpaint-unet-large")
        // The parts one by one, so that the folder's own 4-channel UNet is never loaded beside the 9-channel one.
        let pipeline = try StableDiffusionPipeline(
            textEncoder: try CLIPTextModel.load(folder: folder.appendingPathComponent("text_encoder")),
            tokenizer: try CLIPTokenizer(folder: folder.appendingPathComponent("tokenizer")),
            unet: try UNet2DConditionModel.load(folder: folder.appendingPathComponent("inpaint-unet")),
            vae: try AutoencoderKL.load(folder: folder.appendingPathComponent("vae")),
            scheduler: try Schedulers.make(.dpmSolverMultistep, configuration: try SchedulerConfiguration.load(
                contentsOf: folder.appendingPathComponent("scheduler"))))
        XCTAssertTrue(pipeline.hasInpaintingUNet)
        var parameters = try Self.parameters(reference, folder: folder)
        parameters.maskedImagePosteriorNoise = try reference.tensor("masked_posterior_noise")
        try Self.run(pipeline, parameters, reference: reference, label: "9-channel UNet")
    }

    func testStableDiffusion15InpaintingBlending() throws {
        let folder = try StableDiffusionLarge.folder()
        let reference = try StableDiffusionLarge.reference("diffusers-inpaint.safetensors", in: folder, option: "--inpaint-large")
        let pipeline = try StableDiffusionPipeline.load(folder: folder)
        var parameters = try Self.parameters(reference, folder: folder)
        parameters.scheduler = .dpmSolverMultistep
        parameters.posteriorNoise = try reference.tensor("posterior_noise")
        parameters.maskedImagePosteriorNoise = try reference.tensor("masked_posterior_noise")
        try Self.run(pipeline, parameters, reference: reference, label: "blending")
    }

    /// The prompt, steps, init image and mask of FOLDER at strength 1, with the reference's noise.
    private static func parameters(_ reference: StableDiffusionLarge.Reference, folder: URL) throws -> StableDiffusionParameters {
        var parameters = StableDiffusionParameters(prompt: try reference.text("prompt"))
        parameters.steps = try reference.integer("steps")
        parameters.strength = 1
        parameters.initImage = try StableDiffusionImageProcessor.preprocess(
            try ImageFile.read(folder.appendingPathComponent("inpaint-init.png").path))
        parameters.mask = try StableDiffusionImageProcessor.preprocessMask(
            try ImageFile.read(folder.appendingPathComponent("inpaint-mask.png").path))
        parameters.noise = try reference.tensor("noise")
        return parameters
    }

    /// Generates, prints the errors and the times, and checks the bounds.
    private static func run(_ pipeline: StableDiffusionPipeline, _ parameters: StableDiffusionParameters,
                            reference: StableDiffusionLarge.Reference, label: String) throws {
        var generator = RandomGenerator(seed: 0)
        let start = Date()
        let output = try pipeline.generate(parameters, generator: &generator)
        let seconds = Date().timeIntervalSince(start)
        let comparison = try StableDiffusionLarge.Comparison(latents: output.latents, images: output.images, reference: reference)
        let image = try XCTUnwrap(parameters.initImage)
        print(String(format: "StableDiffusion large sd15 inpainting (%@): %dx%d, %d timesteps: %@; generate %.1f s", label,
                     image.shape[3], image.shape[2], output.timesteps.count, comparison.summary, seconds))
        print("diffusers: " + reference.timing)
        comparison.check()
    }
}
