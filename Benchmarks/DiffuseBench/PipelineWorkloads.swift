// Stable Diffusion pipeline rows of `make bench` (torch_bench.py builds the same pipeline with diffusers).
import Diffusion
import Foundation
import NN
import Tensors

/// The image side and steps of `sd15-txt2img-512-20`: 512 and 20, or `DIFFUSE_BENCH_TXT2IMG=SIZE:STEPS` (both
/// sides read it) to check that the row starts at a small size without running the long one.
func textToImageSizeAndSteps() -> (size: Int, steps: Int) {
    let parts = (ProcessInfo.processInfo.environment["DIFFUSE_BENCH_TXT2IMG"] ?? "").split(separator: ":").compactMap { Int($0) }
    return parts.count == 2 ? (parts[0], parts[1]) : (512, 20)
}

/// openai's BPE merges file: `DIFFUSE_CLIP_VOCAB`, else data/clip/ of the working directory (`make bench` runs at the top).
func clipMergesFile() -> URL {
    URL(fileURLWithPath: ProcessInfo.processInfo.environment["DIFFUSE_CLIP_VOCAB"] ?? "data/clip/bpe_simple_vocab_16e6.txt.gz")
}

/// Stable Diffusion 1.5's scheduler configuration (scheduler/scheduler_config.json of the Hub folder).
let stableDiffusion15SchedulerJSON = """
    {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
     "clip_sample": false, "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
     "steps_offset": 1, "trained_betas": null}
    """

/// One text-to-image generation as `diffuse generate` runs it, Stable Diffusion 1.5's configuration with random
/// weights (CLIP ViT-L/14's text tower, the SD 1.5 UNet and VAE, the full CLIP tokenizer): text encoding of a
/// prompt and the empty negative prompt, 20 DPM-Solver++ steps with classifier-free guidance 7.5 (batch 2 per
/// UNet call), and the VAE decode, at 512×512. Loading is outside the timing.
/// `-bf16`: the same with the weights held in bfloat16 (as a float16 or bfloat16 checkpoint kept in 16 bits
/// loads) and bfloat16 inference compute (`DIFFUSE_COMPUTE=bf16`); PyTorch's side stays diffusers' float32
/// pipeline, the reference.
func stableDiffusion15TextToImage(bfloat16: Bool = false) -> Workload {
    Workload(name: bfloat16 ? "sd15-txt2img-512-20-bf16" : "sd15-txt2img-512-20") {
        let (size, steps) = textToImageSizeAndSteps()
        Initialization.seed(0)
        do {
            // -bf16: built without float32 values and given bfloat16 ones parameter by parameter, as a 16-bit
            // checkpoint loads (mapped), so the float32 model never exists.
            let (textEncoder, unet, vae) = try Initialization.withoutInitialValues(when: bfloat16) {
                (CLIPTextModel(.stableDiffusion1), try UNet2DConditionModel(configuration: .stableDiffusion15),
                 try AutoencoderKL(configuration: .stableDiffusion))
            }
            let tokenizer = try CLIPTokenizer(mergesFile: clipMergesFile())
            let configuration = try SchedulerConfiguration(jsonText: stableDiffusion15SchedulerJSON)
            let scheduler = try Schedulers.make(.dpmSolverMultistep, configuration: configuration)
            let pipeline = try StableDiffusionPipeline(textEncoder: textEncoder, tokenizer: tokenizer, unet: unet, vae: vae,
                                                       scheduler: scheduler)
            if bfloat16 {
                var draws = RandomGenerator(seed: 5)
                for model in [textEncoder, unet, vae] as [Module] { drawBFloat16Parameters(model, generator: &draws) }
            }
            var parameters = StableDiffusionParameters(prompt: "a photo of an astronaut riding a horse on mars")
            parameters.steps = steps
            parameters.width = size
            parameters.height = size
            parameters.guidanceScale = 7.5
            let precision: ComputePrecision = bfloat16 ? .bfloat16 : .float32
            return {
                // Set on every run: the worker runs rows of both modes in turn.
                if ComputeMode.requested != precision { ComputeMode.precision = precision }
                var generator = RandomGenerator(seed: 1)
                _ = try! pipeline.generate(parameters, generator: &generator)
            }
        } catch {
            fatalError("sd15-txt2img-512-20: \(error)")
        }
    }
}

let pipelineWorkloads = [stableDiffusion15TextToImage(), stableDiffusion15TextToImage(bfloat16: true)]
let pipelineMemoryRows = ["sd15-txt2img-512-20-rss", "sd15-txt2img-512-20-bf16-rss"]

extension Initialization {
    /// `body` inside ``withoutInitialValues(_:)`` when `condition`, else as it is.
    static func withoutInitialValues<Result>(when condition: Bool, _ body: () throws -> Result) rethrows -> Result {
        condition ? try withoutInitialValues(body) : try body()
    }
}
