import Foundation
import NN

/// The `model_index.json` of a diffusers Stable Diffusion pipeline folder: the pipeline class and,
/// for each component, the library and class that stores it (`null` for a component left out).
///
/// ```json
/// {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
///  "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
///  "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
///  "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [null, null], ...}
/// ```
public struct StableDiffusionModelIndex: Equatable, Sendable {
    /// One component entry: `[library, class]`.
    public struct Component: Equatable, Sendable {
        public var library: String
        public var className: String

        public init(library: String, className: String) {
            self.library = library
            self.className = className
        }
    }

    /// `_class_name`.
    public var className: String
    /// `_diffusers_version` as read (written back as the version Diffuse follows).
    public var diffusersVersion: String?
    /// Every component key, with nil for `[null, null]`.
    public var components: [String: Component?]
    /// `requires_safety_checker`, when the file has it.
    public var requiresSafetyChecker: Bool?

    /// The pipeline classes whose folders hold Stable Diffusion's components (image-to-image
    /// pipelines save the same parts).
    public static let supportedClassNames: [String] = ["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"]
    /// The components the pipelines run, in diffusers' order.
    public static let requiredComponents = ["text_encoder", "tokenizer", "unet", "vae", "scheduler"]
    /// Components diffusers lists as optional; accepted (null or present) and not run.
    public static let optionalComponents = ["safety_checker", "feature_extractor", "image_encoder"]

    public init(className: String = "StableDiffusionPipeline", components: [String: Component?], requiresSafetyChecker: Bool? = false) {
        self.className = className
        self.diffusersVersion = SchedulerConfiguration.diffusersVersion
        self.components = components
        self.requiresSafetyChecker = requiresSafetyChecker
    }

    /// Reads and checks `model_index.json`: the class must be a Stable Diffusion pipeline and every
    /// key a known component (private `_` keys aside).
    public static func load(contentsOf url: URL) throws -> StableDiffusionModelIndex {
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw ModelFolderError.missingFile(path: url.path, hint: "a diffusers pipeline folder has model_index.json")
        }
        func invalid(_ reason: String) -> ModelFolderError { .invalidModelIndex(path: url.path, reason: reason) }
        let root: JSONValue
        do {
            root = try JSONText.parse(String(contentsOf: url, encoding: .utf8))
        } catch let error as JSONSyntaxError {
            throw invalid(error.description)
        }
        guard case .object(let members) = root else { throw invalid("not a JSON object") }
        guard case .string(let className)? = members["_class_name"] else { throw invalid("no \"_class_name\" string") }
        guard supportedClassNames.contains(className) else {
            throw invalid("pipeline class \"\(className)\" is not a Stable Diffusion pipeline Diffuse runs; supported: "
                          + supportedClassNames.joined(separator: ", "))
        }
        var index = StableDiffusionModelIndex(className: className, components: [:], requiresSafetyChecker: nil)
        if case .string(let version)? = members["_diffusers_version"] { index.diffusersVersion = version } else { index.diffusersVersion = nil }
        let known = Set(requiredComponents + optionalComponents)
        for (key, value) in members.sorted(by: { $0.key < $1.key }) where !key.hasPrefix("_") {
            if key == "requires_safety_checker" {
                guard case .bool(let flag) = value else { throw invalid("\"requires_safety_checker\" must be true or false") }
                index.requiresSafetyChecker = flag
                continue
            }
            guard known.contains(key) else {
                throw invalid("component \"\(key)\" is not part of a Stable Diffusion pipeline (components: "
                              + (requiredComponents + optionalComponents).joined(separator: ", ") + ")")
            }
            guard case .array(let pair) = value, pair.count == 2 else {
                throw invalid("component \"\(key)\" must be [library, class] or [null, null]")
            }
            switch (pair[0], pair[1]) {
            case (.null, .null):
                index.components[key] = .some(nil)
            case (.string(let library), .string(let type)):
                index.components[key] = Component(library: library, className: type)
            default:
                throw invalid("component \"\(key)\" must be [library, class] or [null, null]")
            }
        }
        for key in requiredComponents {
            guard let entry = index.components[key] else { throw invalid("the pipeline has no \"\(key)\" component") }
            guard entry != nil else { throw invalid("component \"\(key)\" is null; a Stable Diffusion pipeline needs it") }
        }
        return index
    }

    /// The `[library, class]` of a required component (nil when absent or null).
    public func component(_ key: String) -> Component? { components[key] ?? nil }

    /// Checks a required component's library and class against what Diffuse loads.
    func check(_ key: String, library: String, classNames: [String], path: String) throws -> Component {
        guard let entry = component(key) else {
            throw ModelFolderError.invalidModelIndex(path: path, reason: "the pipeline has no \"\(key)\" component")
        }
        guard entry.library == library, classNames.contains(entry.className) else {
            throw ModelFolderError.invalidModelIndex(
                path: path, reason: "component \"\(key)\" is [\"\(entry.library)\", \"\(entry.className)\"]; Diffuse loads "
                    + classNames.map { "[\"\(library)\", \"\($0)\"]" }.joined(separator: " or "))
        }
        return entry
    }

    /// The optional components the folder has (not null), which Diffuse does not run, as `key (Class)`.
    public var componentsNotRun: [String] {
        Self.optionalComponents.compactMap { key in component(key).map { "\(key) (\($0.className))" } }
    }

    /// The text diffusers writes: `json.dumps(config, indent=2, sort_keys=True)` and a newline.
    public var jsonText: String {
        var object: [String: JSONValue] = [
            "_class_name": .string(className),
            "_diffusers_version": .string(SchedulerConfiguration.diffusersVersion),
        ]
        for (key, entry) in components {
            object[key] = .array(entry.map { [.string($0.library), .string($0.className)] } ?? [.null, .null])
        }
        if let requiresSafetyChecker { object["requires_safety_checker"] = .bool(requiresSafetyChecker) }
        return JSONText.write(.object(object), indent: 2) + "\n"
    }
}
