import TestSupport
import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// The text-to-image trainer on the tiny Stable Diffusion fixture: what it caches, caption dropout,
/// training from scratch, the saved pipeline and LoRA file loading back and generating the same images.
final class TextToImageTrainerTests: XCTestCase {
    func testCachesPosteriorsOfImagesAndMirrorImagesAndEmbeddingsOfDistinctCaptions() throws {
        let dataset = TextToImageFixtures.dataset(count: 6)
        let trainer = try TextToImageFixtures.trainer(TextToImageFixtures.options(outputDir: try temporaryFolderPath("t2i")),
                                                      dataset: dataset)
        let vae = trainer.pipeline.vae
        let images = Tensor.stack((0..<6).map { try! dataset.example(at: $0).image }, axis: 0)
        let direct = noGrad { vae.encode(images) }
        XCTAssertEqual(trainer.latentCache.mean.shape, [6, 4, 4, 4])
        XCTAssertEqual(trainer.latentCache.mean.toArray(), direct.mean.toArray())
        XCTAssertEqual(trainer.latentCache.standardDeviation.toArray(), direct.standardDeviation.toArray())
        var unused = RandomGenerator(seed: 0)
        let flipped = Tensor.stack((0..<6).map { HorizontalFlip().apply(try! dataset.example(at: $0).image, generator: &unused) }, axis: 0)
        XCTAssertEqual(try XCTUnwrap(trainer.latentCache.flippedMean).toArray(), noGrad { vae.encode(flipped).mean }.toArray())
        let mixed = trainer.latentCache.posterior([4, 1], flipped: [true, false])
        XCTAssertEqual(mixed.mean.narrowed(axis: 0, start: 0, length: 1).toArray(),
                       trainer.latentCache.flippedMean!.narrowed(axis: 0, start: 4, length: 1).toArray())
        XCTAssertEqual(mixed.mean.narrowed(axis: 0, start: 1, length: 1).toArray(), direct.mean.narrowed(axis: 0, start: 1, length: 1).toArray())

        let cache = try XCTUnwrap(trainer.promptCache)
        XCTAssertEqual(cache.rows.count, TextToImageFixtures.captionWords.count + 1, "each distinct caption once, and the empty prompt")
        let prompts = ["a green bag", "", "a red shirt"]
        let fresh = try trainer.pipeline.encodePrompt(prompts, classifierFreeGuidance: false).prompt
        XCTAssertLessThan(StableDiffusionParityTests.relativeError(try cache.embeddings(for: prompts), fresh), 1e-6,
                          "the cached rows are the text encoder's output (computed in other batches)")
        XCTAssertThrowsError(try cache.embeddings(for: ["a caption never seen"]))
    }

    func testCaptionDropoutReplacesTheGivenFractionByTheEmptyPrompt() throws {
        var options = TextToImageFixtures.options(outputDir: try temporaryFolderPath("t2i"))
        options.captionDropout = 0.3
        let trainer = try TextToImageFixtures.trainer(options)
        let indices = Array(0..<12)
        var dropped = 0, total = 0
        for _ in 0..<500 {
            for (index, prompt) in zip(indices, trainer.drawPrompts(indices)) {
                total += 1
                if prompt.isEmpty { dropped += 1 } else { XCTAssertEqual(prompt, trainer.captions[index]) }
            }
        }
        let fraction = Double(dropped) / Double(total)
        XCTAssertEqual(fraction, 0.3, accuracy: 0.02, "dropped \(dropped) of \(total)")
        options.captionDropout = 0
        options.outputDir = try temporaryFolderPath("t2i")
        let keeping = try TextToImageFixtures.trainer(options)
        XCTAssertEqual(keeping.drawPrompts(indices), indices.map { keeping.captions[$0] })
        options.captionDropout = 1
        options.outputDir = try temporaryFolderPath("t2i")
        XCTAssertEqual(try TextToImageFixtures.trainer(options).drawPrompts(indices), Array(repeating: "", count: 12))
    }

    /// Generates two images of a fixed prompt with `pipeline` from seed 3.
    static func generate(_ pipeline: StableDiffusionPipeline, scheduler: SchedulerKind? = .ddim) throws -> Tensor {
        var parameters = StableDiffusionParameters(prompt: "a red shirt")
        parameters.imagesPerPrompt = 2
        parameters.steps = 4
        parameters.guidanceScale = 3
        parameters.scheduler = scheduler
        parameters.height = 32
        parameters.width = 32
        var generator = RandomGenerator(seed: 3)
        return try pipeline.generate(parameters, generator: &generator).latents
    }

    func testTrainsFromScratchAndTheSavedPipelineLoadsBackAndGeneratesTheSameImages() throws {
        let folder = try temporaryFolderPath("t2i")
        var options = TextToImageFixtures.options(outputDir: folder, steps: 3)
        options.from = nil
        options.vae = TextToImageFixtures.tiny + "/vae"
        options.textEncoder = TextToImageFixtures.tiny + "/text_encoder"
        options.model = .tiny
        options.useEMA = false
        options.validationPrompts = ["a red shirt", "a blue dress"]
        options.numValidationImages = 2
        options.validationInferenceSteps = 3
        let trainer = try TextToImageFixtures.trainer(options)
        let before = trainer.unet.stateDict()["conv_in.weight"]!.toArray()
        let summary = try trainer.run()
        XCTAssertEqual(summary.step, 3)
        XCTAssertEqual(summary.pipelinePath, folder)
        XCTAssertNotEqual(trainer.unet.stateDict()["conv_in.weight"]!.toArray(), before, "the UNet trained")
        XCTAssertEqual(summary.sampleImages.count, 1)
        XCTAssertTrue(FileManager.default.fileExists(atPath: summary.sampleImages[0]))
        for name in ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer/vocab.json",
                     "scheduler/scheduler_config.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent(name)), name)
        }
        let loaded = try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: folder))
        XCTAssertEqual(loaded.unet.configuration.blockOutChannels, [32, 64])
        XCTAssertEqual(type(of: loaded.scheduler).className, SchedulerKind.dpmSolverMultistep.rawValue)
        trainer.unet.eval()
        XCTAssertEqual(try Self.generate(loaded, scheduler: nil).toArray(), try Self.generate(trainer.pipeline, scheduler: nil).toArray(),
                       "the folder's DPM-Solver++ with the weights trained")
    }

    func testFineTunedPipelineWithEMASavesTheAverage() throws {
        let folder = try temporaryFolderPath("t2i")
        let trainer = try TextToImageFixtures.trainer(TextToImageFixtures.options(outputDir: folder, steps: 2))
        _ = try trainer.run()
        let loaded = try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: folder))
        let ema = try XCTUnwrap(trainer.ema)
        let names = trainer.unet.namedParameters().map(\.name)
        let saved = loaded.unet.stateDict()
        for (name, shadow) in zip(names, ema.shadowParameters) {
            XCTAssertEqual(saved[name]?.toArray(), shadow.toArray(), name)
        }
        XCTAssertNotEqual(saved["conv_in.weight"]?.toArray(), trainer.unet.stateDict()["conv_in.weight"]?.toArray(),
                          "the saved weights are the average, not the trained ones")
    }

    func testLoRAFileLoadsIntoTheBasePipelineAndGeneratesWhatTheTrainerDoes() throws {
        let folder = try temporaryFolderPath("t2i")
        let trainer = try TextToImageFixtures.trainer(TextToImageFixtures.options(outputDir: folder, steps: 3, lora: true))
        let base = try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: TextToImageFixtures.tiny))
        let baseUNet = base.unet.stateDict()
        let summary = try trainer.run()
        let file = (folder as NSString).appendingPathComponent("pytorch_lora_weights.safetensors")
        XCTAssertEqual(summary.pipelinePath, file)
        for (name, tensor) in trainer.unet.stateDict() { XCTAssertEqual(tensor.toArray(), baseUNet[name]?.toArray(), "\(name) is frozen") }
        let keys = try Safetensors.load(path: file).keys
        XCTAssertEqual(keys.filter { $0.hasPrefix("unet.") }.count, 2 * trainer.unetAdapters.count)
        XCTAssertEqual(keys.filter { $0.hasPrefix("text_encoder.") }.count, 2 * trainer.textEncoderAdapters.count)
        XCTAssertTrue(keys.contains("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight"))
        XCTAssertTrue(keys.contains("text_encoder.encoder.layers.0.self_attn.q_proj.lora_A.weight"), "diffusers' text-encoder keys")
        let without = try Self.generate(base)
        let report = try base.loadLoRA(path: file)
        XCTAssertEqual(report.unmatchedKeys, [])
        let with = try Self.generate(base)
        XCTAssertNotEqual(with.toArray(), without.toArray(), "the LoRA changes the output")
        XCTAssertEqual(StableDiffusionParityTests.relativeError(with, try Self.generate(trainer.pipeline)), 0, accuracy: 1e-6)
    }

    /// A pipeline saved with DPM-Solver++ (whose configuration holds `variance_type: null`, as the text demo's does)
    /// fine-tunes: the training DDPMScheduler takes its default variance type, as diffusers' does.
    func testFineTunesAPipelineWhoseSchedulerConfigurationHasANullVarianceType() throws {
        let folder = try temporaryFolderPath("t2i")
        let copy = URL(fileURLWithPath: folder).appendingPathComponent("pipeline")
        try FileManager.default.copyItem(at: URL(fileURLWithPath: TextToImageFixtures.tiny), to: copy)
        let schedulerFile = copy.appendingPathComponent("scheduler/scheduler_config.json")
        var configuration = try JSONSerialization.jsonObject(with: Data(contentsOf: schedulerFile)) as! [String: Any]
        configuration["_class_name"] = "DPMSolverMultistepScheduler"
        configuration["variance_type"] = NSNull()
        try JSONSerialization.data(withJSONObject: configuration).write(to: schedulerFile)
        var options = TextToImageFixtures.options(outputDir: (folder as NSString).appendingPathComponent("out"), steps: 1)
        options.from = copy.path
        let trainer = try TextToImageFixtures.trainer(options)
        XCTAssertTrue(trainer.noiseScheduler is DDPMScheduler)
    }
}
