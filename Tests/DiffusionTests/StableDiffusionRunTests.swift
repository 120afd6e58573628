import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// `diffuse generate`'s library side on the tiny pipeline: the PNG `parameters` text chunk, the trace
/// strip and per-step previews, Karras sigmas, inpainting from files, and the bad inputs refused before
/// any work.
final class StableDiffusionRunTests: XCTestCase {
    static let fixtures = StableDiffusionParityTests.fixtures

    func request(_ prompt: String = "a red bench in a park") -> StableDiffusionRequest {
        var request = StableDiffusionRequest(pipeline: StableDiffusionParityTests.tiny.path, prompt: prompt)
        request.steps = 2
        request.width = 32
        request.height = 48
        request.seed = 7
        return request
    }

    // MARK: PNG text chunks

    /// Pillow reads both kinds back: checked once (2026-12-06, Pillow 13.0.0) on PNGs `diffuse generate` wrote from the
    /// tiny pipeline: `PIL.Image.open(path).text` gave {'parameters': 'a café, ключ ✓\nNegative prompt: blurry\nSteps: 3,
    /// Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 3, Size: 32x48, Model: tiny'} (an iTXt chunk:
    /// not Latin-1) and {'parameters': 'a red bench\nSteps: 4, Sampler: Euler, ..., Denoising strength: 1, Batch size: 2,
    /// Batch pos: 0'} (tEXt), the images 32×48 RGB.
    func testPNGTextChunksRoundTrip() throws {
        let picture = PixelImage(width: 3, height: 2, channels: 3, samples: (0..<18).map { UInt8($0 * 10) })
        let entries = [(key: "parameters", value: "a café\nSteps: 20"), (key: "note", value: "ключ ✓")]
        let bytes = try PNG.encode(picture, text: entries)
        XCTAssertEqual(try PNG.decode(bytes), picture)
        let read = PNG.textChunks(bytes)
        XCTAssertEqual(read.map(\.key), ["parameters", "note"])
        XCTAssertEqual(read.map(\.value), ["a café\nSteps: 20", "ключ ✓"])
        // The Latin-1 value as tEXt (é as one byte 0xE9), the other as iTXt.
        XCTAssertNotNil(bytes.firstRange(of: Array("tEXtparameters\0a caf".utf8) + [0xE9]))
        XCTAssertNotNil(bytes.firstRange(of: Array("iTXtnote".utf8)))
        XCTAssertThrowsError(try PNG.encode(picture, text: [(key: "", value: "x")]))
        XCTAssertTrue(PNG.textChunks(try PNG.encode(picture)).isEmpty)
    }

    func testInfotextIsTheWebUIForm() {
        var infotext = StableDiffusionInfotext(prompt: "a photo of an astronaut, riding a horse", negativePrompt: "blurry", steps: 20,
                                               sampler: StableDiffusionInfotext.samplerName(className: "DPMSolverMultistepScheduler"),
                                               guidanceScale: 7.5, seed: 1, width: 512, height: 512, model: "sd15")
        infotext.karras = true
        XCTAssertEqual(infotext.text, "a photo of an astronaut, riding a horse\nNegative prompt: blurry\n"
                       + "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: sd15")
        infotext.negativePrompt = ""
        infotext.karras = false
        infotext.guidanceScale = 7
        infotext.strength = 0.6
        infotext.clipSkip = 1
        infotext.model = "my, model"
        XCTAssertEqual(infotext.text, "a photo of an astronaut, riding a horse\n"
                       + "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 512x512, Model: \"my, model\", "
                       + "Denoising strength: 0.6, Clip skip: 2")
        XCTAssertEqual(StableDiffusionInfotext.samplerName(className: "EulerAncestralDiscreteScheduler"), "Euler a")
        XCTAssertEqual(StableDiffusionInfotext.samplerName(className: "PNDMScheduler"), "PLMS")
    }

    func testInfotextNamesTheLoRAsAndCLIPGuidanceOfARequest() {
        var request = StableDiffusionRequest(pipeline: "/models/sd15", prompt: "a cat")
        request.loras = [LoRARequest(path: "/loras/style.safetensors", scale: 0.8), LoRARequest(path: "detail.safetensors")]
        var clip = StableDiffusionCLIPGuidanceOptions(model: "/clip/clip-vit-base-patch32/", scale: 100)
        clip.cutouts = 2
        request.clipGuidance = clip
        let text = StableDiffusionRun.infotext(for: request, schedulerName: "DDIMScheduler", width: 64, height: 64).text
        XCTAssertTrue(text.hasSuffix(", Model: sd15, LoRA: \"style.safetensors:0.8, detail.safetensors:1\", "
                                     + "CLIP guidance: \"scale 100, 2 cut-outs, model clip-vit-base-patch32\""), text)
        request.loras = []
        request.clipGuidance = nil
        XCTAssertFalse(StableDiffusionRun.infotext(for: request, schedulerName: "DDIMScheduler", width: 64, height: 64).text.contains("LoRA"))
    }

    // MARK: Runs

    func testRunWritesParametersTraceAndPreviews() throws {
        let folder = try temporaryFolderURL("sd-run")
        var request = request()
        request.negativePrompt = "blurry"
        request.scheduler = "euler"
        request.karras = true
        request.steps = 3
        request.trace = true
        request.traceEvery = 2
        request.output = folder.appendingPathComponent("bench.png").path
        var previews: [Tensor] = []
        let outcome = try StableDiffusionRun.run(request) { step in previews.append(try XCTUnwrap(step.preview)) }
        XCTAssertEqual(outcome.paths, [request.output])
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: request.output)))
        let text = try XCTUnwrap(PNG.textChunks(bytes).first { $0.key == "parameters" }?.value)
        XCTAssertEqual(text, "a red bench in a park\nNegative prompt: blurry\nSteps: 3, Sampler: Euler, Schedule type: Karras, "
                       + "CFG scale: 7.5, Seed: 7, Size: 32x48, Model: tiny")
        // Previews of x0 at the latents' size (linear map), one per step.
        XCTAssertEqual(previews.count, 3)
        XCTAssertEqual(previews[0].shape, [1, 3, 6, 4])
        XCTAssert(previews.allSatisfy { $0.toArray().allSatisfy { (0...1).contains($0) } })
        // The trace: steps 0, 2 (the last) as columns; rows x_t and x0; 4×6 tiles with 2 pixels of padding.
        let tracePath = try XCTUnwrap(outcome.tracePath)
        XCTAssertEqual(tracePath, folder.appendingPathComponent("bench-trace.png").path)
        let strip = try ImageFile.read(tracePath)
        XCTAssertEqual(strip.width, 2 * (4 + 2) + 2)
        XCTAssertEqual(strip.height, 2 * (6 + 2) + 2)
    }

    /// The linear preview is the latent-to-RGB factor map: one latent pixel per preview pixel.
    func testLinearPreviewFactors() {
        let latents = Tensor([1, 0, 0, 0, 0, 0, 0, 1], shape: [1, 4, 1, 2])
        let preview = StableDiffusionPreview.linear.images(latents).toArray()
        // Pixel 0: channel 0 = 1 → (0.3512, 0.2297, 0.3227); pixel 1: channel 3 = 1 → (−0.2120, −0.2616, −0.7177); then (x + 1) / 2.
        let expected: [Float] = [0.6756, 0.394, 0.61485, 0.3692, 0.66135, 0.14115]
        for (ours, theirs) in zip(preview, expected) { XCTAssertEqual(ours, theirs, accuracy: 1e-6) }
    }

    /// With a TAESD folder the previews are its decode of the predicted x0, `(decode(x0) / 2 + 0.5)` clamped
    /// (the small AutoencoderTiny of Tests/Fixtures/vae/folder-tiny, random weights).
    func testTAESDPreviews() throws {
        let folder = try temporaryFolderURL("sd-run")
        let taesd = UNetParityTests.fixtures.deletingLastPathComponent().appendingPathComponent("vae/folder-tiny")
        var request = request()
        request.preview = .taesd(folder: taesd.path)
        request.trace = true
        request.output = folder.appendingPathComponent("taesd.png").path
        var steps: [StableDiffusionStep] = []
        let outcome = try StableDiffusionRun.run(request) { steps.append($0) }
        XCTAssertNotNil(outcome.tracePath)
        let decoder = try AutoencoderTiny.load(folder: taesd)
        for step in steps {
            let preview = try XCTUnwrap(step.preview)
            let expected = noGrad { (decoder.decode(step.predictedOriginal) / 2 + 0.5).clamped(min: 0, max: 1) }
            XCTAssertEqual(preview.shape, expected.shape)
            XCTAssertEqual(preview.toArray(), expected.toArray())
            XCTAssertEqual(step.previewPictures.count, 1)
        }
    }

    func testInpaintingFromFilesWritesDenoisingStrength() throws {
        let folder = try temporaryFolderURL("sd-run")
        var request = request()
        request.width = nil
        request.height = nil
        request.initImage = Self.fixtures.appendingPathComponent("init.png").path
        request.mask = Self.fixtures.appendingPathComponent("mask.png").path
        request.strength = 1
        request.scheduler = "ddim"
        request.output = folder.appendingPathComponent("inpainted.png").path
        let outcome = try StableDiffusionRun.run(request)
        XCTAssertEqual(outcome.steps, 2)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: request.output)))
        let text = try XCTUnwrap(PNG.textChunks(bytes).first?.value)
        XCTAssert(text.hasSuffix("Sampler: DDIM, CFG scale: 7.5, Seed: 7, Size: 32x48, Model: tiny, Denoising strength: 1"), text)
    }

    /// A folder as runwayml's inpainting checkpoint has it (`StableDiffusionInpaintPipeline`, a 9-channel UNet): the tiny
    /// folder with tiny-inpaint-unet/ as its UNet. With --init-image and --mask it generates what the library does from
    /// the same seed; without a mask it is refused before generating.
    func testInpaintingPipelineFolder() throws {
        let folder = try temporaryFolderURL("sd-run").appendingPathComponent("inpainting")
        let manager = FileManager.default
        try manager.copyItem(at: StableDiffusionParityTests.tiny, to: folder)
        try manager.removeItem(at: folder.appendingPathComponent("unet"))
        try manager.copyItem(at: Self.fixtures.appendingPathComponent("tiny-inpaint-unet"), to: folder.appendingPathComponent("unet"))
        let index = folder.appendingPathComponent("model_index.json")
        let text = try String(contentsOf: index, encoding: .utf8)
            .replacingOccurrences(of: "\"StableDiffusionPipeline\"", with: "\"StableDiffusionInpaintPipeline\"")
        try text.write(to: index, atomically: true, encoding: .utf8)

        var request = request()
        request.pipeline = folder.path
        request.width = nil
        request.height = nil
        request.initImage = Self.fixtures.appendingPathComponent("init.png").path
        request.mask = Self.fixtures.appendingPathComponent("mask.png").path
        request.strength = 1
        request.output = folder.appendingPathComponent("out.png").path
        _ = try StableDiffusionRun.run(request)
        let written = try ImageFile.read(request.output)

        let pipeline = try StableDiffusionPipeline.load(folder: folder)
        XCTAssertTrue(pipeline.hasInpaintingUNet)
        var parameters = StableDiffusionParameters(prompt: request.prompt)
        parameters.steps = request.steps
        parameters.initImage = try StableDiffusionInpaintingTests.initImage()
        parameters.mask = try StableDiffusionInpaintingTests.mask()
        parameters.strength = 1
        var generator = RandomGenerator(seed: request.seed)
        let output = try pipeline.generate(parameters, generator: &generator)
        XCTAssertEqual(written, StableDiffusionImageProcessor.pixelImages(output.images)[0])

        request.mask = nil
        XCTAssertThrowsError(try StableDiffusionRun.run(request)) { error in
            XCTAssert("\(error)".contains("is an inpainting UNet (in_channels 9); it needs an init image and a mask"), "\(error)")
        }
    }

    /// What a server composes with a loaded pipeline: the parameters from pictures in memory (checked as `run` checks
    /// them), and the `parameters` text.
    func testParametersForALoadedPipelineFromPicturesInMemory() throws {
        let pipeline = try StableDiffusionParityTests.pipeline()
        var request = request()
        request.width = nil
        request.height = nil
        request.strength = 1
        let picture = try ImageFile.read(Self.fixtures.appendingPathComponent("init.png").path)
        let mask = try ImageFile.read(Self.fixtures.appendingPathComponent("mask.png").path)
        let parameters = try StableDiffusionRun.parameters(for: request, pipeline: pipeline, initImage: picture, mask: mask)
        XCTAssertEqual(parameters.initImage?.toArray(), try StableDiffusionInpaintingTests.initImage().toArray())
        XCTAssertEqual(parameters.mask?.toArray(), try StableDiffusionInpaintingTests.mask().toArray())
        XCTAssertEqual(parameters.strength, 1)
        let smaller = PixelImage(width: 32, height: 40, channels: 1, samples: Array(repeating: 255, count: 32 * 40))
        XCTAssertThrowsError(try StableDiffusionRun.parameters(for: request, pipeline: pipeline, initImage: picture, mask: smaller)) {
            XCTAssertEqual("\($0)", "the mask is 32×40 but the init image is 32×48; they must be the same size")
        }
        let text = StableDiffusionRun.infotext(for: request, schedulerName: "DDIMScheduler", width: 32, height: 48, fromImage: true).text
        XCTAssertEqual(text, "a red bench in a park\nSteps: 2, Sampler: DDIM, CFG scale: 7.5, Seed: 7, Size: 32x48, Model: tiny, "
                       + "Denoising strength: 1")
    }

    // MARK: Karras sigmas

    func testKarrasDPMSolverMatchesDiffusers() throws { try StableDiffusionParityTests.check("dpm-karras") }

    func testKarrasEulerMatchesDiffusers() throws { try StableDiffusionParityTests.check("euler-karras") }

    func testKarrasRefusedForSchedulersWithoutIt() throws {
        var request = request()
        request.karras = true
        request.scheduler = "ddim"
        XCTAssertThrowsError(try StableDiffusionRun.run(request)) { error in
            XCTAssert("\(error)".hasPrefix("--karras: diffusers' DDIMScheduler has no Karras sigmas"), "\(error)")
        }
        // The tiny folder's own scheduler is PNDM: refused after loading, before generating.
        request.scheduler = nil
        XCTAssertThrowsError(try StableDiffusionRun.run(request)) { error in
            XCTAssert("\(error)".hasPrefix("--karras: diffusers' PNDMScheduler has no Karras sigmas"), "\(error)")
        }
    }

    // MARK: Bad input, before any work

    func testSizeNotAMultipleOf8() throws {
        var request = request()
        request.width = 30
        XCTAssertThrowsError(try StableDiffusionRun.run(request)) { XCTAssertEqual("\($0)", "--width 30 is not a positive multiple of 8") }
        let pipeline = try StableDiffusionParityTests.pipeline()
        var parameters = StableDiffusionParameters(prompt: "x")
        parameters.height = 44
        parameters.width = 32
        var generator = RandomGenerator(seed: 0)
        XCTAssertThrowsError(try pipeline.generate(parameters, generator: &generator)) {
            XCTAssertEqual("\($0)", "height and width have to be divisible by 8 but are 44 and 32")
        }
    }

    func testMaskOfAnotherSize() throws {
        var request = request()
        request.width = nil
        request.height = nil
        request.initImage = Self.fixtures.appendingPathComponent("init-odd.png").path
        request.mask = Self.fixtures.appendingPathComponent("mask.png").path
        XCTAssertThrowsError(try StableDiffusionRun.run(request)) { error in
            XCTAssertEqual("\(error)", "the mask \(request.mask!) is 32×48 but the init image \(request.initImage!) is 37×54; "
                           + "they must be the same size")
        }
        request.initImage = nil
        XCTAssertThrowsError(try StableDiffusionRun.run(request)) { XCTAssertEqual("\($0)", "--mask needs --init-image: the image to repaint part of") }
    }

    func testUnreadableImage() throws {
        var request = request()
        request.width = nil
        request.height = nil
        let folder = try temporaryFolderURL("sd-run")
        request.initImage = folder.appendingPathComponent("missing.png").path
        XCTAssertThrowsError(try StableDiffusionRun.run(request)) { error in
            XCTAssert("\(error)".contains("missing.png"), "\(error)")
        }
        let broken = folder.appendingPathComponent("broken.png")
        try Data("not a picture".utf8).write(to: broken)
        request.initImage = Self.fixtures.appendingPathComponent("init.png").path
        request.mask = broken.path
        XCTAssertThrowsError(try StableDiffusionRun.run(request)) { error in
            XCTAssert("\(error)".contains("broken.png") && "\(error)".contains("neither a PNG nor a JPEG"), "\(error)")
        }
    }

    func testTextEncoderWidthDisagreeingWithCrossAttention() throws {
        let base = try StableDiffusionParityTests.pipeline()
        var configuration = base.unet.configuration
        configuration.crossAttentionDimension = .uniform(16)
        let unet = try UNet2DConditionModel(configuration: configuration)
        XCTAssertThrowsError(try StableDiffusionPipeline(textEncoder: base.textEncoder, tokenizer: base.tokenizer, unet: unet,
                                                         vae: base.vae, scheduler: base.scheduler)) { error in
            XCTAssertEqual("\(error)", "the text encoder is 32 wide (hidden_size) but the UNet's cross_attention_dim is 16; "
                           + "they come from different models")
        }
    }
}
