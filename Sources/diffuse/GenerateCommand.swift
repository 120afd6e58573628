import ArgumentParser
import Diffusion
import Foundation
import NN

/// `diffuse generate`: wiring from flags to `StableDiffusionRun`.
struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate images with Stable Diffusion from a diffusers pipeline folder (text-to-image, or image-to-image with --init-image).",
        discussion: """
        PIPELINE_FOLDER is a diffusers StableDiffusionPipeline folder (model_index.json, text_encoder/, \
        tokenizer/, unet/, vae/, scheduler/), e.g. stable-diffusion-v1-5 saved by diffusers. A safety checker \
        or feature extractor in it is not run. Classifier-free guidance runs when --guidance-scale is above 1 \
        (the negative prompt, default empty, is the unconditional half). The folder's scheduler is used \
        unless --scheduler names another (ddim, pndm, lms, euler, euler-ancestral, heun, dpm, unipc, ddpm, \
        or a diffusers class name). With --init-image the image (its sides rounded down to multiples of 8, \
        resized with Lanczos) is encoded and noised to the step --strength picks, as diffusers' \
        StableDiffusionImg2ImgPipeline does.
        """)

    @Argument(help: "The pipeline folder, or a single .safetensors checkpoint (original Stable Diffusion layout).") var pipeline: String
    @Argument(help: "The prompt (or use --prompt).") var promptText: String?
    @Option(help: "The prompt.") var prompt: String?
    @Option(help: "The negative prompt (default: empty).") var negativePrompt: String?
    @Option(help: "Inference steps.") var steps = 50
    @Option(help: "Classifier-free guidance scale (guidance only above 1).") var guidanceScale: Double = 7.5
    @Option(help: "guidance_rescale, 0…1 (text-to-image).") var guidanceRescale: Double = 0
    @Option(help: "A scheduler instead of the folder's.") var scheduler: String?
    @Option(help: "DDIM eta.") var eta: Double = 0
    @Option(help: "Seed of the starting noise.") var seed: UInt64 = 0
    @Option(help: "Image width, a multiple of 8 (default: the UNet's sample_size × 8).") var width: Int?
    @Option(help: "Image height, a multiple of 8.") var height: Int?
    @Option(help: "Images to generate.") var count = 1
    @Option(help: "Use the hidden state this many layers before the text encoder's last.") var clipSkip: Int?
    @Option(help: ArgumentHelp("Image-to-image: the picture to start from.", valueName: "file.png")) var initImage: String?
    @Option(help: "Image-to-image: how much of the schedule runs, 0…1.") var strength: Double = 0.8
    @Option(help: ArgumentHelp("The weights variant of every model, e.g. fp16.", valueName: "name")) var variant: String?
    @Option(help: ArgumentHelp("How the weights are held: float32, as-stored (16-bit files stay 16-bit), bf16 or fp16.",
                               valueName: "float32|as-stored|bf16|fp16"))
    var weights = "float32"
    @Option(help: ArgumentHelp("Unit-variance starting latents [count, 4, H/8, W/8] (text-to-image).", valueName: "file.safetensors"))
    var initLatents: String?
    @Option(name: .shortAndLong, help: "The PNG to write (several images: NAME-1.png, NAME-2.png, ...).") var output = "image.png"
    @Flag(help: "No live progress line.") var noProgress = false
    @Option(help: "A single file's prediction type (epsilon, v_prediction, sample) instead of the inferred one.") var predictionType: PredictionType?

    func run() throws {
        try CommandFailure.report {
            guard let text = prompt ?? promptText, prompt == nil || promptText == nil else {
                throw ValidationError(prompt == nil ? "give a prompt: diffuse generate FOLDER \"a prompt\" (or --prompt)"
                                                    : "give the prompt once: as an argument or with --prompt")
            }
            var request = StableDiffusionRequest(pipeline: pipeline, prompt: text)
            request.negativePrompt = negativePrompt
            request.steps = steps
            request.guidanceScale = guidanceScale
            request.guidanceRescale = guidanceRescale
            request.scheduler = scheduler
            request.eta = eta
            request.seed = seed
            request.width = width
            request.height = height
            request.count = count
            request.clipSkip = clipSkip
            request.initImage = initImage
            request.strength = strength
            request.variant = variant
            request.initLatents = initLatents
            request.output = output
            request.singleFile.predictionType = predictionType
            let precisions: [String: WeightPrecision] = ["float32": .float32, "fp32": .float32, "as-stored": .asStored,
                                                         "bf16": .bfloat16, "bfloat16": .bfloat16, "fp16": .float16, "float16": .float16]
            guard let precision = precisions[weights.lowercased()] else {
                throw ValidationError("--weights \(weights) is not one of float32, as-stored, bf16, fp16")
            }
            request.precision = precision
            let outcome = try StableDiffusionRun.run(request, progressOutput: noProgress ? nil : FileDescriptorOutput(),
                                                     log: { FileHandle.standardError.write(Data(($0 + "\n").utf8)) })
            outcome.reportLines.forEach { print($0) }
        }
    }
}
