import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// Inpainting against diffusers' `StableDiffusionInpaintPipeline` (Scripts/make-sd-pipeline-goldens --inpaint):
/// the 9-channel inpainting UNet of Tests/Fixtures/sd-pipeline/tiny-inpaint-unet with the tiny pipeline's
/// other parts, and mask blending with the tiny pipeline's own 4-channel UNet; init.png and mask.png
/// (an RGB mask with a grey ramp across the binarization threshold), the posterior and noise draws given.
final class StableDiffusionInpaintingTests: XCTestCase {
    nonisolated(unsafe) private static var inpaintingPipeline: StableDiffusionPipeline?

    static func pipeline(inChannels: Int) throws -> StableDiffusionPipeline {
        let base = try StableDiffusionParityTests.pipeline()
        if inChannels == base.unet.configuration.inChannels { return base }
        if let pipeline = inpaintingPipeline { return pipeline }
        let unet = try UNet2DConditionModel.load(folder: StableDiffusionParityTests.fixtures.appendingPathComponent("tiny-inpaint-unet"))
        let pipeline = try StableDiffusionPipeline(textEncoder: base.textEncoder, tokenizer: base.tokenizer, unet: unet, vae: base.vae,
                                                   scheduler: base.scheduler)
        inpaintingPipeline = pipeline
        return pipeline
    }

    static func mask() throws -> Tensor {
        let picture = try ImageFile.read(StableDiffusionParityTests.fixtures.appendingPathComponent("mask.png").path)
        return try StableDiffusionImageProcessor.preprocessMask(picture, scaleFactor: 8)
    }

    static func initImage() throws -> Tensor {
        let picture = try ImageFile.read(StableDiffusionParityTests.fixtures.appendingPathComponent("init.png").path)
        return try StableDiffusionImageProcessor.preprocess(picture, scaleFactor: 8)
    }

    @discardableResult
    static func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> StableDiffusionOutput {
        let golden = try SafetensorsFixture.load(name, subdirectory: "sd-pipeline")
        let pipeline = try pipeline(inChannels: try golden.int("unet_in_channels"))
        var parameters = try StableDiffusionParityTests.parameters(golden)
        parameters.height = nil
        parameters.width = nil
        parameters.initImage = try initImage()
        parameters.mask = try mask()
        parameters.strength = Double(try golden.float("strength"))
        parameters.posteriorNoise = golden.tensors["posterior_noise"]
        parameters.noise = try golden.tensor("noise")
        parameters.maskedImagePosteriorNoise = try golden.tensor("masked_posterior_noise")
        XCTAssertEqual(parameters.mask!.toArray(), try golden.tensor("mask_condition").toArray(), "\(name): binarized mask",
                       file: file, line: line)
        var steps: [Tensor] = []
        var generator = RandomGenerator(seed: 0)
        let output = try pipeline.generate(parameters, generator: &generator) { steps.append($0.latents) }
        XCTAssertEqual(output.timesteps, try golden.tensor("timesteps").toArray(), "\(name): timesteps", file: file, line: line)
        let expectedSteps = try golden.tensor("step_latents")
        XCTAssertEqual(steps.count, expectedSteps.shape[0], "\(name): step count", file: file, line: line)
        var stepErrors: [Float] = []
        for (index, ours) in steps.enumerated() where index < expectedSteps.shape[0] {
            let expected = expectedSteps.narrowed(axis: 0, start: index, length: 1).contiguous().reshaped(Array(expectedSteps.shape.dropFirst()))
            stepErrors.append(StableDiffusionParityTests.relativeError(ours, expected))
        }
        let expectedImage = try golden.tensor("image")
        let imageError = StableDiffusionParityTests.relativeError(output.images, expectedImage)
        let ours = StableDiffusionImageProcessor.pixelImages(output.images).flatMap(\.samples)
        let theirs = StableDiffusionImageProcessor.pixelImages(expectedImage).flatMap(\.samples)
        let levels = zip(ours, theirs).map { abs(Int($0) - Int($1)) }.max() ?? 0
        print(String(format: "StableDiffusion inpainting %@ (UNet in_channels %d): step latents %@, final latents %.2e, image %.2e, "
                     + "8-bit image: largest difference %d levels", name, pipeline.unet.configuration.inChannels,
                     stepErrors.map { String(format: "%.2e", $0) }.joined(separator: " "), stepErrors.last ?? 0, imageError, levels))
        XCTAssertLessThan(stepErrors.max() ?? 1, 1e-4, "\(name): step latents", file: file, line: line)
        XCTAssertLessThan(stepErrors.last ?? 1, 1e-3, "\(name): final latents", file: file, line: line)
        XCTAssertLessThan(imageError, 1e-4, "\(name): image", file: file, line: line)
        XCTAssertLessThanOrEqual(levels, 2, "\(name): 8-bit image", file: file, line: line)
        return output
    }

    func testInpaintingUNetPNDMWithGuidance() throws { try Self.check("inpaint-pndm") }

    func testInpaintingUNetDDIMStrengthTwoImagesNegativePrompt() throws { try Self.check("inpaint-ddim-strength-count") }

    func testBlendingEuler() throws { try Self.check("inpaint-blend-euler") }

    func testBlendingDPMSolverStrength() throws { try Self.check("inpaint-blend-dpm-strength") }

    func testBlendingDDIMWithoutGuidance() throws { try Self.check("inpaint-blend-ddim-no-cfg") }

    /// The mask resized to the latents as diffusers' nearest `F.interpolate` does (recorded from its callback).
    func testMaskLatentsAndMaskedImageLatents() throws {
        let golden = try SafetensorsFixture.load("inpaint-pndm", subdirectory: "sd-pipeline")
        let expected = try golden.tensor("mask_latents")
        let mask = try Self.mask()
        let ours = StableDiffusionImageProcessor.latentMask(mask, scaleFactor: 8)
        XCTAssertEqual(ours.shape, expected.shape)
        XCTAssertEqual(ours.toArray(), expected.toArray())
        XCTAssert(ours.toArray().contains(0) && ours.toArray().contains(1))
    }

    func testMaskOfAnotherSizeIsRefusedBeforeWork() throws {
        let pipeline = try Self.pipeline(inChannels: 9)
        var parameters = StableDiffusionParameters(prompt: "a bench")
        parameters.initImage = try Self.initImage()
        parameters.mask = Tensor.zeros([1, 1, 40, 32])
        var generator = RandomGenerator(seed: 0)
        XCTAssertThrowsError(try pipeline.generate(parameters, generator: &generator)) { error in
            XCTAssertEqual("\(error)", "the mask is 32×40 but the init image is 32×48; they must be the same size")
        }
    }

    func testInpaintingUNetNeedsAnImageAndAMask() throws {
        let pipeline = try Self.pipeline(inChannels: 9)
        var generator = RandomGenerator(seed: 0)
        XCTAssertThrowsError(try pipeline.generate(StableDiffusionParameters(prompt: "a bench"), generator: &generator)) { error in
            XCTAssert("\(error)".contains("inpainting UNet"), "\(error)")
        }
        var parameters = StableDiffusionParameters(prompt: "a bench")
        parameters.initImage = try Self.initImage()
        XCTAssertThrowsError(try pipeline.generate(parameters, generator: &generator)) { error in
            XCTAssert("\(error)".contains("needs an init image and a mask"), "\(error)")
        }
    }

    /// Drawn noise (no given draws) runs and keeps the unmasked area near the init image with a blending UNet.
    func testSeededInpaintingRuns() throws {
        let pipeline = try Self.pipeline(inChannels: 4)
        var parameters = StableDiffusionParameters(prompt: "a bench")
        parameters.initImage = try Self.initImage()
        parameters.mask = try Self.mask()
        parameters.strength = 1
        parameters.steps = 2
        var generator = RandomGenerator(seed: 3)
        let output = try pipeline.generate(parameters, generator: &generator)
        XCTAssertEqual(output.images.shape, [1, 3, 48, 32])
        XCTAssertFalse(output.images.toArray().contains { $0.isNaN })
    }
}
