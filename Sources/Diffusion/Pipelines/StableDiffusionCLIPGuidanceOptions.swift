import Foundation

/// CLIP guidance as a request asks for it (``StableDiffusionRequest/clipGuidance``): what
/// ``StableDiffusionCLIPGuidance`` is made from, with the CLIP model named by its folder.
public struct StableDiffusionCLIPGuidanceOptions: Sendable, Equatable {
    /// A folder in transformers' `CLIPModel` layout (config.json and weights), e.g. openai/clip-vit-base-patch32.
    public var model: String
    /// `clip_guidance_scale` (the community pipeline's default is 100).
    public var scale: Double = 100
    /// Cut-outs per image and step (`num_cutouts`).
    public var cutouts = 4
    /// `use_cutouts`; false: the whole image resized to CLIP's input.
    public var useCutouts = true
    /// `cut_power`.
    public var cutPower: Double = 1
    /// What CLIP compares with (`clip_prompt`; nil: the prompt).
    public var prompt: String?
    /// Re-predict the noise with gradients through the UNet (the community pipeline); false: the gradient reaches the
    /// latents through the VAE only (no second UNet pass; see ``StableDiffusionCLIPGuidance``).
    public var throughUNet = true

    public init(model: String, scale: Double = 100) {
        self.model = model
        self.scale = scale
    }

    /// Errors that need no model.
    public func check() throws {
        guard scale >= 0 else { throw StableDiffusionError("--clip-guidance-scale must be at least 0, got \(scale)") }
        guard cutouts >= 1 else { throw StableDiffusionError("--cutouts must be at least 1, got \(cutouts)") }
        guard cutPower > 0 else { throw StableDiffusionError("--cut-power must be above 0, got \(cutPower)") }
    }

    /// Loads the CLIP model; the cut-outs draw from `seed`.
    public func make(seed: UInt64) throws -> StableDiffusionCLIPGuidance {
        try check()
        let url = URL(fileURLWithPath: model)
        guard FileManager.default.fileExists(atPath: url.appendingPathComponent("config.json").path) else {
            throw StableDiffusionError("--clip-model \(model): no config.json; give a folder in transformers' CLIPModel layout")
        }
        return StableDiffusionCLIPGuidance(model: try CLIPModel.load(folder: url), scale: Float(scale), cutouts: cutouts,
                                           useCutouts: useCutouts, cutPower: Float(cutPower), throughUNet: throughUNet,
                                           prompt: prompt, seed: seed)
    }
}
