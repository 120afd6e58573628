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
/// `-bf16`: the same with the weights held in bfloat16, mapped from a bfloat16 pipeline folder as
/// `diffuse generate` loads a 16-bit checkpoint (``mappedBFloat16Pipeline()``), and bfloat16 inference compute (`DIFFUSE_COMPUTE=bf16`); PyTorch's side stays diffusers' float32
/// pipeline, the reference.
func stableDiffusion15TextToImage(bfloat16: Bool = false) -> Workload {
    Workload(name: bfloat16 ? "sd15-txt2img-512-20-bf16" : "sd15-txt2img-512-20") {
        let (size, steps) = textToImageSizeAndSteps()
        Initialization.seed(0)
        do {
            let pipeline = try bfloat16 ? mappedBFloat16Pipeline() : {
                let tokenizer = try CLIPTokenizer(mergesFile: clipMergesFile())
                let configuration = try SchedulerConfiguration(jsonText: stableDiffusion15SchedulerJSON)
                return try StableDiffusionPipeline(textEncoder: CLIPTextModel(.stableDiffusion1), tokenizer: tokenizer,
                                                   unet: try UNet2DConditionModel(configuration: .stableDiffusion15),
                                                   vae: try AutoencoderKL(configuration: .stableDiffusion),
                                                   scheduler: try Schedulers.make(.dpmSolverMultistep, configuration: configuration))
            }()
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

/// The `-bf16` row's pipeline as a user runs a 16-bit checkpoint: a bfloat16 pipeline folder under
/// `DIFFUSE_BENCH_CACHE` (or /tmp/diffuse-bench-cache) loaded with `precision: .asStored`, its weights mapped from
/// the files. The folder is written once, by a child process (so that this one never holds the drawn model).
func mappedBFloat16Pipeline() throws -> StableDiffusionPipeline {
    let cache = URL(fileURLWithPath: ProcessInfo.processInfo.environment["DIFFUSE_BENCH_CACHE"] ?? "/tmp/diffuse-bench-cache")
    let folder = cache.appendingPathComponent("sd15-bf16-pipeline")
    if !FileManager.default.fileExists(atPath: folder.appendingPathComponent("model_index.json").path) {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        child.arguments = ["--write-bf16-pipeline", folder.path]
        try child.run()
        child.waitUntilExit()
        guard child.terminationStatus == 0 else { throw StableDiffusionError("writing \(folder.path) failed") }
    }
    return try StableDiffusionPipeline.load(folder: folder, precision: .asStored, scheduler: .dpmSolverMultistep)
}

/// Stable Diffusion 1.5's pipeline with random bfloat16 weights (drawn parameter by parameter, so the float32
/// model never exists), saved as a bfloat16 pipeline folder; model_index.json is written last.
func writeBFloat16Pipeline(to folder: URL) throws {
    let (textEncoder, unet, vae) = try Initialization.withoutInitialValues {
        (CLIPTextModel(.stableDiffusion1), try UNet2DConditionModel(configuration: .stableDiffusion15),
         try AutoencoderKL(configuration: .stableDiffusion))
    }
    var draws = RandomGenerator(seed: 5)
    for model in [textEncoder, unet, vae] as [Module] { drawBFloat16Parameters(model, generator: &draws) }
    let configuration = try SchedulerConfiguration(jsonText: stableDiffusion15SchedulerJSON)
    let pipeline = try StableDiffusionPipeline(textEncoder: textEncoder, tokenizer: try CLIPTokenizer(mergesFile: clipMergesFile()),
                                               unet: unet, vae: vae, scheduler: try Schedulers.make(.dpmSolverMultistep, configuration: configuration))
    try? FileManager.default.removeItem(at: folder)
    try pipeline.save(folder: folder, dataType: .bfloat16)
}

let pipelineWorkloads = [stableDiffusion15TextToImage(), stableDiffusion15TextToImage(bfloat16: true)]
let pipelineMemoryRows = ["sd15-txt2img-512-20-rss", "sd15-txt2img-512-20-bf16-rss"]

extension Initialization {
    /// `body` inside ``withoutInitialValues(_:)`` when `condition`, else as it is.
    static func withoutInitialValues<Result>(when condition: Bool, _ body: () throws -> Result) rethrows -> Result {
        condition ? try withoutInitialValues(body) : try body()
    }
}
