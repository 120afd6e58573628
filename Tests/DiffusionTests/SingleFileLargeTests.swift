import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// Stable Diffusion 1.5 at full size (random weights) as a single file written by diffusers' own
/// convert_diffusers_to_original_stable_diffusion.py: runs when `DIFFUSE_SD_PIPELINE_LARGE=FOLDER` names
/// the pipeline folder (Scripts/make-sd-pipeline-large --assemble-large) and the single file is beside it
/// as FOLDER.safetensors (Scripts/make-single-file-goldens --large FOLDER FOLDER.safetensors), or where
/// `DIFFUSE_SD_SINGLE_FILE_LARGE` says. Every parameter loaded from the file is compared with the folder's;
/// then, when FOLDER/diffusers-run.safetensors is there, text-to-image from the file with diffusers' latents.
/// The recorded run: Tests/Fixtures/single-file/large-run.txt.
final class SingleFileLargeTests: XCTestCase {
    func hashes(_ module: Module) -> [String: String] {
        Dictionary(uniqueKeysWithValues: module.namedParameters().map { ($0.name, SingleFileFixtures.hash($0.tensor)) })
    }

    func testStableDiffusion15SingleFileEqualsTheFolder() throws {
        let environment = ProcessInfo.processInfo.environment
        guard let path = environment["DIFFUSE_SD_PIPELINE_LARGE"] else {
            throw XCTSkip("set DIFFUSE_SD_PIPELINE_LARGE to the SD 1.5-size pipeline folder (and put the single file beside it)")
        }
        let folder = URL(fileURLWithPath: path)
        let single = URL(fileURLWithPath: environment["DIFFUSE_SD_SINGLE_FILE_LARGE"] ?? path + ".safetensors")
        guard FileManager.default.fileExists(atPath: single.path) else {
            throw XCTSkip("no single file at \(single.path): Scripts/make-single-file-goldens --converter … --large \(path) \(single.path)")
        }
        let start = Date()
        let file = try StableDiffusionSingleFile(path: single.path)
        print("SingleFile large: \(file.summary)")
        XCTAssertEqual(file.family, .stableDiffusion1)
        XCTAssertEqual(file.unetConfiguration.blockOutChannels, [320, 640, 1280, 1280])
        XCTAssertEqual(file.textConfiguration.hiddenLayerCount, 12)

        var compared = 0
        var loadSeconds: Double = 0
        func compare(_ label: String, _ fromFile: () throws -> Module, _ fromFolder: () throws -> Module) throws {
            let loadStart = Date()
            let expected = hashes(try fromFolder())
            let fileStart = Date()
            let ours = hashes(try fromFile())
            loadSeconds += Date().timeIntervalSince(fileStart)
            XCTAssertEqual(Set(ours.keys), Set(expected.keys), label)
            let differing = expected.filter { ours[$0.key] != $0.value }.map(\.key).sorted()
            XCTAssertEqual(differing, [], "\(label): parameters that differ")
            compared += expected.count
            print(String(format: "SingleFile large %@: %d parameters equal (folder load and hashing %.1f s)", label, expected.count,
                         fileStart.timeIntervalSince(loadStart)))
        }
        try compare("unet", { try file.loadUNet() }, { try UNet2DConditionModel.load(folder: folder.appendingPathComponent("unet")) })
        try compare("vae", { try file.loadVAE() }, { try AutoencoderKL.load(folder: folder.appendingPathComponent("vae")) })
        try compare("text_encoder", { try file.loadTextEncoder() }, { try CLIPTextModel.load(folder: folder.appendingPathComponent("text_encoder")) })
        print(String(format: "SingleFile large: %d parameters loaded from the single file equal the folder's bit for bit "
                     + "(single-file loads and hashing %.1f s; whole comparison %.1f s)", compared, loadSeconds, Date().timeIntervalSince(start)))

        let run = folder.appendingPathComponent("diffusers-run.safetensors")
        guard FileManager.default.fileExists(atPath: run.path) else { return }
        let reference = try Safetensors.load(path: run.path, as: .float32)
        let metadata = try SafetensorsCheckpoint(path: run.path).metadata
        let pipelineStart = Date()
        let pipeline = try StableDiffusionPipeline.load(single, options: SingleFileOptions(tokenizer: folder.appendingPathComponent("tokenizer")))
        let pipelineSeconds = Date().timeIntervalSince(pipelineStart)
        var parameters = StableDiffusionParameters(prompt: try XCTUnwrap(metadata["prompt"]))
        parameters.steps = try XCTUnwrap(Int(metadata["steps"] ?? ""))
        parameters.height = try XCTUnwrap(Int(metadata["size"] ?? ""))
        parameters.width = parameters.height
        parameters.latents = try XCTUnwrap(reference["latents"])
        var generator = RandomGenerator(seed: 0)
        let generateStart = Date()
        let output = try pipeline.generate(parameters, generator: &generator)
        let seconds = Date().timeIntervalSince(generateStart)
        let latentError = StableDiffusionParityTests.relativeError(output.latents, try XCTUnwrap(reference["final_latents"]))
        let ours = StableDiffusionImageProcessor.pixelImages(output.images)[0].samples
        let theirs = StableDiffusionImageProcessor.pixelImages(try XCTUnwrap(reference["image"]))[0].samples
        let levels = zip(ours, theirs).map { abs(Int($0) - Int($1)) }
        print(String(format: "SingleFile large text-to-image from the single file against diffusers from the folder: %dx%d, %d timesteps, "
                     + "final latents max relative error %.2e, pixels differing %d of %d (largest %d levels); load %.1f s, generate %.1f s",
                     parameters.width!, parameters.height!, output.timesteps.count, latentError, levels.filter { $0 > 0 }.count,
                     levels.count, levels.max() ?? 0, pipelineSeconds, seconds))
        XCTAssertLessThan(latentError, 1e-3)
        XCTAssertLessThanOrEqual(levels.max() ?? 0, 2)
    }
}
