import Foundation
import NN
import Tensors

/// What loading one LoRA file did.
public struct LoRALoadReport: Sendable {
    /// The adapter name the layers got.
    public let adapterName: String
    /// Adapted layers per component.
    public let adaptedLayers: [String: Int]
    /// Keys of the file that matched no layer of the model or no LoRA layout
    /// (diffusers warns of these and loads the rest).
    public let unmatchedKeys: [String]

    /// A warning naming the unmatched keys, if any.
    public var warning: String? {
        guard !unmatchedKeys.isEmpty else { return nil }
        let shown = unmatchedKeys.prefix(8).joined(separator: ", ")
        return "LoRA \(adapterName): \(unmatchedKeys.count) keys matched no layer and were ignored: \(shown)\(unmatchedKeys.count > 8 ? ", …" : "")"
    }
}

extension Module {
    /// Every `Linear` in the tree by its state-dict path.
    func linearLayersByPath() -> [String: Linear] {
        var result: [String: Linear] = [:]
        for (path, module) in namedModules() {
            if let linear = module as? Linear { result[path] = linear }
        }
        return result
    }
}

extension StableDiffusionPipeline {
    /// The root module of `component`.
    public func module(_ component: LoRAComponent) -> Module {
        switch component {
        case .unet: unet
        case .textEncoder: textEncoder
        }
    }

    /// Loads a LoRA file as diffusers' `load_lora_weights` does (PEFT, legacy diffusers or kohya keys)
    /// and attaches its adapters, unfused, to the UNet's and the text encoder's linear layers.
    ///
    /// - Parameters:
    ///   - scale: the adapter's weight (diffusers' `set_adapters(..., adapter_weights=)`).
    ///   - name: the adapter name; `lora0`, `lora1`, … by default.
    /// - Throws: when no key of the file matches a layer, or A and B do not fit their layer.
    @discardableResult
    public func loadLoRA(path: String, scale: Float = 1, name: String? = nil) throws -> LoRALoadReport {
        try attachLoRA(LoRAFile(path: path), scale: scale, name: name)
    }

    /// Attaches the adapters of `file` (see ``loadLoRA(path:scale:name:)``).
    @discardableResult
    public func attachLoRA(_ file: LoRAFile, scale: Float = 1, name: String? = nil) throws -> LoRALoadReport {
        let adapterName = name ?? "lora\(loraAdapterNames.count)"
        guard !loraAdapterNames.contains(adapterName) else { throw StableDiffusionError("a LoRA named \(adapterName) is already loaded") }
        var layers: [LoRAComponent: [String: Linear]] = [:]
        var kohyaLayers: [LoRAComponent: [String: Linear]] = [:]
        for component in LoRAComponent.allCases {
            let byPath = module(component).linearLayersByPath()
            layers[component] = byPath
            kohyaLayers[component] = Dictionary(byPath.map { ($0.key.replacingOccurrences(of: ".", with: "_"), $0.value) },
                                                uniquingKeysWith: { first, _ in first })
        }
        var matches: [(LoRAFileEntry, Linear)] = []
        var unmatched = file.unrecognizedKeys
        for entry in file.entries {
            let table = (file.format == .kohya ? kohyaLayers : layers)[entry.component]!
            let separator = file.format == .kohya ? "_" : "."
            // transformers 5 saves the text encoder's keys without `text_model.`; older files have it.
            let candidates = entry.component == .textEncoder
                ? [entry.module, "text_model" + separator + entry.module] : [entry.module]
            guard let linear = candidates.lazy.compactMap({ table[$0] }).first else {
                unmatched.append(entry.key)
                continue
            }
            guard entry.down.shape[1] == linear.inFeatures, entry.up.shape[0] == linear.outFeatures else {
                throw StableDiffusionError("LoRA \(entry.key): A \(entry.down.shape) and B \(entry.up.shape) do not fit the layer of \(linear.inFeatures) → \(linear.outFeatures) features")
            }
            matches.append((entry, linear))
        }
        guard !matches.isEmpty else {
            throw StableDiffusionError("LoRA \(file.path): no key matches a layer of the UNet or the text encoder: \(unmatched.prefix(8).joined(separator: ", "))")
        }
        var counts: [String: Int] = [:]
        for (entry, linear) in matches {
            linear.attachLoRA(LoRAAdapter(down: entry.down, up: entry.up, alpha: entry.alpha, scale: scale, name: adapterName))
            counts[entry.component.rawValue, default: 0] += 1
        }
        return LoRALoadReport(adapterName: adapterName, adaptedLayers: counts, unmatchedKeys: unmatched.sorted())
    }

    /// The names of the attached adapters, in the order they were loaded.
    public var loraAdapterNames: [String] {
        var names: [String] = []
        for component in LoRAComponent.allCases {
            for (_, linear) in module(component).linearLayersByPath().sorted(by: { $0.key < $1.key }) {
                for adapter in linear.loraAdapters where !names.contains(adapter.name) { names.append(adapter.name) }
            }
        }
        return names
    }

    /// Sets the weight of adapter `name` (all when nil) everywhere (diffusers' `set_adapters`). A fused
    /// adapter is unfused and fused again so its weight counts.
    public func setLoRAScale(_ scale: Float, name: String? = nil) {
        forEachAdapter(name: name) { linear, adapter in
            let fused = adapter.isFused
            if fused { linear.unfuseLoRA(named: adapter.name) }
            adapter.scale = scale
            if fused { linear.fuseLoRA(named: adapter.name) }
        }
    }

    /// Adds the adapters into the weights (diffusers' `fuse_lora`): no extra cost per step after.
    public func fuseLoRA(name: String? = nil) {
        for component in LoRAComponent.allCases {
            for linear in module(component).linearLayersByPath().values { linear.fuseLoRA(named: name) }
        }
    }

    /// Subtracts fused adapters from the weights again (diffusers' `unfuse_lora`).
    public func unfuseLoRA(name: String? = nil) {
        for component in LoRAComponent.allCases {
            for linear in module(component).linearLayersByPath().values { linear.unfuseLoRA(named: name) }
        }
    }

    /// Removes adapter `name` (all when nil), unfusing it first (diffusers' `delete_adapters` / `unload_lora_weights`).
    public func unloadLoRA(name: String? = nil) {
        for component in LoRAComponent.allCases {
            for linear in module(component).linearLayersByPath().values { linear.detachLoRA(named: name) }
        }
    }

    private func forEachAdapter(name: String?, _ body: (Linear, LoRAAdapter) -> Void) {
        for component in LoRAComponent.allCases {
            for linear in module(component).linearLayersByPath().values {
                for adapter in linear.loraAdapters where name == nil || adapter.name == name { body(linear, adapter) }
            }
        }
    }
}

/// A LoRA file to load for a generation, with its scale.
public struct LoRARequest: Sendable, Equatable {
    public var path: String
    public var scale: Float

    public init(path: String, scale: Float = 1) {
        self.path = path
        self.scale = scale
    }

    /// Parses `FILE` or `FILE:SCALE` (the text after the last colon, when it is a number).
    public init?(argument: String) {
        if let colon = argument.lastIndex(of: ":"), let scale = Float(argument[argument.index(after: colon)...]) {
            guard colon > argument.startIndex else { return nil }
            self.init(path: String(argument[..<colon]), scale: scale)
        } else {
            guard !argument.isEmpty else { return nil }
            self.init(path: argument)
        }
    }
}

extension StableDiffusionRun {
    /// Loads the request's LoRAs into `pipeline` (named `lora0`, `lora1`, …) and fuses them when asked;
    /// keys that matched no layer go to `log` as a warning, as diffusers warns of them.
    public static func applyLoRAs(_ request: StableDiffusionRequest, to pipeline: StableDiffusionPipeline,
                                  log: ((String) -> Void)? = nil) throws {
        guard !request.loras.isEmpty else { return }
        for (index, lora) in request.loras.enumerated() {
            let report = try pipeline.loadLoRA(path: lora.path, scale: lora.scale, name: "lora\(index)")
            if let warning = report.warning { log?("warning: " + warning) }
        }
        if request.fuseLoRA { pipeline.fuseLoRA() }
    }
}
