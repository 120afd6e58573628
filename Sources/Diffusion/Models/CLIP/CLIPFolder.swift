import Foundation
import NN
import Tensors

/// Errors reading a transformers CLIP folder.
public enum CLIPFolderError: Error, CustomStringConvertible, Equatable {
    case missingFile(path: String, hint: String)
    case wrongModelType(path: String, found: String, expected: String)

    public var description: String {
        switch self {
        case .missingFile(let path, let hint): return "\(path) does not exist" + (hint.isEmpty ? "" : "; \(hint)")
        case .wrongModelType(let path, let found, let expected):
            return "\(path): model_type \"\(found)\" cannot be loaded as \(expected)"
        }
    }
}

/// transformers' folder layout for CLIP: `config.json` and
/// `model[.variant].safetensors` (or `model.safetensors.index.json` with shards),
/// as in a transformers checkpoint or a diffusers pipeline's `text_encoder/`.
///
/// Weights load in either key layout transformers has used: the towers under
/// `text_model.` / `vision_model.` (every published checkpoint; what Diffuse
/// writes) or, for a lone tower saved by transformers 5, without that prefix.
/// The non-persistent `position_ids` buffers some older files carry are ignored.
public enum CLIPFolder {
    static let weightsBaseName = "model"

    /// The weights file or sharded index of `variant` in `folder`.
    public static func weightsPath(in folder: URL, variant: String?) throws -> String {
        let suffix = variant.map { ".\($0)" } ?? ""
        let candidates = ["\(weightsBaseName)\(suffix).safetensors", "\(weightsBaseName).safetensors.index\(suffix).json",
                          "\(weightsBaseName)\(suffix).safetensors.index.json"]
        for name in candidates {
            let path = folder.appendingPathComponent(name).path
            if FileManager.default.fileExists(atPath: path) { return path }
        }
        let contents = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        let weightFiles = contents.filter { $0.hasPrefix(weightsBaseName) && $0.hasSuffix(".safetensors") }
        if let pickle = contents.first(where: { $0.hasSuffix(".bin") }), weightFiles.isEmpty {
            throw SafetensorsError.pickleCheckpoint(path: folder.appendingPathComponent(pickle).path)
        }
        let present = weightFiles.sorted()
        throw CLIPFolderError.missingFile(path: folder.appendingPathComponent(candidates[0]).path,
                                          hint: present.isEmpty ? "a transformers CLIP folder holds config.json and model.safetensors"
                                              : "the folder has \(present.joined(separator: ", "))")
    }

    /// The parsed `config.json` of `folder`.
    static func configurationObject(in folder: URL) throws -> [String: JSONValue] {
        let path = folder.appendingPathComponent("config.json")
        guard FileManager.default.fileExists(atPath: path.path) else {
            throw CLIPFolderError.missingFile(path: path.path, hint: "a transformers CLIP folder holds config.json and model.safetensors")
        }
        let root: JSONValue
        do {
            root = try JSONText.parse(try String(contentsOf: path, encoding: .utf8))
        } catch let error as JSONSyntaxError {
            throw CLIPConfigurationError.invalidJSON("\(path.path): \(error.description)")
        }
        guard case .object(let members) = root else { throw CLIPConfigurationError.invalidJSON("\(path.path): found a \(root.typeName)") }
        return members
    }

    static func modelType(_ members: [String: JSONValue]) -> String? {
        if case .string(let type)? = members["model_type"] { return type }
        return nil
    }

    /// The text tower's configuration of a `clip_text_model` or a whole `clip` config.
    static func textConfiguration(in folder: URL) throws -> CLIPTextConfiguration {
        let members = try configurationObject(in: folder)
        switch modelType(members) {
        case "clip": return try CLIPConfiguration(jsonObject: members).text
        case "clip_text_model", nil: return try CLIPTextConfiguration(jsonObject: members)
        case let other?: throw CLIPFolderError.wrongModelType(path: folder.path, found: other, expected: "a CLIP text model")
        }
    }

    static func visionConfiguration(in folder: URL) throws -> CLIPVisionConfiguration {
        let members = try configurationObject(in: folder)
        switch modelType(members) {
        case "clip": return try CLIPConfiguration(jsonObject: members).vision
        case "clip_vision_model", nil: return try CLIPVisionConfiguration(jsonObject: members)
        case let other?: throw CLIPFolderError.wrongModelType(path: folder.path, found: other, expected: "a CLIP vision model")
        }
    }

    /// Copies the checkpoint's tensors into `module`, matching each parameter
    /// to the stored name with or without its tower prefix. Names under
    /// `ignoredPrefixes` (the other tower of a whole CLIP) and `position_ids`
    /// buffers are not reported as unexpected.
    static func load(_ module: Module, path: String, strict: Bool, ignoredPrefixes: [String] = [],
                     precision: WeightPrecision = .float32) throws -> StateDictReport {
        let checkpoint = try SafetensorsCheckpoint(path: path)
        var report = StateDictReport()
        var used = Set<String>()
        var sources: [(parameter: Tensor, name: String)] = []
        for (name, parameter) in module.namedParameters() {
            var candidates = [name]
            for prefix in ["text_model.", "vision_model."] where name.hasPrefix(prefix) { candidates.append(String(name.dropFirst(prefix.count))) }
            guard let stored = candidates.first(where: checkpoint.contains) else { report.missing.append(name); continue }
            used.insert(stored)
            let shape = try checkpoint.info(stored).shape
            // A scalar may be stored as [1] by some exporters.
            if shape != parameter.shape && !(parameter.shape.isEmpty && shape == [1]) {
                report.mismatched.append(StateDictReport.ShapeMismatch(name: name, expected: parameter.shape, found: shape))
                continue
            }
            sources.append((parameter, stored))
        }
        report.unexpected = checkpoint.names.filter { name in
            !used.contains(name) && !name.hasSuffix("position_ids") && !ignoredPrefixes.contains { name.hasPrefix($0) }
        }
        if strict && !report.isClean { throw report }
        for (parameter, stored) in sources { try checkpoint.load(stored, into: parameter, precision: precision) }
        return report
    }

    /// Writes `config.json` (with `architectures`) and `model[.variant].safetensors`.
    static func save(_ module: Module, configuration: [String: JSONValue], architecture: String, folder: URL,
                     variant: String?, dataType: DataType?) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        var members = configuration
        members["architectures"] = .array([.string(architecture)])
        let stored = dataType ?? (variant == "fp16" ? .float16 : variant == "bf16" ? .bfloat16 : .float32)
        members["torch_dtype"] = .string(stored == .float16 ? "float16" : stored == .bfloat16 ? "bfloat16" : "float32")
        let text = JSONText.write(.object(members), indent: 2) + "\n"
        try text.write(to: folder.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
        let name = "\(weightsBaseName)\(variant.map { ".\($0)" } ?? "").safetensors"
        try module.saveSafetensors(path: folder.appendingPathComponent(name).path, dataType: stored)
    }
}

extension CLIPTextModel {
    /// Loads a transformers `CLIPTextModel` folder (a pipeline's `text_encoder/`),
    /// or the text tower of a whole `CLIPModel` folder. Float16 and bfloat16 weights are widened.
    /// `precision` chooses how the weights are held (16-bit ones mapped from the file with `.asStored`).
    public static func load(folder: URL, variant: String? = nil, strict: Bool = true, precision: WeightPrecision = .float32) throws -> CLIPTextModel {
        let configuration = try CLIPFolder.textConfiguration(in: folder)
        let model = strict ? Initialization.withoutInitialValues { CLIPTextModel(configuration) } : CLIPTextModel(configuration)
        model.loadReport = try CLIPFolder.load(model, path: try CLIPFolder.weightsPath(in: folder, variant: variant), strict: strict,
                                               ignoredPrefixes: ["vision_model.", "visual_projection.", "text_projection.", "logit_scale"],
                                               precision: precision)
        return model
    }

    /// Writes a folder transformers' `CLIPTextModel.from_pretrained` loads.
    public func save(folder: URL, variant: String? = nil, dataType: DataType? = nil) throws {
        try CLIPFolder.save(self, configuration: configuration.jsonObject, architecture: "CLIPTextModel", folder: folder,
                            variant: variant, dataType: dataType)
    }
}

extension CLIPTextModelWithProjection {
    /// Loads a transformers `CLIPTextModelWithProjection` folder, or the text side of a whole `CLIPModel` folder.
    public static func load(folder: URL, variant: String? = nil, strict: Bool = true) throws -> CLIPTextModelWithProjection {
        var configuration = try CLIPFolder.textConfiguration(in: folder)
        let members = try CLIPFolder.configurationObject(in: folder)
        if CLIPFolder.modelType(members) == "clip" { configuration.projectionDimension = try CLIPConfiguration(jsonObject: members).projectionDimension }
        let model = CLIPTextModelWithProjection(configuration)
        model.loadReport = try CLIPFolder.load(model, path: try CLIPFolder.weightsPath(in: folder, variant: variant), strict: strict,
                                               ignoredPrefixes: ["vision_model.", "visual_projection.", "logit_scale"])
        return model
    }

    public func save(folder: URL, variant: String? = nil, dataType: DataType? = nil) throws {
        try CLIPFolder.save(self, configuration: configuration.jsonObject, architecture: "CLIPTextModelWithProjection", folder: folder,
                            variant: variant, dataType: dataType)
    }
}

extension CLIPVisionModel {
    public static func load(folder: URL, variant: String? = nil, strict: Bool = true) throws -> CLIPVisionModel {
        let model = CLIPVisionModel(try CLIPFolder.visionConfiguration(in: folder))
        model.loadReport = try CLIPFolder.load(model, path: try CLIPFolder.weightsPath(in: folder, variant: variant), strict: strict,
                                               ignoredPrefixes: ["text_model.", "visual_projection.", "text_projection.", "logit_scale"])
        return model
    }

    public func save(folder: URL, variant: String? = nil, dataType: DataType? = nil) throws {
        try CLIPFolder.save(self, configuration: configuration.jsonObject, architecture: "CLIPVisionModel", folder: folder,
                            variant: variant, dataType: dataType)
    }
}

extension CLIPVisionModelWithProjection {
    public static func load(folder: URL, variant: String? = nil, strict: Bool = true) throws -> CLIPVisionModelWithProjection {
        var configuration = try CLIPFolder.visionConfiguration(in: folder)
        let members = try CLIPFolder.configurationObject(in: folder)
        if CLIPFolder.modelType(members) == "clip" { configuration.projectionDimension = try CLIPConfiguration(jsonObject: members).projectionDimension }
        let model = CLIPVisionModelWithProjection(configuration)
        model.loadReport = try CLIPFolder.load(model, path: try CLIPFolder.weightsPath(in: folder, variant: variant), strict: strict,
                                               ignoredPrefixes: ["text_model.", "text_projection.", "logit_scale"])
        return model
    }

    public func save(folder: URL, variant: String? = nil, dataType: DataType? = nil) throws {
        try CLIPFolder.save(self, configuration: configuration.jsonObject, architecture: "CLIPVisionModelWithProjection", folder: folder,
                            variant: variant, dataType: dataType)
    }
}

extension CLIPModel {
    /// Loads a transformers `CLIPModel` folder (`model_type: clip`).
    public static func load(folder: URL, variant: String? = nil, strict: Bool = true) throws -> CLIPModel {
        let members = try CLIPFolder.configurationObject(in: folder)
        if let type = CLIPFolder.modelType(members), type != "clip" {
            throw CLIPFolderError.wrongModelType(path: folder.path, found: type, expected: "a CLIPModel (model_type clip)")
        }
        let model = CLIPModel(try CLIPConfiguration(jsonObject: members))
        model.loadReport = try CLIPFolder.load(model, path: try CLIPFolder.weightsPath(in: folder, variant: variant), strict: strict)
        return model
    }

    /// Writes a folder transformers' `CLIPModel.from_pretrained` loads.
    public func save(folder: URL, variant: String? = nil, dataType: DataType? = nil) throws {
        try CLIPFolder.save(self, configuration: configuration.jsonObject, architecture: "CLIPModel", folder: folder,
                            variant: variant, dataType: dataType)
    }
}
