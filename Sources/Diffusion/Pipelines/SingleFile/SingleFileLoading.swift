import Foundation
import NN
import Tensors

extension StableDiffusionSingleFile {
    /// Builds the UNet and copies its weights from the file, renamed from the original layout.
    ///
    /// - Parameters:
    ///   - strict: when true, a parameter the file lacks, a tensor under `model.diffusion_model.` the model
    ///     does not have, or a wrong shape throws a `StateDictReport` naming them all (nothing is loaded then).
    ///   - precision: how the weights are held (`.asStored` keeps a float16 file's weights mapped from it).
    public func loadUNet(strict: Bool = true, precision: WeightPrecision = .float32) throws -> UNet2DConditionModel {
        let configuration = unetConfiguration
        let model = try ModelFolder.build(strict: strict) { try UNet2DConditionModel(configuration: configuration) }
        let structure = SingleFileKeys.UNetStructure(configuration)
        model.loadReport = try load(model, prefixes: [SingleFileKeys.unetPrefix], strict: strict, precision: precision) { name in
            SingleFileKeys.unetName(name, structure: structure).map { SingleFileSource([SingleFileKeys.unetPrefix + $0]) }
        }
        return model
    }

    /// Builds the VAE and copies its weights (the attention's 1×1 convolutions read as linear layers).
    /// Tensors under `first_stage_model.loss.` (the training discriminator some files carry) are ignored.
    public func loadVAE(strict: Bool = true, precision: WeightPrecision = .float32) throws -> AutoencoderKL {
        let configuration = vaeConfiguration
        let model = try ModelFolder.build(strict: strict) { try AutoencoderKL(configuration: configuration) }
        let levels = configuration.blockOutChannels.count
        model.loadReport = try load(model, prefixes: [SingleFileKeys.vaePrefix], ignoring: { $0.hasPrefix(SingleFileKeys.vaePrefix + "loss.") },
                                    strict: strict, precision: precision) { name in
            SingleFileKeys.vaeName(name, levels: levels).map { SingleFileSource([SingleFileKeys.vaePrefix + $0]) }
        }
        return model
    }

    /// Builds the text encoder (transformers' `CLIPTextModel`) and copies its weights: as stored for 1.x,
    /// renamed and with q, k, v split out of `in_proj_weight` for OpenCLIP. `position_ids`, OpenCLIP's
    /// `text_projection`, `logit_scale`, `attn_mask` and the layers beyond the penultimate are ignored.
    public func loadTextEncoder(strict: Bool = true, precision: WeightPrecision = .float32) throws -> CLIPTextModel {
        let configuration = textConfiguration
        let model = strict ? Initialization.withoutInitialValues { CLIPTextModel(configuration) } : CLIPTextModel(configuration)
        switch textEncoderLayout {
        case .clip:
            model.loadReport = try load(model, prefixes: [SingleFileKeys.clipPrefix], ignoring: { $0.hasSuffix("position_ids") },
                                        strict: strict, precision: precision) { SingleFileKeys.clipSource($0) }
        case .openCLIP:
            let open = SingleFileKeys.openCLIPPrefix
            let layers = configuration.hiddenLayerCount
            let ignored: (String) -> Bool = { name in
                if ["text_projection", "logit_scale", "attn_mask"].contains(where: { name == open + $0 }) { return true }
                let resblocks = open + "transformer.resblocks."
                guard name.hasPrefix(resblocks), let layer = Int(name.dropFirst(resblocks.count).prefix { $0 != "." }) else { return false }
                return layer >= layers
            }
            model.loadReport = try load(model, prefixes: [open], ignoring: ignored, strict: strict, precision: precision) {
                SingleFileKeys.openCLIPSource($0)
            }
        }
        return model
    }

    /// Matches every parameter of `module` to its stored tensor, reports what does not fit (the file's
    /// tensors under `prefixes` that no parameter takes, unless `ignoring` them), then loads one tensor at a time.
    func load(_ module: Module, prefixes: [String], ignoring: (String) -> Bool = { _ in false }, strict: Bool,
              precision: WeightPrecision, source: (String) -> SingleFileSource?) throws -> StateDictReport {
        var report = StateDictReport()
        var used = Set<String>()
        var plan: [(parameter: Tensor, stored: String, transform: SingleFileSource.Transform)] = []
        for (name, parameter) in module.namedParameters() {
            guard let located = source(name), let stored = located.names.first(where: checkpoint.contains) else {
                report.missing.append(source(name)?.names.first ?? name)
                continue
            }
            used.insert(stored)
            let shape = try checkpoint.info(stored).shape
            let fits: Bool
            switch located.transform {
            case .whole:
                // A 1×1 convolution [C, C, 1, 1] (or a 1-D conv [C, C, 1]) stored for a linear [C, C].
                fits = shape == parameter.shape || (shape.count > parameter.shape.count && Array(shape.prefix(parameter.shape.count)) == parameter.shape
                                                    && shape.dropFirst(parameter.shape.count).allSatisfy { $0 == 1 })
            case .rows(_, let parts):
                fits = !shape.isEmpty && shape[0] == parts * (parameter.shape.first ?? 0) && Array(shape.dropFirst()) == Array(parameter.shape.dropFirst())
            }
            guard fits else {
                report.mismatched.append(StateDictReport.ShapeMismatch(name: stored, expected: parameter.shape, found: shape))
                continue
            }
            plan.append((parameter, stored, located.transform))
        }
        report.unexpected = checkpoint.names.filter { name in
            prefixes.contains { name.hasPrefix($0) } && !used.contains(name) && !ignoring(name)
        }
        if strict && !report.isClean { throw report }
        for (parameter, stored, transform) in plan {
            switch transform {
            case .whole:
                try checkpoint.load(stored, into: parameter, precision: precision)
            case .rows(let part, _):
                let rows = parameter.shape[0]
                let storedType = try checkpoint.info(stored).dataType.engineDataType
                let slice = try checkpoint.tensor(stored, as: .float32).narrowed(axis: 0, start: part * rows, length: rows).contiguous()
                let held = Self.heldType(precision, stored: storedType)
                if held == .float32 {
                    if parameter.dataType != .float32 { parameter.replaceStorage(with: Storage(count: parameter.count)) }
                    parameter.copyValues(from: slice)
                } else {
                    parameter.requiresGrad = false
                    parameter.replaceStorage(with: slice.converted(to: held).storage)
                }
            }
        }
        return report
    }

    /// The type a parameter stored as `stored` is held in under `precision`.
    static func heldType(_ precision: WeightPrecision, stored: DataType?) -> DataType {
        switch precision {
        case .float32: return .float32
        case .asStored: return stored ?? .float32
        case .bfloat16: return .bfloat16
        case .float16: return .float16
        }
    }
}
