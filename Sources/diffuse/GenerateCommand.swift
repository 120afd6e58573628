import ArgumentParser
import Diffusion
import Foundation
import NN

/// `diffuse generate`: wiring from flags to `StableDiffusionRun`.
struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate images with Stable Diffusion from a diffusers pipeline folder (text-to-image, image-to-image, inpainting).",
        discussion: """
        PIPELINE_FOLDER is a diffusers StableDiffusionPipeline folder (model_index.json, text_encoder/, \
        tokenizer/, unet/, vae/, scheduler/), e.g. stable-diffusion-v1-5 saved by diffusers. A safety checker \
        or feature extractor in it is not run. Classifier-free guidance runs when --guidance-scale is above 1 \
        (the negative prompt, default empty, is the unconditional half). The folder's scheduler is used \
        unless --scheduler names another (ddim, pndm, lms, euler, euler-ancestral, heun, dpm, unipc, ddpm, \
        or a diffusers class name). With --init-image the image (its sides rounded down to multiples of 8, \
        resized with Lanczos) is encoded and noised to the step --strength picks, as diffusers' \
        StableDiffusionImg2ImgPipeline does; with --mask as well, the white part of the mask is repainted as \
        diffusers' StableDiffusionInpaintPipeline does (a 9-channel inpainting UNet takes the mask and the \
        masked image; an ordinary UNet's latents are blended with the init image's at every step). Every PNG \
        carries its generation parameters in a "parameters" text chunk (diffuse inspect image.png prints them). \
        --trace writes x_t and the predicted x0 over the steps, decoded by --preview-decoder.
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
    @Option(help: ArgumentHelp("Inpainting: a picture of the init image's size, white where to repaint, black where to keep.",
                               valueName: "mask.png"))
    var mask: String?
    @Option(help: "Image-to-image and inpainting: how much of the schedule runs, 0…1 (default 0.8; 1 with --mask).") var strength: Double?
    @Flag(help: "Karras sigmas (use_karras_sigmas) for LMS, Euler, Heun, DPM-Solver++ or UniPC.") var karras = false
    @Flag(help: "Also write a strip of x_t and the predicted x0 previews over the steps (OUTPUT-trace.png).") var trace = false
    @Option(help: "The trace's step interval (default: about ten frames).") var traceEvery: Int?
    @Option(parsing: .upToNextOption,
            help: ArgumentHelp("How previews are decoded: linear (latent-to-RGB factors, 1/8 size; the default) or taesd FOLDER.",
                               valueName: "linear|taesd FOLDER"))
    var previewDecoder: [String] = []
    @Option(help: ArgumentHelp("The weights variant of every model, e.g. fp16.", valueName: "name")) var variant: String?
    @Option(help: ArgumentHelp("How the weights are held: float32, as-stored (16-bit files stay 16-bit), bf16 or fp16.",
                               valueName: "float32|as-stored|bf16|fp16"))
    var weights = "float32"
    @Option(help: ArgumentHelp("Unit-variance starting latents [count, 4, H/8, W/8] (text-to-image).", valueName: "file.safetensors"))
    var initLatents: String?
    @Option(name: .shortAndLong, help: "The PNG to write (several images: NAME-1.png, NAME-2.png, ...).") var output = "image.png"
    @Flag(help: "No live progress line.") var noProgress = false
    @Option(name: .customLong("lora"), help: ArgumentHelp("A LoRA file (diffusers/PEFT or kohya keys) and its scale, default 1; repeatable.",
                                                          valueName: "file.safetensors[:scale]"))
    var loras: [String] = []
    @Flag(help: "Keep LoRAs beside the weights instead of fusing them in (same images; slower steps).") var unfusedLora = false
    @Option(help: "A single file's prediction type (epsilon, v_prediction, sample) instead of the inferred one.") var predictionType: PredictionType?
    @OptionGroup(title: "CLIP guidance") var clipGuidance: CLIPGuidanceFlags

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
            if strength != nil && initImage == nil { throw ValidationError("--strength needs --init-image") }
            request.strength = strength ?? (mask == nil ? 0.8 : 1)
            request.mask = mask
            request.karras = karras
            request.trace = trace || traceEvery != nil
            request.traceEvery = traceEvery
            switch previewDecoder.first?.lowercased() {
            case nil: break
            case "linear"? where previewDecoder.count == 1: request.preview = .linear
            case "taesd"? where previewDecoder.count == 2: request.preview = .taesd(folder: previewDecoder[1])
            default: throw ValidationError("--preview-decoder takes linear, or taesd and a TAESD folder; got \(previewDecoder.joined(separator: " "))")
            }
            request.variant = variant
            request.initLatents = initLatents
            request.loras = try loras.map { argument in
                guard let lora = LoRARequest(argument: argument) else { throw ValidationError("--lora \(argument): give FILE or FILE:SCALE") }
                return lora
            }
            request.fuseLoRA = !unfusedLora
            request.output = output
            request.singleFile.predictionType = predictionType
            request.clipGuidance = try clipGuidance.options()
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
