import Foundation
import NN
import Tensors

extension StableDiffusionPipeline {
    /// The text encoder layout a single file of this pipeline uses: OpenCLIP (`cond_stage_model.model.*`) for
    /// a GELU text encoder (Stable Diffusion 2.x's), else openai CLIP's (`cond_stage_model.transformer.*`).
    public var singleFileTextLayout: StableDiffusionSingleFile.TextEncoderLayout {
        textEncoder.configuration.activation == .gelu ? .openCLIP(storedLayers: textEncoder.configuration.hiddenLayerCount) : .clip
    }

    /// Every weight renamed to the original Stable Diffusion layout, as diffusers'
    /// `convert_diffusers_to_original_stable_diffusion.py` writes it: the UNet under `model.diffusion_model.`,
    /// the VAE under `first_stage_model.` (attention projections as 1×1 convolutions), the text encoder
    /// under `cond_stage_model.transformer.text_model.` (1.x) or as OpenCLIP under `cond_stage_model.model.`
    /// with q, k and v fused into `in_proj_weight` / `in_proj_bias` (2.x). Each tensor keeps its type.
    public func singleFileTensors() throws -> [String: Tensor] {
        var tensors: [String: Tensor] = [:]
        func put(_ name: String, _ tensor: Tensor, from source: String) throws {
            guard tensors.updateValue(tensor, forKey: name) == nil else {
                throw StableDiffusionError("two weights map to \"\(name)\" in the single file (the second is \(source))")
            }
        }
        let structure = SingleFileKeys.UNetStructure(unet.configuration)
        for (name, tensor) in unet.namedParameters() {
            guard let original = SingleFileKeys.unetName(name, structure: structure) else {
                throw StableDiffusionError("the UNet's \"\(name)\" has no place in the original Stable Diffusion layout")
            }
            try put(SingleFileKeys.unetPrefix + original, tensor, from: name)
        }
        let levels = vae.configuration.blockOutChannels.count
        for (name, tensor) in vae.namedParameters() {
            guard let original = SingleFileKeys.vaeName(name, levels: levels) else {
                throw StableDiffusionError("the VAE's \"\(name)\" has no place in the original Stable Diffusion layout")
            }
            var stored = tensor
            if SingleFileKeys.isVAEAttentionProjection(name) && tensor.shape.count == 2 {
                // The engine's reshape works in float32; a 16-bit weight goes back to its type (exactly).
                stored = tensor.converted(to: .float32).contiguous().reshaped(tensor.shape + [1, 1])
                if tensor.dataType != .float32 { stored = stored.converted(to: tensor.dataType) }
            }
            try put(SingleFileKeys.vaePrefix + original, stored, from: name)
        }
        switch singleFileTextLayout {
        case .clip:
            for (name, tensor) in textEncoder.namedParameters() {
                try put(SingleFileKeys.clipSource(name).names[0], tensor, from: name)
            }
        case .openCLIP:
            var fused: [String: [Int: Tensor]] = [:]
            for (name, tensor) in textEncoder.namedParameters() {
                guard let source = SingleFileKeys.openCLIPSource(name) else {
                    throw StableDiffusionError("the text encoder's \"\(name)\" has no place in OpenCLIP's layout")
                }
                switch source.transform {
                case .whole: try put(source.names[0], tensor, from: name)
                case .rows(let part, _): fused[source.names[0], default: [:]][part] = tensor
                }
            }
            for (name, parts) in fused {
                guard let q = parts[0], let k = parts[1], let v = parts[2] else {
                    throw StableDiffusionError("\"\(name)\" needs q, k and v; the text encoder lacks one")
                }
                let joined = Tensor.concatenate([q, k, v].map { $0.converted(to: .float32).contiguous() }, axis: 0)
                try put(name, q.dataType == .float32 ? joined : joined.converted(to: q.dataType), from: name)
            }
        }
        return tensors
    }

    /// Writes ``singleFileTensors()`` to one `.safetensors` file (no metadata, as diffusers' script), each
    /// tensor in its own type unless `dataType` is given. A `.ckpt` path is refused: Diffuse writes no pickles.
    public func saveSingleFile(to url: URL, dataType: DataType? = nil) throws {
        guard url.pathExtension.lowercased() == "safetensors" else {
            throw StableDiffusionError("\(url.path): a single file is written as .safetensors (Diffuse writes no .ckpt pickles)")
        }
        try Safetensors.save(try singleFileTensors(), to: url.path, dataType: dataType)
    }
}
