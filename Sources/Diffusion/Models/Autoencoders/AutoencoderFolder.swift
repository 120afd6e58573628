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

    /// Writes `configurationText` and the weights of `model`.
    static func save(_ model: Module, configurationText: String, folder: URL, variant: String?, dataType: DataType?) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try configurationText.write(to: folder.appendingPathComponent(ModelFolder.configurationName), atomically: true, encoding: .utf8)
        let stored = dataType ?? (variant == "fp16" ? .float16 : variant == "bf16" ? .bfloat16 : nil)
        try model.saveSafetensors(path: folder.appendingPathComponent(ModelFolder.weightsName(variant: variant)).path, dataType: stored)
    }
}

extension AutoencoderKL {
    /// Loads a diffusers `AutoencoderKL` folder (a pipeline's `vae/`):
    /// `config.json` and `diffusion_pytorch_model[.variant].safetensors` (or a
    /// sharded index). Half-precision weights are widened to `float32`.
    ///
    /// - Parameter strict: when true (the default) any missing, unexpected or
    ///   mis-shaped parameter throws a `StateDictReport` naming all of them.
    ///   When false, matching parameters load and the rest keep their random
    ///   initial values; read `loadReport` to see which.
    public static func load(folder: URL, variant: String? = nil, strict: Bool = true) throws -> AutoencoderKL {
        let configuration = try AutoencoderKLConfiguration.load(contentsOf: try AutoencoderFolder.configurationURL(in: folder))
        let model = try AutoencoderKL(configuration: configuration)
        model.loadReport = try model.loadSafetensors(path: try ModelFolder.weightsPath(in: folder, variant: variant), strict: strict)
        return model
    }

    /// Writes a diffusers model folder: `config.json` as diffusers writes it and
    /// the weights as `diffusion_pytorch_model[.variant].safetensors`.
    ///
    /// - Parameter dataType: the stored type; by default `float16` for the
    ///   `fp16` variant, `bfloat16` for `bf16`, else `float32`.
    public func save(folder: URL, variant: String? = nil, dataType: DataType? = nil) throws {
        try AutoencoderFolder.save(self, configurationText: configuration.jsonText, folder: folder, variant: variant, dataType: dataType)
    }
}
