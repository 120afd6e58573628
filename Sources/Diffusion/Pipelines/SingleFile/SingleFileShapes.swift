import Foundation
import NN

/// Infers the models' configurations of a single-file checkpoint from its header (names and shapes only).
struct SingleFileShapes {
    let checkpoint: SafetensorsCheckpoint
    let path: String
    let names: [String]

    init(checkpoint: SafetensorsCheckpoint, path: String) {
        self.checkpoint = checkpoint
        self.path = path
        names = checkpoint.names
    }

    func shape(_ name: String) -> [Int]? { try? checkpoint.info(name).shape }

    func require(_ name: String, rank: Int? = nil) throws -> [Int] {
        guard let shape = shape(name) else {
            throw SingleFileError.unknownLayout(path: path, reason: "no tensor \"\(name)\", which this layout has")
        }
        if let rank, shape.count != rank {
            throw SingleFileError.inconsistent(path: path, reason: "\"\(name)\" has shape \(shape), expected \(rank) dimensions")
        }
        return shape
    }

    /// The distinct integers right after `prefix` in the names (`prefix` ends with a dot).
    func indices(after prefix: String) -> [Int] {
        var found = Set<Int>()
        for name in names where name.hasPrefix(prefix) {
            let rest = name.dropFirst(prefix.count)
            if let number = Int(rest.prefix { $0 != "." }) { found.insert(number) }
        }
        return found.sorted()
    }

    func hasPrefix(_ prefix: String) -> Bool { names.contains { $0.hasPrefix(prefix) } }

    /// GroupNorm's group count: 32 as Stable Diffusion's `GroupNorm32`, or for widths not divisible by 32
    /// the largest count up to 32 that divides them all.
    static func groupCount(_ widths: [Int]) -> Int {
        (1...32).reversed().first { count in widths.allSatisfy { $0 % count == 0 } } ?? 1
    }

    /// Names the missing parts, or the layout when it is not Stable Diffusion's original one.
    func checkParts() throws {
        let hasUNet = hasPrefix(SingleFileKeys.unetPrefix)
        let hasVAE = hasPrefix(SingleFileKeys.vaePrefix)
        let hasText = hasPrefix(SingleFileKeys.clipPrefix) || hasPrefix(SingleFileKeys.openCLIPPrefix)
        if hasUNet && hasVAE && hasText { return }
        if !hasUNet && !hasVAE && !hasText {
            let examples = names.prefix(3).map { "\"\($0)\"" }.joined(separator: ", ")
            let reason: String
            if hasPrefix("conditioner.embedders.") {
                reason = "a Stable Diffusion XL checkpoint (conditioner.embedders.*); Diffuse runs Stable Diffusion 1.x and 2.x"
            } else if names.contains(where: { $0.hasPrefix("down_blocks.") || $0.hasPrefix("encoder.down_blocks.") || $0.hasPrefix("text_model.") }) {
                reason = "one diffusers or transformers model's weights (\(examples)), not a whole pipeline; put it in a diffusers folder"
            } else {
                reason = "expected the original Stable Diffusion layout (model.diffusion_model.*, first_stage_model.*, "
                    + "cond_stage_model.transformer.* or cond_stage_model.model.*); found \(names.count) tensors like \(examples)"
            }
            throw SingleFileError.unknownLayout(path: path, reason: reason)
        }
        var missing: [String] = []
        if !hasUNet { missing.append("the UNet (model.diffusion_model.*)") }
        if !hasVAE { missing.append("the VAE (first_stage_model.*)") }
        if !hasText { missing.append("the text encoder (cond_stage_model.transformer.* for 1.x, cond_stage_model.model.* for 2.x)") }
        throw SingleFileError.missingParts(path: path, parts: missing)
    }

    // MARK: Text encoder

    func textEncoder() throws -> (StableDiffusionSingleFile.Family, StableDiffusionSingleFile.TextEncoderLayout, CLIPTextConfiguration) {
        var configuration = CLIPTextConfiguration()
        (configuration.padTokenID, configuration.beginTokenID, configuration.endTokenID) = (1, 0, 2)
        configuration.layerNormEpsilon = 1e-5
        let open = SingleFileKeys.openCLIPPrefix
        if hasPrefix(open) {
            let token = try require(open + "token_embedding.weight", rank: 2)
            let positions = try require(open + "positional_embedding", rank: 2)
            let stored = indices(after: open + "transformer.resblocks.").count
            guard stored > 0 else { throw SingleFileError.unknownLayout(path: path, reason: "the OpenCLIP text encoder has no transformer.resblocks") }
            let hasProjection = shape(open + "text_projection") != nil
            configuration.vocabularySize = token[0]
            configuration.hiddenSize = token[1]
            configuration.maximumPositionEmbeddings = positions[0]
            configuration.hiddenLayerCount = hasProjection ? stored - 1 : stored
            configuration.intermediateSize = try require(open + "transformer.resblocks.0.mlp.c_fc.weight", rank: 2)[0]
            configuration.attentionHeadCount = max(1, token[1] / 64)
            configuration.activation = .gelu
            configuration.projectionDimension = token[1] == 1024 ? 512 : token[1]
            return (.stableDiffusion2, .openCLIP(storedLayers: stored), configuration)
        }
        let clip = SingleFileKeys.clipPrefix
        let prefix = hasPrefix(clip + "text_model.") ? clip + "text_model." : clip
        let token = try require(prefix + "embeddings.token_embedding.weight", rank: 2)
        configuration.vocabularySize = token[0]
        configuration.hiddenSize = token[1]
        configuration.maximumPositionEmbeddings = try require(prefix + "embeddings.position_embedding.weight", rank: 2)[0]
        configuration.hiddenLayerCount = indices(after: prefix + "encoder.layers.").count
        configuration.intermediateSize = try require(prefix + "encoder.layers.0.mlp.fc1.weight", rank: 2)[0]
        configuration.attentionHeadCount = max(1, token[1] / 64)
        configuration.activation = .quickGELU
        configuration.projectionDimension = token[1]
        return (.stableDiffusion1, .clip, configuration)
    }

    // MARK: UNet

    func unet(family: StableDiffusionSingleFile.Family) throws -> UNet2DConditionConfiguration {
        let u = SingleFileKeys.unetPrefix
        if hasPrefix(u + "label_emb.") {
            throw SingleFileError.unknownLayout(path: path, reason: "a class-conditioned UNet (label_emb: the x4 upscaler or unCLIP), which Diffuse does not run")
        }
        let convIn = try require(u + "input_blocks.0.0.weight", rank: 4)
        let inputCount = (indices(after: u + "input_blocks.").last ?? 0) + 1
        let downsamples = indices(after: u + "input_blocks.").filter { shape(u + "input_blocks.\($0).0.op.weight") != nil }
        var layers: [Int] = []
        var start = 1
        for index in downsamples {
            layers.append(index - start)
            start = index + 1
        }
        layers.append(inputCount - start)
        guard layers.allSatisfy({ $0 > 0 }) else {
            throw SingleFileError.inconsistent(path: path, reason: "the UNet's input_blocks do not form down blocks (layers \(layers))")
        }
        let structure = SingleFileKeys.UNetStructure(layersPerBlock: layers, upBlockHasAttention: [])
        var configuration = UNet2DConditionConfiguration()
        configuration.inChannels = convIn[1]
        configuration.outChannels = try require(u + "out.2.weight", rank: 4)[0]
        var channels: [Int] = []
        var downTypes: [UNet2DConditionConfiguration.DownBlockType] = []
        for first in structure.downStarts {
            channels.append(try require(u + "input_blocks.\(first).0.out_layers.3.weight", rank: 4)[0])
            downTypes.append(shape(u + "input_blocks.\(first).1.proj_in.weight") != nil ? .crossAttentionDownBlock : .downBlock)
        }
        var upTypes: [UNet2DConditionConfiguration.UpBlockType] = []
        for first in structure.upStarts {
            upTypes.append(shape(u + "output_blocks.\(first).1.proj_in.weight") != nil ? .crossAttentionUpBlock : .upBlock)
        }
        guard let projection = shape(u + "middle_block.1.proj_in.weight") else {
            throw SingleFileError.unknownLayout(path: path, reason: "the UNet's middle block has no attention (middle_block.1.proj_in), unlike Stable Diffusion's")
        }
        guard let key = names.first(where: { $0.hasPrefix(u) && $0.hasSuffix(".attn2.to_k.weight") }), let context = shape(key), context.count == 2 else {
            throw SingleFileError.unknownLayout(path: path, reason: "the UNet has no cross-attention (attn2.to_k)")
        }
        configuration.blockOutChannels = channels
        configuration.downBlockTypes = downTypes
        configuration.upBlockTypes = upTypes
        configuration.midBlockType = .crossAttention
        configuration.layersPerBlock = Set(layers).count == 1 ? .uniform(layers[0]) : .list(layers)
        configuration.crossAttentionDimension = .uniform(context[1])
        configuration.useLinearProjection = projection.count == 2
        configuration.transformerLayersPerBlock = .uniform(max(1, indices(after: u + "middle_block.1.transformer_blocks.").count))
        switch family {
        case .stableDiffusion1: configuration.attentionHeadDimension = .uniform(8)
        case .stableDiffusion2: configuration.attentionHeadDimension = .list(channels.map { max(1, $0 / 64) })
        }
        configuration.normGroupCount = Self.groupCount(channels)
        return configuration
    }

    // MARK: VAE

    func vae() throws -> AutoencoderKLConfiguration {
        let v = SingleFileKeys.vaePrefix
        let levels = indices(after: v + "encoder.down.")
        guard !levels.isEmpty, levels == Array(0..<levels.count) else {
            throw SingleFileError.unknownLayout(path: path, reason: "the VAE has no encoder.down.N blocks")
        }
        var configuration = AutoencoderKLConfiguration()
        configuration.blockOutChannels = try levels.map { try require(v + "encoder.down.\($0).block.0.conv2.weight", rank: 4)[0] }
        configuration.downBlockTypes = Array(repeating: .downEncoderBlock, count: levels.count)
        configuration.upBlockTypes = Array(repeating: .upDecoderBlock, count: levels.count)
        configuration.layersPerBlock = indices(after: v + "encoder.down.0.block.").count
        configuration.inChannels = try require(v + "encoder.conv_in.weight", rank: 4)[1]
        configuration.outChannels = try require(v + "decoder.conv_out.weight", rank: 4)[0]
        configuration.latentChannels = try require(v + "decoder.conv_in.weight", rank: 4)[1]
        configuration.useQuantConvolution = shape(v + "quant_conv.weight") != nil
        configuration.usePostQuantConvolution = shape(v + "post_quant_conv.weight") != nil
        configuration.midBlockAddAttention = shape(v + "encoder.mid.attn_1.q.weight") != nil
        configuration.normGroupCount = Self.groupCount(configuration.blockOutChannels)
        configuration.scalingFactor = 0.18215
        return configuration
    }
}
