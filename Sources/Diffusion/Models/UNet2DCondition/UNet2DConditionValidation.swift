import Foundation
import NN

extension UNet2DConditionConfiguration {
    /// Checks that the configuration builds a model, naming the key at fault.
    public func validate() throws {
        func require(_ condition: Bool, _ key: String, _ reason: @autoclosure () -> String) throws {
            if !condition { throw UNet2DConditionConfigurationError.invalid(key: key, reason: reason()) }
        }
        let channels = blockOutChannels
        let count = channels.count
        try require(!channels.isEmpty && channels.allSatisfy { $0 > 0 }, "block_out_channels", "must be a non-empty list of positive sizes, got \(channels)")
        try require(downBlockTypes.count == count, "down_block_types", "has \(downBlockTypes.count) entries but block_out_channels has \(count)")
        try require(upBlockTypes.count == count, "up_block_types", "has \(upBlockTypes.count) entries but down_block_types has \(count)")
        try require(inChannels > 0, "in_channels", "must be positive, got \(inChannels)")
        try require(outChannels > 0, "out_channels", "must be positive, got \(outChannels)")
        try require(downsamplePadding >= 0, "downsample_padding", "must not be negative, got \(downsamplePadding)")
        try require(dropout >= 0 && dropout < 1, "dropout", "must be in [0, 1), got \(dropout)")
        try require(normEpsilon >= 0, "norm_eps", "must not be negative, got \(normEpsilon)")
        try require(midBlockScaleFactor != 0, "mid_block_scale_factor", "must not be zero")
        try require(normGroupCount > 0, "norm_num_groups", "must be positive, got \(normGroupCount)")
        for (key, kernel) in [("conv_in_kernel", convInKernel), ("conv_out_kernel", convOutKernel)] {
            try require(kernel > 0 && kernel % 2 == 1, key, "must be a positive odd size, got \(kernel)")
        }
        if let dimension = timeEmbeddingDimension { try require(dimension > 0, "time_embedding_dim", "must be positive, got \(dimension)") }
        if let dimension = timeConditionProjectionDimension { try require(dimension > 0, "time_cond_proj_dim", "must be positive, got \(dimension)") }

        // Per-block lists: one entry per down block.
        let lists: [(String, Int?)] = [
            ("layers_per_block", layersPerBlock.listCount), ("cross_attention_dim", crossAttentionDimension.listCount),
            ("transformer_layers_per_block", transformerLayersPerBlock.listCount),
            ("attention_head_dim", attentionHeadDimension.listCount), ("num_attention_heads", attentionHeadCount?.listCount),
            ("only_cross_attention", onlyCrossAttention.listCount),
        ]
        for case let (key, entries?) in lists {
            try require(entries == count, key, "has \(entries) entries but down_block_types has \(count)")
        }
        let headKey = attentionHeadCount == nil ? "attention_head_dim" : "num_attention_heads"
        let heads = resolvedHeadCounts
        let layers = layersPerBlock.values(count: count)
        let crossDimensions = crossAttentionDimension.values(count: count)
        let transformerLayers = transformerLayersPerBlock.values(count: count)
        try require(layers.allSatisfy { $0 > 0 }, "layers_per_block", "must be positive, got \(layers)")
        try require(crossDimensions.allSatisfy { $0 > 0 }, "cross_attention_dim", "must be positive, got \(crossDimensions)")
        try require(transformerLayers.allSatisfy { $0 > 0 }, "transformer_layers_per_block", "must be positive, got \(transformerLayers)")

        // Every group norm's channel count and every transformer's width, as the blocks build them.
        var normalized: [Int] = [channels[0]]
        var transformers: [(channels: Int, heads: Int)] = []
        var output = channels[0]
        for (index, type) in downBlockTypes.enumerated() {
            let input = output
            output = channels[index]
            normalized += [input, output]
            if type == .crossAttentionDownBlock { transformers.append((output, heads[index])) }
        }
        if midBlockType == .crossAttention { transformers.append((channels[count - 1], heads[count - 1])) }
        let reversed = Array(channels.reversed())
        output = reversed[0]
        for (index, type) in upBlockTypes.enumerated() {
            let previous = output
            output = reversed[index]
            let input = reversed[min(index + 1, count - 1)]
            let resnets = layers[count - 1 - index] + 1
            for layer in 0..<resnets {
                normalized.append((layer == 0 ? previous : output) + (layer == resnets - 1 ? input : output))
            }
            normalized.append(output)
            if type == .crossAttentionUpBlock { transformers.append((output, heads[count - 1 - index])) }
        }
        for channelCount in normalized + transformers.map(\.channels) {
            try require(channelCount % normGroupCount == 0, "norm_num_groups",
                        "\(normGroupCount) groups do not divide a group norm of \(channelCount) channels")
        }
        for (channelCount, headCount) in transformers {
            try require(headCount > 0 && channelCount % headCount == 0, headKey,
                        "\(headCount) heads do not divide a transformer of \(channelCount) channels")
        }

        // Class embeddings.
        if let rows = classEmbeddingCount { try require(rows > 0, "num_class_embeds", "must be positive, got \(rows)") }
        switch classEmbeddingType {
        case .projection?, .simpleProjection?:
            try require((projectionClassEmbeddingInputDimension ?? 0) > 0, "projection_class_embeddings_input_dim",
                        "must be a positive integer for class_embed_type \"\(classEmbeddingType?.rawValue ?? "")\"")
        default:
            break
        }
        try require(!classEmbeddingsConcatenated || classEmbeddingType != nil || classEmbeddingCount != nil, "class_embeddings_concat",
                    "is true but the model has no class embedding")
    }
}
