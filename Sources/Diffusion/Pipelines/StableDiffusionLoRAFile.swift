import Foundation
import NN
import Tensors

/// The model of a Stable Diffusion pipeline a LoRA entry adapts.
public enum LoRAComponent: String, Sendable, CaseIterable {
    case unet
    case textEncoder = "text_encoder"
}

/// The key layout of a LoRA file, as diffusers' `load_lora_weights` tells them apart.
public enum LoRAFileFormat: String, Sendable {
    /// PEFT's, which diffusers' training scripts save: `unet.….to_q.lora_A.weight`, `lora_B.weight`,
    /// LoraConfigs in the `lora_adapter_metadata` header entry, optional `.alpha` entries.
    case peft
    /// diffusers' older attention-processor layout: `unet.….processor.to_q_lora.down.weight`,
    /// `text_encoder.….q_proj.lora_linear_layer.up.weight`.
    case diffusersLegacy
    /// kohya-ss / A1111: `lora_unet_down_blocks_0_…_to_q.lora_down.weight`, `lora_te_…`, `.alpha`.
    case kohya
}

/// One adapted layer of a LoRA file: the component, the layer's name (a dotted module path in
/// diffusers' naming, or kohya's underscored one, resolved against the model later), A, B and alpha.
public struct LoRAFileEntry {
    public let component: LoRAComponent
    /// The layer as the file names it: `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`,
    /// or for kohya `down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`.
    public let module: String
    /// A, `[rank, in]`.
    public let down: Tensor
    /// B, `[out, rank]`.
    public let up: Tensor
    /// The update is scaled by `alpha / rank`.
    public let alpha: Float
    /// The name in the file of one of its two tensors, for messages.
    public let key: String
}

/// A LoRA file read as diffusers' `StableDiffusionLoraLoaderMixin.lora_state_dict` reads it.
public struct LoRAFile {
    public let path: String
    public let format: LoRAFileFormat
    public let entries: [LoRAFileEntry]
    /// Keys that are not part of any A/B pair this reader understands (diffusers would warn of them).
    public let unrecognizedKeys: [String]

    /// Reads `path` (a `.safetensors` file, or a folder holding `pytorch_lora_weights.safetensors`).
    public init(path: String) throws {
        var file = path
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            file = (path as NSString).appendingPathComponent("pytorch_lora_weights.safetensors")
        }
        guard FileManager.default.fileExists(atPath: file) else { throw StableDiffusionError("LoRA file \(file) does not exist") }
        let tensors = try Safetensors.load(path: file, as: .float32)
        let metadata = try Safetensors.metadata(path: file)
        try self.init(tensors: tensors, metadata: metadata, path: file)
    }

    /// Reads a state dict and its header metadata.
    public init(tensors: [String: Tensor], metadata: [String: String] = [:], path: String = "<memory>") throws {
        self.path = path
        let keys = tensors.keys.filter { !$0.contains("dora_scale") }
        guard !keys.isEmpty else { throw StableDiffusionError("LoRA file \(path) holds no tensors") }
        let kohyaPrefixes = ["lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"]
        if keys.allSatisfy({ key in kohyaPrefixes.contains { key.hasPrefix($0) } }) {
            format = .kohya
        } else if keys.contains(where: { $0.contains(".lora_A.") || $0.contains(".lora_B.") }) {
            format = .peft
        } else {
            format = .diffusersLegacy
        }
        let configurations = LoRAConfigurationMetadata.parse(metadata)
        var pairs: [String: (component: LoRAComponent, module: String, down: Tensor?, up: Tensor?, alpha: Float?, key: String)] = [:]
        var unrecognized: [String] = []
        for key in keys.sorted() {
            guard let parsed = Self.parse(key: key, format: format) else { unrecognized.append(key); continue }
            let identifier = "\(parsed.component.rawValue)/\(parsed.module)"
            var pair = pairs[identifier] ?? (parsed.component, parsed.module, nil, nil, nil, key)
            let tensor = tensors[key]!
            switch parsed.part {
            case .down: pair.down = tensor
            case .up: pair.up = tensor
            case .alpha: pair.alpha = tensor.toArray().first
            }
            pairs[identifier] = pair
        }
        var entries: [LoRAFileEntry] = []
        for identifier in pairs.keys.sorted() {
            let pair = pairs[identifier]!
            guard let down = pair.down, let up = pair.up else {
                unrecognized.append(pair.key)
                continue
            }
            guard down.rank == 2, up.rank == 2, up.shape[1] == down.shape[0] else {
                throw StableDiffusionError("LoRA \(pair.key): A \(down.shape) and B \(up.shape) are not the [rank, in] and [out, rank] of a linear layer (convolution LoRAs are not supported)")
            }
            let rank = down.shape[0]
            var alpha = pair.alpha ?? Float(rank)
            if let configuration = configurations[pair.component] {
                alpha = configuration.alpha(module: pair.module, rank: rank)
            }
            entries.append(LoRAFileEntry(component: pair.component, module: pair.module, down: down, up: up, alpha: alpha, key: pair.key))
        }
        self.entries = entries
        unrecognizedKeys = unrecognized
    }

    enum Part { case down, up, alpha }

    /// Splits a key into component, module and part, or nil for a key no LoRA layout knows.
    static func parse(key: String, format: LoRAFileFormat) -> (component: LoRAComponent, module: String, part: Part)? {
        switch format {
        case .kohya:
            let component: LoRAComponent = key.hasPrefix("lora_unet_") ? .unet : .textEncoder
            guard !key.hasPrefix("lora_te2_"), let dot = key.firstIndex(of: ".") else { return nil }
            let name = key[..<dot]
            let module = String(name.drop { $0 != "_" }.dropFirst().drop { $0 != "_" }.dropFirst())   // after lora_unet_ / lora_te_
            let part: Part
            switch key[key.index(after: dot)...] {
            case "lora_down.weight": part = .down
            case "lora_up.weight": part = .up
            case "alpha": part = .alpha
            default: return nil
            }
            return (component, module, part)
        case .peft, .diffusersLegacy:
            var rest = Substring(key)
            var component = LoRAComponent.unet
            if rest.hasPrefix("unet.") {
                rest = rest.dropFirst(5)
            } else if rest.hasPrefix("text_encoder.") {
                component = .textEncoder
                rest = rest.dropFirst(13)
            }
            let suffixes: [(String, Part)] = format == .peft
                ? [(".lora_A.weight", .down), (".lora_B.weight", .up), (".alpha", .alpha)]
                : [("_lora.down.weight", .down), ("_lora.up.weight", .up), (".lora_linear_layer.down.weight", .down),
                   (".lora_linear_layer.up.weight", .up), (".alpha", .alpha)]
            guard let (suffix, part) = suffixes.first(where: { rest.hasSuffix($0.0) }) else { return nil }
            var module = String(rest.dropLast(suffix.count))
            if format == .diffusersLegacy {
                // `attn1.processor.to_out_lora` → `attn1.to_out.0`; `to_q_lora` → `to_q`.
                module = module.replacingOccurrences(of: ".processor.", with: ".")
                if module.hasSuffix(".to_out") { module += ".0" }
            }
            return (component, module, part)
        }
    }
}

/// diffusers' LoraConfig metadata per component (`unet.r`, `unet.lora_alpha`, `unet.alpha_pattern`, …
/// in the `lora_adapter_metadata` header entry).
struct LoRAConfigurationMetadata {
    var alpha: Float?
    var alphaPattern: [(String, Float)] = []
    var rankStabilized = false

    /// The alpha PEFT gives `module` (pattern, else `lora_alpha`, else the rank); rsLoRA's
    /// `alpha / √rank` scaling is returned as the alpha with that scaling under `alpha / rank`.
    func alpha(module: String, rank: Int) -> Float {
        let match = alphaPattern.first { pattern, _ in
            let key = pattern.hasPrefix("^") ? String(pattern.dropFirst()) : pattern
            return module == key || module.hasSuffix("." + key)
        }
        let value = match?.1 ?? alpha ?? Float(rank)
        return rankStabilized ? value * Float(rank).squareRoot() : value
    }

    static func parse(_ metadata: [String: String]) -> [LoRAComponent: LoRAConfigurationMetadata] {
        guard let text = metadata["lora_adapter_metadata"], let data = text.data(using: .utf8),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return [:] }
        var result: [LoRAComponent: LoRAConfigurationMetadata] = [:]
        for component in LoRAComponent.allCases {
            let prefix = component.rawValue + "."
            let fields = object.filter { $0.key.hasPrefix(prefix) }
            guard !fields.isEmpty else { continue }
            var configuration = LoRAConfigurationMetadata()
            configuration.alpha = (fields[prefix + "lora_alpha"] as? NSNumber)?.floatValue
            if let pattern = fields[prefix + "alpha_pattern"] as? [String: Any] {
                configuration.alphaPattern = pattern.compactMap { key, value in (value as? NSNumber).map { (key, $0.floatValue) } }
                    .sorted { $0.0.count > $1.0.count }
            }
            configuration.rankStabilized = (fields[prefix + "use_rslora"] as? Bool) ?? false
            result[component] = configuration
        }
        return result
    }
}
