import Diffusion
import Foundation

/// What any of the three APIs asks for, in Diffuse's terms, before it is checked against a model
/// and the limits (``OrderBuilder``).
struct GenerationFields {
    var prompt: String?
    var negativePrompt: String?
    var steps: Int?
    /// A scheduler's class or short name (A1111 sampler names are translated before).
    var scheduler: String?
    var eta: Double?
    /// -1 (or nil): random.
    var seed: Int64?
    var count: Int?
    /// Class labels as `diffuse sample --class` takes them.
    var classes: String?
    var guidanceScale: Double?
    var guidanceRescale: Double?
    /// Loss guidance terms (`color=#RRGGBB`).
    var guides: [String] = []
    var guideScale: Double?
    var guideMode: String?
    var width: Int?
    var height: Int?
    var clipSkip: Int?
    /// Image-to-image: base64 PNG or JPEG (a `data:` URL prefix is accepted).
    var initImage: String?
    /// Base64 inpainting mask (white repaints) for `initImage`, the same size.
    var mask: String?
    var strength: Double?
    var previewEvery: Int?
    /// LoRAs by the names the server was started with (`--lora`), and their scales (Stable Diffusion models).
    var loras: [(name: String, scale: Double)] = []
    /// A CLIP model by name (`--clip-model`): Stable Diffusion CLIP guidance, or pixel models' `clip=` guides.
    var clipModel: String?
    /// Stable Diffusion CLIP guidance's scale (`clip_guidance_scale`; needs `clipModel`).
    var clipGuidanceScale: Double?
    /// What CLIP compares with (nil: the prompt).
    var clipPrompt: String?
    /// CLIP cut-outs per image and step.
    var clipCutouts: Int?
    /// A classifier by name (`--classifier`): classifier guidance of pixel models towards `classes`.
    var classifier: String?
    var classifierScale: Double?
}

/// A1111 sampler names and Diffuse's schedulers.
enum SamplerNames {
    /// A1111's names (and Diffuse's short ones) of the schedulers Diffuse has.
    static let table: [(name: String, kind: SchedulerKind, aliases: [String])] = [
        ("Euler", .euler, ["k_euler", "euler"]),
        ("Euler a", .eulerAncestral, ["k_euler_a", "euler-ancestral", "euler_a"]),
        ("DDIM", .ddim, ["ddim"]),
        ("PLMS", .pndm, ["pndm", "plms"]),
        ("LMS", .lms, ["k_lms", "lms"]),
        ("Heun", .heun, ["k_heun", "heun"]),
        ("DPM++ 2M", .dpmSolverMultistep, ["k_dpmpp_2m", "dpm", "dpmsolver++"]),
        ("UniPC", .uniPCMultistep, ["unipc"]),
        ("DDPM", .ddpm, ["ddpm"]),
    ]

    /// The scheduler a name means: an A1111 sampler name, an alias, or a Diffuse name.
    static func kind(_ name: String) -> SchedulerKind? {
        let lowered = name.trimmingCharacters(in: .whitespaces).lowercased()
        if let entry = table.first(where: { $0.name.lowercased() == lowered || $0.aliases.contains(lowered) }) { return entry.kind }
        if lowered == "automatic" || lowered.isEmpty { return nil }
        return SchedulerNames.kind(name)
    }

    /// The sampler names a client may send, for messages.
    static var known: String { table.map(\.name).joined(separator: ", ") + " (or a diffusers scheduler class name)" }
}
