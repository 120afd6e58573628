import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// CLIP guidance of Stable Diffusion in latent space against diffusers' community `CLIPGuidedStableDiffusion`
/// loop and `cond_fn` (Scripts/make-sd-clip-guidance-goldens, without cut-outs) on the tiny random pipeline
/// with a tiny random CLIPModel (Tests/Fixtures/sd-clip-guidance): every step's latents, the final latents,
/// one step's gradient; and that a scale of 0 is the unguided pipeline.
final class StableDiffusionCLIPGuidanceTests: XCTestCase {
    static let fixtures = UNetParityTests.fixtures.deletingLastPathComponent().appendingPathComponent("sd-clip-guidance")

    nonisolated(unsafe) private static var clip: CLIPModel?

    static func clipModel() throws -> CLIPModel {
        if let clip { return clip }
        let model = try CLIPModel.load(folder: fixtures.appendingPathComponent("clip"))
        clip = model
        return model
    }

    static func parameters(_ golden: GoldenCase) throws -> StableDiffusionParameters {
        var parameters = StableDiffusionParameters(prompt: try golden.string("prompt"))
        parameters.scheduler = SchedulerKind(rawValue: try golden.string("scheduler"))
        parameters.steps = try golden.int("steps")
        parameters.guidanceScale = Double(try golden.float("guidance_scale"))
        parameters.imagesPerPrompt = try golden.int("images_per_prompt")
        parameters.height = try golden.int("height")
        parameters.width = try golden.int("width")
        parameters.latents = try golden.tensor("latents")
        return parameters
    }

    static func guidance(_ golden: GoldenCase, useCutouts: Bool = false, seed: UInt64 = 0) throws -> StableDiffusionCLIPGuidance {
        StableDiffusionCLIPGuidance(model: try clipModel(), scale: try golden.float("clip_guidance_scale"), cutouts: 2,
                                    useCutouts: useCutouts, seed: seed)
    }

    /// Runs a golden case; returns the worst relative error of the steps' latents and the final latents' error.
    @discardableResult
    func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> (steps: Float, final: Float) {
        let golden = try SafetensorsFixture.load(name, subdirectory: "sd-clip-guidance")
        let pipeline = try StableDiffusionParityTests.pipeline()
        var parameters = try Self.parameters(golden)
        parameters.clipGuidance = try Self.guidance(golden)
        var steps: [Tensor] = []
        var generator = RandomGenerator(seed: 0)
        let output = try pipeline.generate(parameters, generator: &generator) { steps.append($0.latents) }
        let expected = try golden.tensor("step_latents")
        XCTAssertEqual(steps.count, expected.shape[0], file: file, line: line)
        var worst: Float = 0
        for (index, step) in steps.enumerated() {
            let error = StableDiffusionParityTests.relativeError(step, expected.narrowed(axis: 0, start: index, length: 1).reshaped(step.shape).contiguous())
            worst = max(worst, error)
        }
        let final = StableDiffusionParityTests.relativeError(output.latents, try golden.tensor("final_latents"))
        print(String(format: "CLIP-guided %@: steps' latents %.2e, final latents %.2e relative", name, worst, final))
        XCTAssertLessThan(worst, 1e-3, "\(name) steps' latents", file: file, line: line)
        XCTAssertLessThan(final, 1e-3, "\(name) final latents", file: file, line: line)
        return (worst, final)
    }

    func testDDIMWithClassifierFreeGuidance() throws { try check("ddim-cfg") }

    func testPNDMTwoImagesWithoutClassifierFreeGuidance() throws { try check("pndm-no-cfg") }

    func testLMSMovesTheLatents() throws { try check("lms-cfg") }

    /// Step 0 of ddim-cfg from the golden's inputs: −∂loss/∂latents and the guided noise prediction.
    func testGradientOfOneStep() throws {
        let golden = try SafetensorsFixture.load("ddim-cfg", subdirectory: "sd-clip-guidance")
        let pipeline = try StableDiffusionParityTests.pipeline()
        let parameters = try Self.parameters(golden)
        let scheduler = try pipeline.makeScheduler(parameters.scheduler)
        try scheduler.setTimesteps(parameters.steps)
        let timestep = scheduler.timesteps[0]
        let latents = try golden.tensor("latents") * scheduler.initNoiseSigma
        let embeddings = try pipeline.encodePrompt(parameters.prompts, classifierFreeGuidance: false)
        let guidance = try Self.guidance(golden)
        let text = guidance.textEmbeddings(ids: embeddings.promptIDs, imagesPerPrompt: 1)
        XCTAssertLessThan(StableDiffusionParityTests.relativeError(text, try golden.tensor("text_embeds_clip")), 1e-5)
        let step = try guidance.guide(latents: latents, timestep: timestep, index: 0, noisePrediction: try golden.tensor("noise_pred_original0"),
                                      textEmbeddings: text, scheduler: scheduler, vae: pipeline.vae) { leaf in
            pipeline.unet(scheduler.scaleModelInput(leaf, timestep: timestep), timestep: timestep, encoderHiddenStates: embeddings.prompt)
        }
        let gradient = StableDiffusionParityTests.relativeError(step.gradient, try golden.tensor("grads0"))
        let prediction = StableDiffusionParityTests.relativeError(step.noisePrediction, try golden.tensor("noise_pred0"))
        print(String(format: "CLIP guidance step 0: gradient %.2e, guided noise prediction %.2e relative", gradient, prediction))
        XCTAssertLessThan(gradient, 1e-3)
        XCTAssertLessThan(prediction, 1e-3)
        XCTAssertGreaterThan(try golden.tensor("grads0").abs().max().toArray()[0], 0.1, "the golden's gradient is not negligible")
    }

    /// Scale 0 is the unguided pipeline exactly (and diffusers' unguided loop); guidance changes the result.
    func testScaleZeroIsUnguided() throws {
        let pipeline = try StableDiffusionParityTests.pipeline()
        let unguidedGolden = try SafetensorsFixture.load("ddim-unguided", subdirectory: "sd-clip-guidance")
        let parameters = try Self.parameters(unguidedGolden)
        var generator = RandomGenerator(seed: 0)
        let plain = try pipeline.generate(parameters, generator: &generator).latents
        var zero = parameters
        zero.clipGuidance = StableDiffusionCLIPGuidance(model: try Self.clipModel(), scale: 0, useCutouts: false)
        generator = RandomGenerator(seed: 0)
        let zeroed = try pipeline.generate(zero, generator: &generator).latents
        XCTAssertEqual(zeroed.toArray(), plain.toArray())
        XCTAssertLessThan(StableDiffusionParityTests.relativeError(plain, try unguidedGolden.tensor("final_latents")), 1e-4)
        let guided = try SafetensorsFixture.load("ddim-cfg", subdirectory: "sd-clip-guidance").tensor("final_latents")
        XCTAssertGreaterThan(StableDiffusionParityTests.relativeError(plain, guided), 0.05, "CLIP guidance changes the latents")
    }

    /// Cut-outs: random, so only shapes, finiteness and reproducibility by seed.
    func testCutoutsAreReproducibleBySeed() throws {
        let golden = try SafetensorsFixture.load("ddim-cfg", subdirectory: "sd-clip-guidance")
        let pipeline = try StableDiffusionParityTests.pipeline()
        var parameters = try Self.parameters(golden)
        parameters.steps = 2
        func run(seed: UInt64) throws -> [Float] {
            parameters.clipGuidance = try Self.guidance(golden, useCutouts: true, seed: seed)
            var generator = RandomGenerator(seed: 0)
            return try pipeline.generate(parameters, generator: &generator).latents.toArray()
        }
        let first = try run(seed: 1)
        XCTAssertEqual(first.count, 4 * 4 * 4)
        XCTAssertTrue(first.allSatisfy(\.isFinite))
        XCTAssertEqual(try run(seed: 1), first)
        XCTAssertNotEqual(try run(seed: 2), first)
    }

    /// A request's options become the parameters' guidance; bad options fail before any model is loaded.
    func testRequestOptions() throws {
        let pipeline = try StableDiffusionParityTests.pipeline()
        var request = StableDiffusionRequest(pipeline: StableDiffusionParityTests.tiny.path, prompt: "a red fox")
        var options = StableDiffusionCLIPGuidanceOptions(model: Self.fixtures.appendingPathComponent("clip").path, scale: 250)
        options.cutouts = 3
        options.useCutouts = false
        options.throughUNet = false
        request.clipGuidance = options
        let guidance = try XCTUnwrap(try StableDiffusionRun.parameters(for: request, pipeline: pipeline).clipGuidance)
        XCTAssertEqual(guidance.scale, 250)
        XCTAssertEqual(guidance.cutouts, 3)
        XCTAssertFalse(guidance.useCutouts)
        XCTAssertFalse(guidance.throughUNet)
        request.clipGuidance?.cutouts = 0
        XCTAssertThrowsError(try StableDiffusionRun.parameters(for: request, pipeline: pipeline))
        request.clipGuidance = StableDiffusionCLIPGuidanceOptions(model: "/nonexistent-clip", scale: 10)
        XCTAssertThrowsError(try StableDiffusionRun.parameters(for: request, pipeline: pipeline))
    }

    /// Without the second UNet pass the gradient differs from the community's but still guides (finite, changed latents).
    func testShortcutWithoutUNetGradient() throws {
        let golden = try SafetensorsFixture.load("ddim-cfg", subdirectory: "sd-clip-guidance")
        let pipeline = try StableDiffusionParityTests.pipeline()
        var parameters = try Self.parameters(golden)
        let guidance = try Self.guidance(golden)
        guidance.throughUNet = false
        parameters.clipGuidance = guidance
        var generator = RandomGenerator(seed: 0)
        let latents = try pipeline.generate(parameters, generator: &generator).latents
        XCTAssertTrue(latents.toArray().allSatisfy(\.isFinite))
        let full = try golden.tensor("final_latents")
        let unguided = try SafetensorsFixture.load("ddim-unguided", subdirectory: "sd-clip-guidance").tensor("final_latents")
        XCTAssertGreaterThan(StableDiffusionParityTests.relativeError(latents, full), 1e-4)
        XCTAssertGreaterThan(StableDiffusionParityTests.relativeError(latents, unguided), 1e-3)
    }

    /// The antialiased resize against `F.interpolate(mode="bilinear", align_corners=False, antialias=True)`,
    /// shrinking 5×6 → 3×4 and growing to 7×9 (values printed by PyTorch).
    func testResizeMatchesPyTorch() {
        let image = Tensor((0..<30).map { Float($0) }, shape: [1, 1, 5, 6])
        let shrunk: [Float] = [2.9464285373687744, 4.349206447601318, 5.793650150299072, 7.196428298950195, 12.375, 13.777779579162598,
                               15.222221374511719, 16.625, 21.803569793701172, 23.206348419189453, 24.65079116821289, 26.053569793701172]
        let grown: [Float] = [0.0, 0.5, 1.1666667461395264, 1.8333334922790527, 2.5, 3.1666667461395264, 3.8333334922790527, 4.5, 5.0,
                              3.4285712242126465, 3.9285712242126465, 4.595238208770752]
        for (ours, theirs) in zip(StableDiffusionCLIPGuidanceResize.resized(image, height: 3, width: 4).toArray(), shrunk) {
            XCTAssertEqual(ours, theirs, accuracy: 1e-4)
        }
        for (ours, theirs) in zip(StableDiffusionCLIPGuidanceResize.resized(image, height: 7, width: 9).toArray().prefix(12), grown) {
            XCTAssertEqual(ours, theirs, accuracy: 1e-4)
        }
        XCTAssertEqual(StableDiffusionCLIPGuidanceResize.shorterSide(image, to: 5).shape, [1, 1, 5, 6])
        XCTAssertEqual(StableDiffusionCLIPGuidanceResize.shorterSide(image, to: 10).shape, [1, 1, 10, 12])
    }
}
