import Foundation
import NN
import Tensors

extension UNet2DConditionModel {
    /// Loads a diffusers `UNet2DConditionModel` folder (a pipeline's `unet/`):
    /// `config.json` and `diffusion_pytorch_model[.variant].safetensors` (or a
    /// sharded index). Half-precision weights (the `fp16` variant) are widened to `float32` unless `precision` keeps them.
    ///
    /// - Parameter strict: when true (the default) any missing, unexpected or
    ///   mis-shaped parameter throws a `StateDictReport` naming all of them.
    ///   When false, matching parameters load and the rest keep their random
    ///   initial values; read `loadReport` to see which.
    /// - Parameter precision: how the weights are held (`.asStored` keeps an `fp16` variant in 16 bits,
    ///   mapped from the file: about half the memory).
    public static func load(folder: URL, variant: String? = nil, strict: Bool = true, precision: WeightPrecision = .float32) throws -> UNet2DConditionModel {
        let configuration = try UNet2DConditionConfiguration.load(contentsOf: ModelFolder.configurationPath(in: folder))
        let model = try ModelFolder.build(strict: strict) { try UNet2DConditionModel(configuration: configuration) }
        model.loadReport = try ModelFolder.loadWeights(into: model, folder: folder, variant: variant, strict: strict, precision: precision)
        return model
    }

    /// Writes a diffusers model folder: `config.json` as diffusers writes it and
    /// the weights as `diffusion_pytorch_model[.variant].safetensors` with `format: pt` metadata.
    ///
    /// - Parameter dataType: the stored type; by default `float16` for the
    ///   `fp16` variant, `bfloat16` for `bf16`, else `float32`.
    public func save(folder: URL, variant: String? = nil, dataType: DataType? = nil) throws {
        try ModelFolder.save(self, configuration: configuration, folder: folder, variant: variant, dataType: dataType)
    }
}
