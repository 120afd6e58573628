import Foundation

/// The generation parameters a PNG carries in its `parameters` text chunk, in the text form of
/// AUTOMATIC1111's web UI (which other Stable Diffusion tools read too):
///
/// ```
/// a photo of an astronaut riding a horse on mars
/// Negative prompt: blurry
/// Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: sd15
/// ```
///
/// The negative prompt line only when there is one; `Denoising strength` for image-to-image and
/// inpainting; `Clip skip` in the web UI's counting (diffusers' `clip_skip` + 1); `Batch size` /
/// `Batch pos` when several images come from one run (they share the seed's generator).
public struct StableDiffusionInfotext: Equatable, Sendable {
    public static func == (first: Self, second: Self) -> Bool { first.text == second.text }

    /// The key of the PNG text chunk.
    public static let key = "parameters"

    public var prompt: String
    public var negativePrompt: String?
    public var steps: Int
    /// The web UI's name of the sampler (see ``samplerName(className:)``).
    public var sampler: String
    public var karras = false
    public var guidanceScale: Double
    public var seed: UInt64
    public var width: Int
    public var height: Int
    /// The model's name (the pipeline folder's name).
    public var model: String
    /// Image-to-image and inpainting.
    public var strength: Double?
    /// diffusers' `clip_skip` (written as `Clip skip: clipSkip + 1`).
    public var clipSkip: Int?
    public var guidanceRescale: Double?
    public var eta: Double?
    public var batchSize = 1
    public var batchPosition = 0
    /// LoRA files and their scales (`LoRA: "style.safetensors:0.8, detail.safetensors:1"`; the file names only).
    public var loras: [(name: String, scale: Float)] = []
    /// CLIP guidance in latent space (`CLIP guidance: "scale 100, 4 cut-outs, model clip-vit-base-patch32"`).
    public var clipGuidance: String?

    public init(prompt: String, negativePrompt: String? = nil, steps: Int, sampler: String, guidanceScale: Double, seed: UInt64,
                width: Int, height: Int, model: String) {
        self.prompt = prompt
        self.negativePrompt = negativePrompt
        self.steps = steps
        self.sampler = sampler
        self.guidanceScale = guidanceScale
        self.seed = seed
        self.width = width
        self.height = height
        self.model = model
    }

    /// The web UI's sampler name for a diffusers scheduler class (the class name when it has none).
    public static func samplerName(className: String) -> String {
        switch SchedulerKind(rawValue: className) {
        case .ddim?: return "DDIM"
        case .pndm?: return "PLMS"
        case .lms?: return "LMS"
        case .euler?: return "Euler"
        case .eulerAncestral?: return "Euler a"
        case .heun?: return "Heun"
        case .dpmSolverMultistep?: return "DPM++ 2M"
        case .uniPCMultistep?: return "UniPC"
        case .ddpm?: return "DDPM"
        case nil: return className
        }
    }

    /// The text: the prompt, the negative prompt line, and the `Key: value` line.
    public var text: String {
        var lines = [prompt]
        if let negativePrompt, !negativePrompt.isEmpty { lines.append("Negative prompt: " + negativePrompt) }
        var fields: [(String, String)] = [("Steps", "\(steps)"), ("Sampler", sampler)]
        if karras { fields.append(("Schedule type", "Karras")) }
        fields += [("CFG scale", Self.number(guidanceScale)), ("Seed", "\(seed)"), ("Size", "\(width)x\(height)"), ("Model", model)]
        if let strength { fields.append(("Denoising strength", Self.number(strength))) }
        if let clipSkip { fields.append(("Clip skip", "\(clipSkip + 1)")) }
        if let guidanceRescale, guidanceRescale > 0 { fields.append(("CFG rescale", Self.number(guidanceRescale))) }
        if let eta, eta > 0 { fields.append(("Eta", Self.number(eta))) }
        if batchSize > 1 { fields += [("Batch size", "\(batchSize)"), ("Batch pos", "\(batchPosition)")] }
        if !loras.isEmpty { fields.append(("LoRA", loras.map { "\($0.name):\($0.scale == $0.scale.rounded() ? String(Int($0.scale)) : String($0.scale))" }.joined(separator: ", "))) }
        if let clipGuidance { fields.append(("CLIP guidance", clipGuidance)) }
        lines.append(fields.map { "\($0): \(Self.quoted($1))" }.joined(separator: ", "))
        return lines.joined(separator: "\n")
    }

    /// `7.5`, `7` for whole numbers (as Python prints the web UI's floats: `7.0` → `7` is its own rounding).
    static func number(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
    }

    /// A value with a comma, colon or newline in JSON quotes, as the web UI's `quote`.
    static func quoted(_ value: String) -> String {
        guard value.contains(where: { $0 == "," || $0 == ":" || $0 == "\n" || $0 == "\"" }) else { return value }
        let escaped = value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
        return "\"" + escaped + "\""
    }
}
