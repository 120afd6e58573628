import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// Stable Diffusion text-to-image and image-to-image against diffusers on the tiny random
/// pipeline of Scripts/make-sd-pipeline-goldens (Tests/Fixtures/sd-pipeline): the same token ids,
/// prompt embeddings, every step's latents and the final images, from the same given latents and noise.
final class StableDiffusionParityTests: XCTestCase {
    static let fixtures = UNetParityTests.fixtures.deletingLastPathComponent().appendingPathComponent("sd-pipeline")
    static let tiny = fixtures.appendingPathComponent("tiny")

    nonisolated(unsafe) private static var loaded: [String: StableDiffusionPipeline] = [:]

    static func pipeline(variant: String? = nil) throws -> StableDiffusionPipeline {
        if let pipeline = loaded[variant ?? ""] { return pipeline }
        let pipeline = try StableDiffusionPipeline.load(folder: tiny, variant: variant)
        loaded[variant ?? ""] = pipeline
        return pipeline
    }

    static func relativeError(_ ours: Tensor, _ reference: Tensor) -> Float {
        XCTAssertEqual(ours.shape, reference.shape)
        return UNetParityTests.relativeError(ours.contiguous(), reference)
    }

    /// The parameters a golden was made with.
    static func parameters(_ golden: GoldenCase) throws -> StableDiffusionParameters {
        let prompts = try JSONSerialization.jsonObject(with: Data(try golden.string("prompt").utf8)) as! [String]
        var parameters = StableDiffusionParameters(prompts: prompts)
        switch try JSONSerialization.jsonObject(with: Data(try golden.string("negative_prompt").utf8), options: .fragmentsAllowed) {
        case let text as String: parameters.negativePrompts = [text]
        case let list as [String]: parameters.negativePrompts = list
        default: parameters.negativePrompts = nil
        }
        parameters.scheduler = SchedulerKind(rawValue: try golden.string("scheduler"))
        parameters.steps = try golden.int("steps")
        parameters.guidanceScale = Double(try golden.float("guidance_scale"))
        parameters.guidanceRescale = Double(try golden.float("guidance_rescale"))
        parameters.clipSkip = Int(try golden.string("clip_skip"))
        parameters.imagesPerPrompt = try golden.int("count")
        parameters.height = try golden.int("height")
        parameters.width = try golden.int("width")
        parameters.karrasSigmas = (try? golden.string("karras")) == "true"
        return parameters
    }

    struct Errors {
        var embeddings: Float = 0
        var steps: [Float] = []
        var image: Float = 0
    }

    /// Runs a golden case and compares everything it recorded.
    @discardableResult
    static func check(_ name: String, variant: String? = nil, file: StaticString = #filePath, line: UInt = #line) throws -> Errors {
        let golden = try SafetensorsFixture.load(name, subdirectory: "sd-pipeline")
        let pipeline = try pipeline(variant: variant)
        var parameters = try parameters(golden)
        if golden.tensors["latents"] != nil {
            parameters.latents = try golden.tensor("latents")
        } else {
            let picture = try ImageFile.read(fixtures.appendingPathComponent("init.png").path)
            let image = try StableDiffusionImageProcessor.preprocess(picture, scaleFactor: pipeline.vaeScaleFactor)
            if let expected = golden.tensors["init_image"] {
                XCTAssertEqual(relativeError(image, expected), 0, "\(name): preprocessed init image", file: file, line: line)
            }
            parameters.initImage = image
            parameters.strength = Double(try golden.float("strength"))
            parameters.posteriorNoise = try golden.tensor("posterior_noise")
            parameters.noise = try golden.tensor("noise")
        }
        var steps: [Tensor] = []
        var generator = RandomGenerator(seed: 0)
        let output = try pipeline.generate(parameters, generator: &generator) { steps.append($0.latents) }

        var errors = Errors()
        let ids = try golden.tensor("prompt_ids").toArray().map { Int($0) }
        XCTAssertEqual(output.embeddings.promptIDs.flatMap { $0 }, ids, "\(name): prompt ids", file: file, line: line)
        errors.embeddings = relativeError(output.embeddings.prompt, try golden.tensor("prompt_embeds"))
        if let negative = golden.tensors["negative_embeds"] {
            let negativeIDs = try golden.tensor("negative_ids").toArray().map { Int($0) }
            XCTAssertEqual(output.embeddings.negativeIDs.flatMap { $0 }, negativeIDs, "\(name): negative ids", file: file, line: line)
            let ours = try XCTUnwrap(output.embeddings.negative, "\(name): no negative embeddings", file: file, line: line)
            errors.embeddings = max(errors.embeddings, relativeError(ours, negative))
        } else {
            XCTAssertNil(output.embeddings.negative, "\(name): guidance ran", file: file, line: line)
        }
        XCTAssertEqual(output.timesteps, try golden.tensor("timesteps").toArray(), "\(name): timesteps", file: file, line: line)
        let expectedSteps = try golden.tensor("step_latents")
        XCTAssertEqual(steps.count, expectedSteps.shape[0], "\(name): step count", file: file, line: line)
        for (index, ours) in steps.enumerated() where index < expectedSteps.shape[0] {
            let expected = expectedSteps.narrowed(axis: 0, start: index, length: 1).contiguous().reshaped(Array(expectedSteps.shape.dropFirst()))
            errors.steps.append(relativeError(ours, expected))
        }
        errors.image = relativeError(output.images, try golden.tensor("image"))
        print(String(format: "StableDiffusion %@: embeddings %.2e, step latents %@, image %.2e", name, errors.embeddings,
                     errors.steps.map { String(format: "%.2e", $0) }.joined(separator: " "), errors.image))
        XCTAssertLessThan(errors.embeddings, 1e-5, "\(name): embeddings", file: file, line: line)
        XCTAssertLessThan(errors.steps.max() ?? 0, 1e-4, "\(name): step latents", file: file, line: line)
        XCTAssertLessThan(errors.image, 1e-4, "\(name): image", file: file, line: line)
        return errors
    }

    func testTextToImagePNDMWithGuidance() throws { try Self.check("pndm-cfg") }

    func testTextToImageWithoutGuidance() throws { try Self.check("pndm-no-cfg") }

    func testTextToImageDDIMNegativePromptTwoImagesPerPrompt() throws { try Self.check("ddim-negative-count") }

    func testTextToImageEulerGuidanceRescale() throws { try Self.check("euler-rescale") }

    func testTextToImageEulerClipSkipTwoPrompts() throws { try Self.check("euler-clip-skip") }

    func testTextToImageDPMSolver() throws { try Self.check("dpm-cfg") }

    func testLongPromptIsTruncatedWithAWarning() throws {
        try Self.check("ddim-long-prompt")
        let pipeline = try Self.pipeline()
        let prompt = Array(repeating: "a very detailed picture of a small house by the lake at sunset", count: 8).joined(separator: ", ")
        let embeddings = try pipeline.encodePrompt([prompt], classifierFreeGuidance: false)
        XCTAssertEqual(embeddings.warnings.count, 1)
        // diffusers: "... up to 77 tokens: ['house by the lake at sunset , a very detailed picture ...']"
        XCTAssert(embeddings.warnings.first?.hasSuffix("77 tokens: house by the lake at sunset , a very detailed picture of a small "
                                                       + "house by the lake at sunset , a very detailed picture of a small house by the "
                                                       + "lake at sunset , a very detailed picture of a small house by the lake at sunset "
                                                       + ", a very detailed picture of a small house by the lake at sunset") ?? false,
                  embeddings.warnings.first ?? "no warning")
    }

    func testImageToImagePNDM() throws { try Self.check("img2img-pndm") }

    func testImageToImageEulerNegativePrompt() throws { try Self.check("img2img-euler") }

    func testImageToImageDDIMWithoutGuidance() throws { try Self.check("img2img-ddim-no-cfg") }

    func testFP16VariantWeights() throws { try Self.check("fp16-variant", variant: "fp16") }

    /// Euler ancestral with its step noise given (as the large text-to-image parity gives diffusers' draws): the generator
    /// no longer matters, and a noise count that differs from the timesteps is an error before any step.
    func testGivenStepNoiseDrivesEulerAncestral() throws {
        let pipeline = try Self.pipeline()
        var parameters = StableDiffusionParameters(prompt: "a red fox in the snow")
        parameters.scheduler = .eulerAncestral
        parameters.steps = 3
        parameters.height = 48
        parameters.width = 32
        var draws = RandomGenerator(seed: 7)
        parameters.latents = Tensor.randn([1, 4, 6, 4], generator: &draws)
        parameters.stepNoise = (0..<3).map { _ in Tensor.randn([1, 4, 6, 4], generator: &draws) }
        var first = RandomGenerator(seed: 1), second = RandomGenerator(seed: 2)
        let a = try pipeline.generate(parameters, generator: &first).latents.toArray()
        let b = try pipeline.generate(parameters, generator: &second).latents.toArray()
        XCTAssertEqual(a, b)
        parameters.stepNoise = nil
        var third = RandomGenerator(seed: 1)
        let drawn = try pipeline.generate(parameters, generator: &third).latents.toArray()
        XCTAssertNotEqual(drawn, a)
        parameters.stepNoise = [Tensor.randn([1, 4, 6, 4], generator: &draws)]
        do {
            _ = try pipeline.generate(parameters, generator: &third)
            XCTFail("one step noise tensor for three timesteps was accepted")
        } catch {
            XCTAssert("\(error)".contains("1 step noise tensors given; this request runs 3 timesteps"), "\(error)")
        }
    }

    /// An init image whose sides are not multiples of 8 is resized as Pillow's Lanczos does, byte for byte.
    func testInitImageResizeMatchesPillowLanczos() throws {
        let golden = try SafetensorsFixture.load("lanczos", subdirectory: "sd-pipeline")
        let picture = try ImageFile.read(Self.fixtures.appendingPathComponent("init-odd.png").path)
        let image = try StableDiffusionImageProcessor.preprocess(picture, scaleFactor: 8)
        XCTAssertEqual(image.shape, [1, 3, 48, 32])
        let expected = try golden.tensor("image")
        let difference = zip(image.toArray(), expected.toArray()).map { abs($0 - $1) }.max() ?? 0
        print(String(format: "StableDiffusion Lanczos resize 37×54 → 32×48: max difference %.2e (1/255 = 7.8e-3 per level)", difference))
        XCTAssertEqual(difference, 0)
    }
}
