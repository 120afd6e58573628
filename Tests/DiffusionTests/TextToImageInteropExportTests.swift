import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// The Diffuse half of Scripts/check-text-to-image-interop (skipped unless `DIFFUSE_T2I_INTEROP` names its
/// work folder): trains a pipeline from scratch, a LoRA and a full fine-tuning of the pipeline diffusers saved
/// there (`python-saved/`), and writes the final latents Diffuse generates with each from the script's
/// starting latents, for diffusers to compare.
final class TextToImageInteropExportTests: XCTestCase {
    static let prompt = "a red shirt"

    static func generate(_ pipeline: StableDiffusionPipeline, latents: Tensor) throws -> Tensor {
        var parameters = StableDiffusionParameters(prompt: prompt)
        parameters.steps = 8
        parameters.guidanceScale = 3
        parameters.height = 32
        parameters.width = 32
        parameters.imagesPerPrompt = latents.shape[0]
        parameters.latents = latents
        var generator = RandomGenerator(seed: 0)
        return try pipeline.generate(parameters, generator: &generator).latents
    }

    func options(_ output: String, steps: Int) -> TextToImageTrainingOptions {
        var options = TextToImageFixtures.options(outputDir: output, steps: steps)
        options.useEMA = false
        options.overwriteOutputDir = true
        options.checkpointingSteps = 0
        return options
    }

    func testExportForPythonInterop() throws {
        guard let work = ProcessInfo.processInfo.environment["DIFFUSE_T2I_INTEROP"] else {
            throw XCTSkip("run by Scripts/check-text-to-image-interop")
        }
        func path(_ name: String) -> String { (work as NSString).appendingPathComponent(name) }
        let latents = try XCTUnwrap(Safetensors.load(path: path("latents.safetensors"))["latents"])
        let pythonSaved = path("python-saved")

        var scratch = options(path("scratch"), steps: 20)
        scratch.from = nil
        scratch.vae = pythonSaved + "/vae"
        scratch.textEncoder = pythonSaved + "/text_encoder"
        scratch.model = .tiny
        _ = try TextToImageFixtures.trainer(scratch).run()
        let scratchLatents = try Self.generate(try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: path("scratch"))), latents: latents)

        var lora = options(path("lora"), steps: 20)
        lora.from = pythonSaved
        lora.loraRank = 4
        lora.loraAlpha = 8
        lora.trainTextEncoderLoRA = true
        _ = try TextToImageFixtures.trainer(lora).run()
        let base = try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: pythonSaved))
        let baseLatents = try Self.generate(base, latents: latents)
        try base.loadLoRA(path: path("lora/pytorch_lora_weights.safetensors"))
        let loraLatents = try Self.generate(base, latents: latents)

        var tuned = options(path("tuned"), steps: 10)
        tuned.from = pythonSaved
        _ = try TextToImageFixtures.trainer(tuned).run()
        let tunedLatents = try Self.generate(try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: path("tuned"))), latents: latents)

        try Safetensors.save(["scratch": scratchLatents, "base": baseLatents, "lora": loraLatents, "tuned": tunedLatents],
                             to: path("diffuse-latents.safetensors"))
    }
}
