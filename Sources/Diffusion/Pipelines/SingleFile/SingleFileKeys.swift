import Foundation

/// Where one diffusers parameter is stored in a single file of the original Stable Diffusion layout.
public struct SingleFileSource: Equatable, Sendable {
    /// How the stored tensor becomes the parameter.
    public enum Transform: Equatable, Sendable {
        /// The same values (a 1×1 convolution `[C, C, 1, 1]` read as a linear `[C, C]` counts as the same).
        case whole
        /// Rows `part·n ..< (part+1)·n` of a tensor of `parts·n` rows: OpenCLIP's fused `in_proj_weight` /
        /// `in_proj_bias` split into q, k and v.
        case rows(part: Int, parts: Int)
    }

    /// The names the tensor may have, tried in order (the first present is used).
    public var names: [String]
    public var transform: Transform

    public init(_ names: [String], transform: Transform = .whole) {
        self.names = names
        self.transform = transform
    }
}

/// The original (CompVis / Stability) key layout of a Stable Diffusion checkpoint and its mapping to
/// diffusers' names, as diffusers' `convert_diffusers_to_original_stable_diffusion.py` and
/// `single_file_utils.py` define it.
public enum SingleFileKeys {
    /// The UNet's prefix.
    public static let unetPrefix = "model.diffusion_model."
    /// The VAE's prefix.
    public static let vaePrefix = "first_stage_model."
    /// Stable Diffusion 1.x's text encoder (transformers' `CLIPTextModel` keys under it).
    public static let clipPrefix = "cond_stage_model.transformer."
    /// Stable Diffusion 2.x's OpenCLIP text encoder.
    public static let openCLIPPrefix = "cond_stage_model.model."

    // MARK: UNet

    /// The block structure the UNet names depend on: layers per down block, and whether each up block has attentions.
    public struct UNetStructure: Equatable, Sendable {
        public var layersPerBlock: [Int]
        public var upBlockHasAttention: [Bool]

        public init(layersPerBlock: [Int], upBlockHasAttention: [Bool]) {
            self.layersPerBlock = layersPerBlock
            self.upBlockHasAttention = upBlockHasAttention
        }

        public init(_ configuration: UNet2DConditionConfiguration) {
            layersPerBlock = configuration.layersPerBlock.values(count: configuration.blockOutChannels.count)
            upBlockHasAttention = configuration.upBlockTypes.map { $0 == .crossAttentionUpBlock }
        }

        /// The `input_blocks` index of each down block's first resnet.
        var downStarts: [Int] {
            var starts: [Int] = []
            var next = 1
            for layers in layersPerBlock {
                starts.append(next)
                next += layers + 1
            }
            return starts
        }

        /// The `output_blocks` index of each up block's first resnet (up blocks have one more layer).
        var upStarts: [Int] {
            var starts: [Int] = []
            var next = 0
            for layers in layersPerBlock.reversed() {
                starts.append(next)
                next += layers + 1
            }
            return starts
        }
    }

    static let unetResnetNames = ["norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                                  "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"]

    /// The original name (without `model.diffusion_model.`) of a diffusers UNet parameter, nil for a name
    /// the layout has no place for.
    public static func unetName(_ name: String, structure: UNetStructure) -> String? {
        let parts = name.split(separator: ".").map(String.init)
        func rest(_ from: Int) -> String { parts[from...].joined(separator: ".") }
        func resnet(_ from: Int) -> String? {
            guard parts.count > from, let renamed = unetResnetNames[parts[from]] else { return nil }
            return ([renamed] + parts[(from + 1)...]).joined(separator: ".")
        }
        guard let head = parts.first else { return nil }
        switch head {
        case "time_embedding":
            guard parts.count > 1 else { return nil }
            switch parts[1] {
            case "linear_1": return "time_embed.0." + rest(2)
            case "linear_2": return "time_embed.2." + rest(2)
            default: return nil
            }
        case "conv_in": return "input_blocks.0.0." + rest(1)
        case "conv_norm_out": return "out.0." + rest(1)
        case "conv_out": return "out.2." + rest(1)
        case "down_blocks", "up_blocks":
            guard parts.count > 4, let block = Int(parts[1]), let index = Int(parts[3]) else { return nil }
            let isDown = head == "down_blocks"
            let starts = isDown ? structure.downStarts : structure.upStarts
            guard block < starts.count else { return nil }
            let group = isDown ? "input_blocks" : "output_blocks"
            switch parts[2] {
            case "resnets":
                return resnet(4).map { "\(group).\(starts[block] + index).0.\($0)" }
            case "attentions":
                return "\(group).\(starts[block] + index).1." + rest(4)
            case "downsamplers" where isDown && parts[4] == "conv":
                return "input_blocks.\(starts[block] + structure.layersPerBlock[block]).0.op." + rest(5)
            case "upsamplers" where !isDown:
                let layers = structure.layersPerBlock.reversed()[block] + 1
                let slot = structure.upBlockHasAttention[block] ? 2 : 1
                return "output_blocks.\(starts[block] + layers - 1).\(slot)." + rest(4)
            default:
                return nil
            }
        case "mid_block":
            guard parts.count > 3, let index = Int(parts[2]) else { return nil }
            switch parts[1] {
            case "resnets": return resnet(3).map { "middle_block.\(2 * index).\($0)" }
            case "attentions" where index == 0: return "middle_block.1." + rest(3)
            default: return nil
            }
        default:
            return nil
        }
    }

    // MARK: VAE

    /// The original name (without `first_stage_model.`) of a diffusers `AutoencoderKL` parameter.
    public static func vaeName(_ name: String, levels: Int) -> String? {
        var parts = name.split(separator: ".").map(String.init)
        guard !parts.isEmpty else { return nil }
        if parts[0] == "quant_conv" || parts[0] == "post_quant_conv" { return name }
        guard parts.count > 2, parts[0] == "encoder" || parts[0] == "decoder" else { return nil }
        let side = parts[0]
        func resnetTail(_ from: Int) -> String {
            var tail = Array(parts[from...])
            if tail.first == "conv_shortcut" { tail[0] = "nin_shortcut" }
            return tail.joined(separator: ".")
        }
        switch parts[1] {
        case "conv_in", "conv_out": return name
        case "conv_norm_out":
            parts[1] = "norm_out"
            return parts.joined(separator: ".")
        case "down_blocks" where side == "encoder", "up_blocks" where side == "decoder":
            guard parts.count > 5, let block = Int(parts[2]), block < levels else { return nil }
            let level = side == "encoder" ? block : levels - 1 - block
            let group = side == "encoder" ? "down" : "up"
            switch parts[3] {
            case "resnets": return "\(side).\(group).\(level).block.\(parts[4])." + resnetTail(5)
            case "downsamplers" where side == "encoder", "upsamplers" where side == "decoder":
                guard parts[4] == "0" else { return nil }
                return "\(side).\(group).\(level).\(side == "encoder" ? "downsample" : "upsample")." + parts[5...].joined(separator: ".")
            default: return nil
            }
        case "mid_block":
            guard parts.count > 4, let index = Int(parts[3]) else { return nil }
            if parts[2] == "resnets" { return "\(side).mid.block_\(index + 1)." + resnetTail(4) }
            guard parts[2] == "attentions", index == 0 else { return nil }
            let tail = parts[4...].joined(separator: ".")
            for (diffusers, original) in [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
            where tail.hasPrefix(diffusers) {
                return "\(side).mid.attn_1." + original + tail.dropFirst(diffusers.count)
            }
            return nil
        default:
            return nil
        }
    }

    /// True for the VAE attention projections the original layout stores as 1×1 convolutions.
    static func isVAEAttentionProjection(_ name: String) -> Bool {
        name.contains("mid_block.attentions.0.") && name.hasSuffix(".weight")
            && ["to_q.", "to_k.", "to_v.", "to_out.0."].contains { name.contains(".\($0)") }
    }

    // MARK: Text encoders

    /// Where a diffusers `CLIPTextModel` parameter (`text_model.*`) is in a Stable Diffusion 1.x file: under
    /// `cond_stage_model.transformer.text_model.` (the original files), or without `text_model.` (files
    /// diffusers' script writes from a transformers 5 folder).
    public static func clipSource(_ name: String) -> SingleFileSource {
        let bare = name.hasPrefix("text_model.") ? String(name.dropFirst("text_model.".count)) : name
        return SingleFileSource([clipPrefix + "text_model." + bare, clipPrefix + bare])
    }

    static let openCLIPLayerNames = [("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."),
                                     ("mlp.fc2.", "mlp.c_proj."), ("self_attn.out_proj.", "attn.out_proj.")]

    /// Where a diffusers `CLIPTextModel` parameter is in Stable Diffusion 2.x's OpenCLIP text encoder
    /// (`cond_stage_model.model.*`); q, k and v are thirds of `in_proj_weight` / `in_proj_bias`.
    public static func openCLIPSource(_ name: String) -> SingleFileSource? {
        let bare = name.hasPrefix("text_model.") ? String(name.dropFirst("text_model.".count)) : name
        switch bare {
        case "embeddings.token_embedding.weight": return SingleFileSource([openCLIPPrefix + "token_embedding.weight"])
        case "embeddings.position_embedding.weight": return SingleFileSource([openCLIPPrefix + "positional_embedding"])
        case "final_layer_norm.weight": return SingleFileSource([openCLIPPrefix + "ln_final.weight"])
        case "final_layer_norm.bias": return SingleFileSource([openCLIPPrefix + "ln_final.bias"])
        default: break
        }
        let prefix = "encoder.layers."
        guard bare.hasPrefix(prefix) else { return nil }
        let afterPrefix = bare.dropFirst(prefix.count)
        guard let dot = afterPrefix.firstIndex(of: "."), let layer = Int(afterPrefix[..<dot]) else { return nil }
        let tail = String(afterPrefix[afterPrefix.index(after: dot)...])
        let block = openCLIPPrefix + "transformer.resblocks.\(layer)."
        for (part, projection) in ["q_proj.", "k_proj.", "v_proj."].enumerated() where tail.hasPrefix("self_attn." + projection) {
            let kind = tail.dropFirst(("self_attn." + projection).count)
            guard kind == "weight" || kind == "bias" else { return nil }
            return SingleFileSource([block + "attn.in_proj_" + kind], transform: .rows(part: part, parts: 3))
        }
        for (diffusers, original) in openCLIPLayerNames where tail.hasPrefix(diffusers) {
            return SingleFileSource([block + original + tail.dropFirst(diffusers.count)])
        }
        return nil
    }
}
