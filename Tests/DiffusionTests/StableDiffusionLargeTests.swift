import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// Stable Diffusion 1.5 at full size with random weights, against diffusers from the same latents: runs
/// when `DIFFUSE_SD_PIPELINE_LARGE=FOLDER` names a pipeline folder made by
/// `Scripts/make-sd-pipeline-goldens --assemble-large` and timed by `--time-large` (which wrote
/// FOLDER/diffusers-run.safetensors). The recorded run: Tests/Fixtures/sd-pipeline/large-run.txt.
final class StableDiffusionLargeTests: XCTestCase {
    func testStableDiffusion15TextToImage() throws {
        guard let path = ProcessInfo.processInfo.environment["DIFFUSE_SD_PIPELINE_LARGE"] else {
            throw XCTSkip("set DIFFUSE_SD_PIPELINE_LARGE to a folder made by Scripts/make-sd-pipeline-goldens --assemble-large")
        }
        let folder = URL(fileURLWithPath: path)
        let reference = try Safetensors.load(path: folder.appendingPathComponent("diffusers-run.safetensors").path, as: .float32)
        let metadata = try SafetensorsCheckpoint(path: folder.appendingPathComponent("diffusers-run.safetensors").path).metadata
        let loadStart = Date()
        let pipeline = try StableDiffusionPipeline.load(folder: folder)
        let loadSeconds = Date().timeIntervalSince(loadStart)
        var parameters = StableDiffusionParameters(prompt: try XCTUnwrap(metadata["prompt"]))
        parameters.steps = try XCTUnwrap(Int(metadata["steps"] ?? ""))
        parameters.height = try XCTUnwrap(Int(metadata["size"] ?? ""))
        parameters.width = parameters.height
        parameters.latents = try XCTUnwrap(reference["latents"])
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
        let latentError = StableDiffusionParityTests.relativeError(output.latents, try XCTUnwrap(reference["final_latents"]))
        let imageError = StableDiffusionParityTests.relativeError(output.images, try XCTUnwrap(reference["image"]))
        let ours = StableDiffusionImageProcessor.pixelImages(output.images)[0].samples
        let theirs = StableDiffusionImageProcessor.pixelImages(try XCTUnwrap(reference["image"]))[0].samples
        let levels = zip(ours, theirs).map { abs(Int($0) - Int($1)) }
        print(String(format: "StableDiffusion large sd15: %dx%d, %d timesteps: final latents max relative error %.2e, image %.2e, "
                     + "pixels differing %d of %d (largest %d levels); load %.1f s, generate %.1f s (text encoding + first step %.1f s, "
                     + "later steps %@ s, decode %.1f s)",
                     parameters.width!, parameters.height!, output.timesteps.count,
                     latentError, imageError, levels.filter { $0 > 0 }.count, levels.count, levels.max() ?? 0, loadSeconds, seconds,
                     stepSeconds.first ?? 0, stepSeconds.dropFirst().map { String(format: "%.1f", $0) }.joined(separator: "/"), decodeSeconds))
        print("diffusers: " + (metadata["timing"] ?? "(no timing recorded)"))
        XCTAssertLessThan(latentError, 1e-3)
        XCTAssertLessThanOrEqual(levels.max() ?? 0, 2)
    }
}
