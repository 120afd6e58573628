import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// Text-to-image on Stable Diffusion 1.5's configuration (random weights) at 256×256 with 10 steps of DDIM, Euler
/// ancestral and DPM-Solver++, classifier-free guidance 7.5, against diffusers' `StableDiffusionPipeline` from the
/// same starting latents (and, for Euler ancestral, the same noise at every step): runs when
/// `DIFFUSE_SD_PIPELINE_LARGE=FOLDER` names a folder made by `Scripts/make-sd-pipeline-large --assemble-large` on which
/// `--txt2img-large FOLDER --steps 10 --size 256` wrote FOLDER/diffusers-txt2img-{ddim,euler-ancestral,dpm}.safetensors.
/// Recorded in Tests/Fixtures/sd-pipeline/large-run.txt.
final class StableDiffusionLargeTextToImageTests: XCTestCase {
    func testDDIM() throws { try run("ddim", scheduler: .ddim) }

    func testEulerAncestral() throws { try run("euler-ancestral", scheduler: .eulerAncestral) }

    func testDPMSolverMultistep() throws { try run("dpm", scheduler: .dpmSolverMultistep) }

    private func run(_ name: String, scheduler: SchedulerKind) throws {
        let folder = try StableDiffusionLarge.folder()
        let reference = try StableDiffusionLarge.reference("diffusers-txt2img-\(name).safetensors", in: folder, option: "--txt2img-large")
        let pipeline = try StableDiffusionPipeline.load(folder: folder)
        var parameters = StableDiffusionParameters(prompt: try reference.text("prompt"))
        parameters.steps = try reference.integer("steps")
        parameters.height = try reference.integer("size")
        parameters.width = parameters.height
        parameters.scheduler = scheduler
        parameters.latents = try reference.tensor("latents")
        if let noise = reference.tensors["step_noise"] {
            parameters.stepNoise = (0..<noise.shape[0]).map { noise.narrowed(axis: 0, start: $0, length: 1).contiguous().reshaped(Array(noise.shape.dropFirst())) }
        }
        XCTAssertEqual(parameters.stepNoise != nil, scheduler == .eulerAncestral, "Euler ancestral's reference gives its step noise")
        var generator = RandomGenerator(seed: 0)
        let start = Date()
        let output = try pipeline.generate(parameters, generator: &generator)
        let seconds = Date().timeIntervalSince(start)
        let comparison = try StableDiffusionLarge.Comparison(latents: output.latents, images: output.images, reference: reference)
        print(String(format: "StableDiffusion large sd15 text-to-image (%@): %dx%d, %d timesteps: %@; generate %.1f s", scheduler.rawValue,
                     parameters.width!, parameters.height!, output.timesteps.count, comparison.summary, seconds))
        print("diffusers: " + reference.timing)
        comparison.check()
    }
}
