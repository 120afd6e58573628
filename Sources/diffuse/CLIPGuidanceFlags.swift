import ArgumentParser
import Diffusion

/// `diffuse generate`'s CLIP guidance flags (diffusers' community CLIP-guided Stable Diffusion).
struct CLIPGuidanceFlags: ParsableArguments {
    @Option(help: ArgumentHelp("CLIP guidance in latent space with this CLIP model (transformers' CLIPModel folder).", valueName: "folder"))
    var clipModel: String?
    @Option(help: "CLIP guidance scale (clip_guidance_scale; needs --clip-model).") var clipGuidanceScale: Double = 100
    @Option(help: "CLIP guidance: cut-outs per image and step.") var cutouts = 4
    @Flag(help: "CLIP guidance without cut-outs: the whole image resized to CLIP's input (deterministic).") var noCutouts = false
    @Option(help: "CLIP guidance: the cut-out size power (cut_power; larger favours small cut-outs).") var cutPower: Double = 1
    @Option(help: "CLIP guidance: what CLIP compares the image with (default: the prompt).") var clipPrompt: String?
    @Flag(help: "CLIP guidance without the second UNet pass: the gradient reaches the latents through the VAE only (faster).")
    var clipGuidanceShortcut = false

    /// The request's options, or nil without --clip-model.
    func options() throws -> StableDiffusionCLIPGuidanceOptions? {
        guard let clipModel else {
            if clipPrompt != nil || noCutouts || clipGuidanceShortcut { throw ValidationError("the CLIP guidance flags need --clip-model") }
            return nil
        }
        var options = StableDiffusionCLIPGuidanceOptions(model: clipModel, scale: clipGuidanceScale)
        options.cutouts = cutouts
        options.useCutouts = !noCutouts
        options.cutPower = cutPower
        options.prompt = clipPrompt
        options.throughUNet = !clipGuidanceShortcut
        return options
    }
}
