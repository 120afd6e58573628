import Foundation
import NN
import Tensors

/// Reading and writing diffusers' `vae/` folders: `config.json` and
/// `diffusion_pytorch_model[.variant].safetensors` (or a sharded index).
enum AutoencoderFolder {
    /// The `config.json` URL of `folder`, or an error saying it is missing.
    static func configurationURL(in folder: URL) throws -> URL {
        let url = folder.appendingPathComponent(ModelFolder.configurationName)
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw ModelFolderError.missingFile(path: url.path, hint: "a diffusers model folder holds config.json and the weights")
        }
        return url
    }

    /// The names diffusers' old attention blocks used (`query`, `key`, `value`,
    /// `proj_attn`), which it still converts on load (`_convert_deprecated_attention_blocks`):
    /// Stable Diffusion VAE files from before diffusers 0.14 (CompVis/stable-diffusion-v1-4,
    /// stabilityai/sd-vae-ft-mse) store the mid-block attentions that way.
    static func deprecatedName(_ name: String) -> String? {
        guard name.contains(".attentions.") else { return nil }
        for (current, old) in [(".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")]
        where name.contains(current) {
            return name.replacingOccurrences(of: current, with: old)
        }
        return nil
    }

    /// Copies the checkpoint at `path` (a file or sharded index) into `model`,
    /// accepting the deprecated attention names and 1×1-convolution shapes
    /// `[C, C, 1, 1]` for the attention projections, holding the weights as
    /// `precision` says. Reports (and, when `strict`, throws) what does not
    /// match, changing nothing then.
    static func loadWeights(into model: Module, path: String, strict: Bool, precision: WeightPrecision) throws -> StateDictReport {
        let checkpoint = try SafetensorsCheckpoint(path: path)
        var report = StateDictReport()
        var used = Set<String>()
        var sources: [(parameter: Tensor, stored: String)] = []
        for (name, parameter) in model.namedParameters() {
            let candidates = [name] + (deprecatedName(name).map { [$0] } ?? [])
            guard let stored = candidates.first(where: checkpoint.contains) else { report.missing.append(name); continue }
            used.insert(stored)
            let shape = try checkpoint.info(stored).shape
            let squeezable = shape.count == 4 && shape[2] == 1 && shape[3] == 1 && Array(shape[0..<2]) == parameter.shape
            guard shape == parameter.shape || squeezable else {
                report.mismatched.append(StateDictReport.ShapeMismatch(name: name, expected: parameter.shape, found: shape))
                continue
            }
            sources.append((parameter, stored))
        }
        report.unexpected = checkpoint.names.filter { !used.contains($0) }
        if strict && !report.isClean { throw report }
        // One tensor at a time, so peak memory is the model plus one tensor.
        for (parameter, stored) in sources { try checkpoint.load(stored, into: parameter, precision: precision) }
        return report
    }

    /// Writes `configurationText` and the weights of `model`, in shards of at most
    /// `maximumShardBytes` with diffusers' index when given (without a variant).
    static func save(_ model: Module, configurationText: String, folder: URL, variant: String?, dataType: DataType?,
                     maximumShardBytes: Int?) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try configurationText.write(to: folder.appendingPathComponent(ModelFolder.configurationName), atomically: true, encoding: .utf8)
        let stored = dataType ?? (variant == "fp16" ? .float16 : variant == "bf16" ? .bfloat16 : nil)
        if let maximumShardBytes {
            guard variant == nil else {
                throw SafetensorsError.writeFailed(path: folder.path, reason: "sharded saving is supported without a variant only")
            }
            try Safetensors.saveSharded(model.stateDict(), to: folder.path, baseName: ModelFolder.weightsBaseName,
                                        maximumShardBytes: maximumShardBytes, metadata: ["format": "pt"], dataType: stored)
            return
        }
        try model.saveSafetensors(path: folder.appendingPathComponent(ModelFolder.weightsName(variant: variant)).path, dataType: stored)
    }
}

extension AutoencoderKL {
    /// Loads a diffusers `AutoencoderKL` folder (a pipeline's `vae/`):
    /// `config.json` and `diffusion_pytorch_model[.variant].safetensors` (or a
    /// sharded index). Half-precision weights are widened to `float32` unless
    /// `precision` keeps them; the attention names of files written before
    /// diffusers 0.14 (`query`, `key`, `value`, `proj_attn`) are accepted, as
    /// diffusers accepts them.
    ///
    /// - Parameters:
    ///   - strict: when true (the default) any missing, unexpected or
    ///     mis-shaped parameter throws a `StateDictReport` naming all of them.
    ///     When false, matching parameters load and the rest keep their random
    ///     initial values; read `loadReport` to see which.
    ///   - precision: how the weights are held (`.asStored` keeps an fp16
    ///     variant's weights in 16 bits, mapped from the file, for inference).
    public static func load(folder: URL, variant: String? = nil, strict: Bool = true,
                            precision: WeightPrecision = .float32) throws -> AutoencoderKL {
        let configuration = try AutoencoderKLConfiguration.load(contentsOf: try AutoencoderFolder.configurationURL(in: folder))
        // A strict load overwrites every parameter: no initial values to draw.
        let model = strict ? try Initialization.withoutInitialValues { try AutoencoderKL(configuration: configuration) }
            : try AutoencoderKL(configuration: configuration)
        model.loadReport = try AutoencoderFolder.loadWeights(into: model, path: try ModelFolder.weightsPath(in: folder, variant: variant),
                                                             strict: strict, precision: precision)
        return model
    }

    /// Writes a diffusers model folder: `config.json` as diffusers writes it and
    /// the weights as `diffusion_pytorch_model[.variant].safetensors`.
    ///
    /// - Parameters:
    ///   - dataType: the stored type; by default `float16` for the `fp16`
    ///     variant, `bfloat16` for `bf16`, else `float32`.
    ///   - maximumShardBytes: write shards of at most this many bytes and
    ///     `diffusion_pytorch_model.safetensors.index.json` (no variant).
    public func save(folder: URL, variant: String? = nil, dataType: DataType? = nil, maximumShardBytes: Int? = nil) throws {
        try AutoencoderFolder.save(self, configurationText: configuration.jsonText, folder: folder, variant: variant, dataType: dataType,
                                   maximumShardBytes: maximumShardBytes)
    }
}

extension AutoencoderTiny {
    /// Loads a diffusers `AutoencoderTiny` folder (e.g. madebyollin/taesd):
    /// `config.json` and `diffusion_pytorch_model[.variant].safetensors`.
    /// `strict` and `precision` as in `AutoencoderKL.load(folder:variant:strict:precision:)`.
    public static func load(folder: URL, variant: String? = nil, strict: Bool = true,
                            precision: WeightPrecision = .float32) throws -> AutoencoderTiny {
        let configuration = try AutoencoderTinyConfiguration.load(contentsOf: try AutoencoderFolder.configurationURL(in: folder))
        let model = strict ? try Initialization.withoutInitialValues { try AutoencoderTiny(configuration: configuration) }
            : try AutoencoderTiny(configuration: configuration)
        model.loadReport = try AutoencoderFolder.loadWeights(into: model, path: try ModelFolder.weightsPath(in: folder, variant: variant),
                                                             strict: strict, precision: precision)
        return model
    }

    /// Writes a diffusers model folder (see `AutoencoderKL.save(folder:variant:dataType:maximumShardBytes:)`).
    public func save(folder: URL, variant: String? = nil, dataType: DataType? = nil, maximumShardBytes: Int? = nil) throws {
        try AutoencoderFolder.save(self, configurationText: configuration.jsonText, folder: folder, variant: variant, dataType: dataType,
                                   maximumShardBytes: maximumShardBytes)
    }
}
