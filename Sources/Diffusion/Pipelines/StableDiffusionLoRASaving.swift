import Foundation
import NN
import Tensors

extension StableDiffusionPipeline {
    /// The state dict diffusers' `save_lora_weights` writes for adapter `name` (the only one when nil):
    /// `unet.<layer>.lora_A.weight` / `lora_B.weight` and `text_encoder.<layer>…` (without `text_model.`,
    /// as diffusers 0.42 with transformers 5 saves it), and the `lora_adapter_metadata` header entry
    /// holding each component's LoraConfig (`r`, `lora_alpha`, patterns, `target_modules`).
    public func loraStateDict(name: String? = nil) throws -> (tensors: [String: Tensor], metadata: [String: String]) {
        let names = loraAdapterNames
        guard let adapterName = name ?? names.first else { throw StableDiffusionError("no LoRA adapter is attached") }
        guard name != nil || names.count == 1 else {
            throw StableDiffusionError("several LoRA adapters are attached (\(names.joined(separator: ", "))): name the one to save")
        }
        var tensors: [String: Tensor] = [:]
        var configuration: [String: Any] = [:]
        for component in LoRAComponent.allCases {
            var ranks: [String: Int] = [:]
            var alphas: [String: Float] = [:]
            for (path, linear) in module(component).linearLayersByPath() {
                guard let adapter = linear.loraAdapters.first(where: { $0.name == adapterName }) else { continue }
                var key = path
                if component == .textEncoder, key.hasPrefix("text_model.") { key.removeFirst("text_model.".count) }
                let prefix = "\(component.rawValue).\(key)"
                tensors[prefix + ".lora_A.weight"] = adapter.down
                tensors[prefix + ".lora_B.weight"] = adapter.up
                ranks[key] = adapter.rank
                alphas[key] = adapter.alpha
            }
            guard !ranks.isEmpty else { continue }
            let rank = Self.mostCommon(Array(ranks.values))
            let alpha = Self.mostCommon(Array(alphas.values))
            let targets = Set(ranks.keys.map { Self.targetName($0) }).sorted()
            let prefix = component.rawValue + "."
            configuration[prefix + "r"] = rank
            configuration[prefix + "lora_alpha"] = alpha == alpha.rounded() ? Int(alpha) as Any : alpha as Any
            configuration[prefix + "rank_pattern"] = ranks.filter { $0.value != rank }
            configuration[prefix + "alpha_pattern"] = alphas.filter { $0.value != alpha }
            configuration[prefix + "target_modules"] = targets
            configuration[prefix + "use_rslora"] = false
            configuration[prefix + "use_dora"] = false
            configuration[prefix + "lora_bias"] = false
            configuration[prefix + "bias"] = "none"
            configuration[prefix + "init_lora_weights"] = true
            configuration[prefix + "lora_dropout"] = 0.0
        }
        let data = try JSONSerialization.data(withJSONObject: configuration, options: [.sortedKeys, .prettyPrinted])
        return (tensors, ["format": "pt", "lora_adapter_metadata": String(decoding: data, as: UTF8.self)])
    }

    /// Writes adapter `name` as `pytorch_lora_weights.safetensors` (or to `path` when it ends in `.safetensors`),
    /// which diffusers' `load_lora_weights` reads.
    @discardableResult
    public func saveLoRA(to path: String, name: String? = nil) throws -> String {
        let (tensors, metadata) = try loraStateDict(name: name)
        var file = path
        if !path.hasSuffix(".safetensors") {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            file = (path as NSString).appendingPathComponent("pytorch_lora_weights.safetensors")
        }
        try Safetensors.save(tensors, to: file, metadata: metadata, dataType: .float32)
        return file
    }

    /// PEFT's target name of a layer: its last part, or the last two for `to_out.0`.
    static func targetName(_ path: String) -> String {
        let parts = path.split(separator: ".")
        if parts.count >= 2, Int(parts[parts.count - 1]) != nil { return parts.suffix(2).joined(separator: ".") }
        return String(parts.last ?? "")
    }

    static func mostCommon<Value: Hashable & Comparable>(_ values: [Value]) -> Value {
        var counts: [Value: Int] = [:]
        for value in values { counts[value, default: 0] += 1 }
        return counts.max { $0.value != $1.value ? $0.value < $1.value : $0.key > $1.key }!.key
    }
}
