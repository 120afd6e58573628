import Foundation
import NN
import Tensors

/// diffusers' `UNet2DModel`: the unconditional (or class-conditional) image
/// UNet of DDPM, with the same parameter names (`conv_in`, `time_embedding`,
/// `down_blocks.0.resnets.1.conv1.weight`, …) and the same forward pass, so
/// diffusers checkpoints load and give the same outputs.
///
/// ```swift
/// let unet = try UNet2DModel.load(folder: URL(fileURLWithPath: "ddpm-butterflies/unet"))
/// let noisePrediction = noGrad { unet(noisyImages, timesteps: [999, 500]) }
/// ```
///
/// Run inference under `noGrad` so no graph is kept; each activation is then
/// released as soon as the next layer has used it (the skip connections
/// live until their up block takes them). Training records only what the
/// backward pass needs.
public final class UNet2DModel: Module {
    public let convIn: Conv2d
    public let timeProjection: any TimestepProjection
    public let timeEmbedding: TimestepEmbedding
    /// An `Embedding` (`num_class_embeds`), a `TimestepEmbedding` (`timestep`), `Identity`, or nil.
    public let classEmbedding: Module?
    public let downBlocks: [UNetDownBlock]
    public let upBlocks: [UNetUpBlock]
    public let midBlock: UNetMidBlock2D?
    public let convNormOut: GroupNorm
    public let convActivation: Activation
    public let convOut: Conv2d

    public override class var stateDictKeys: [String: String] {
        ["convIn": "conv_in", "timeProjection": "time_proj", "timeEmbedding": "time_embedding", "classEmbedding": "class_embedding",
         "downBlocks": "down_blocks", "upBlocks": "up_blocks", "midBlock": "mid_block", "convNormOut": "conv_norm_out",
         "convActivation": "conv_act", "convOut": "conv_out"]
    }

    /// The configuration the model was built from.
    public let configuration: UNet2DConfiguration
    /// What did not match when the weights were loaded by `load(folder:variant:strict:)`
    /// (clean after a strict load).
    public internal(set) var loadReport: StateDictReport?

    /// Builds a randomly initialised model (weights drawn from `Initialization`).
    /// Throws `UNet2DConfigurationError` naming the key when the configuration
    /// cannot build a model.
    public init(configuration: UNet2DConfiguration) throws {
        try configuration.validate()
        self.configuration = configuration
        let channels = configuration.blockOutChannels
        let timeDimension = configuration.resolvedTimeEmbeddingDimension
        convIn = Conv2d(configuration.inChannels, channels[0], kernelSize: 3, padding: 1)

        switch configuration.timeEmbeddingType {
        case .fourier:
            timeProjection = GaussianFourierProjection(embeddingSize: channels[0], scale: 16)
        case .positional:
            timeProjection = Timesteps(channels: channels[0], flipSinToCos: configuration.flipSinToCos,
                                       downscaleFrequencyShift: Float(configuration.frequencyShift))
        case .learned:
            timeProjection = Embedding(configuration.trainTimesteps ?? 0, channels[0])
        }
        let projectionDimension = timeProjection.outputDimension
        timeEmbedding = TimestepEmbedding(inputChannels: projectionDimension, embeddingDimension: timeDimension)
        switch (configuration.classEmbeddingType, configuration.classEmbeddingCount) {
        case (.timestep?, _): classEmbedding = TimestepEmbedding(inputChannels: projectionDimension, embeddingDimension: timeDimension)
        case (.identity?, _): classEmbedding = Identity()
        case (nil, let count?): classEmbedding = Embedding(count, timeDimension)
        case (nil, nil): classEmbedding = nil
        }

        let settings = configuration.resnetSettings
        var downBlocks: [UNetDownBlock] = []
        var output = channels[0]
        for (index, type) in configuration.downBlockTypes.enumerated() {
            let input = output
            output = channels[index]
            let isFinal = index == channels.count - 1
            downBlocks.append(UNetDownBlock(
                type: type, layers: configuration.layersPerBlock, inChannels: input, outChannels: output, settings: settings,
                attentionHeadDimension: configuration.attentionHeadDimension ?? output,
                downsampling: isFinal ? nil : configuration.downsampleType, downsamplePadding: configuration.downsamplePadding))
        }
        self.downBlocks = downBlocks

        if configuration.midBlockType != nil {
            var midSettings = settings
            midSettings.outputScaleFactor = Float(configuration.midBlockScaleFactor)
            midBlock = UNetMidBlock2D(channels: channels[channels.count - 1], settings: midSettings,
                                      attentionHeadDimension: configuration.attentionHeadDimension ?? channels[channels.count - 1],
                                      attentionGroups: configuration.midAttentionGroups, addAttention: configuration.addAttention)
        } else {
            midBlock = nil
        }

        var upBlocks: [UNetUpBlock] = []
        let reversed = Array(channels.reversed())
        output = reversed[0]
        for (index, type) in configuration.upBlockTypes.enumerated() {
            let previous = output
            output = reversed[index]
            let input = reversed[min(index + 1, channels.count - 1)]
            let isFinal = index == channels.count - 1
            upBlocks.append(UNetUpBlock(
                type: type, layers: configuration.layersPerBlock + 1, inChannels: input, previousOutputChannels: previous,
                outChannels: output, settings: settings, attentionHeadDimension: configuration.attentionHeadDimension ?? output,
                upsampling: isFinal ? nil : configuration.upsampleType))
        }
        self.upBlocks = upBlocks

        convNormOut = GroupNorm(groupCount: configuration.normGroupCount, channels: channels[0], epsilon: Float(configuration.normEpsilon))
        convActivation = Activation(.silu)
        convOut = Conv2d(channels[0], configuration.outChannels, kernelSize: 3, padding: 1)
        super.init()
    }

    // MARK: Forward

    /// The model output for `sample` `[batch, inChannels, height, width]` at
    /// `timesteps` (one per example, or one for all; σ for the `fourier`
    /// embedding), with integer `classLabels` for a class-conditional model.
    public func callAsFunction(_ sample: Tensor, timesteps: [Float], classLabels: [Int]? = nil) -> Tensor {
        forward(sample, timesteps: timesteps, labels: classLabels, condition: nil)
    }

    /// As `callAsFunction(_:timesteps:classLabels:)` with one timestep for the whole batch.
    public func callAsFunction(_ sample: Tensor, timestep: Float, classLabels: [Int]? = nil) -> Tensor {
        forward(sample, timesteps: [timestep], labels: classLabels, condition: nil)
    }

    /// As `callAsFunction(_:timesteps:classLabels:)` with timesteps in a `[batch]` (or scalar) tensor.
    public func callAsFunction(_ sample: Tensor, timesteps: Tensor, classLabels: [Int]? = nil) -> Tensor {
        forward(sample, timesteps: timesteps.toArray(), labels: classLabels, condition: nil)
    }

    /// For `class_embed_type` `identity` (a `[batch, timeEmbeddingDimension]`
    /// condition added to the time embedding) or `timestep` (a `[batch]` tensor
    /// of possibly fractional labels).
    public func callAsFunction(_ sample: Tensor, timesteps: [Float], classCondition: Tensor) -> Tensor {
        forward(sample, timesteps: timesteps, labels: nil, condition: classCondition)
    }

    private func forward(_ input: Tensor, timesteps given: [Float], labels: [Int]?, condition: Tensor?) -> Tensor {
        guard input.rank == 4, input.shape[1] == configuration.inChannels else {
            fatalError("UNet2DModel: sample must be [batch, \(configuration.inChannels), height, width], got \(input.shape)")
        }
        let batch = input.shape[0]
        let timesteps: [Float]
        if given.count == 1 {
            timesteps = Array(repeating: given[0], count: batch)
        } else if given.count == batch {
            timesteps = given
        } else {
            fatalError("UNet2DModel: \(given.count) timesteps for a batch of \(batch); give one per example or one for all")
        }
        var sample = configuration.centerInputSample ? input * 2 - 1 : input

        var embedding = timeEmbedding(timeProjection(timesteps))
        if let classEmbedding {
            embedding = embedding + classEmbeddingOutput(classEmbedding, labels: labels, condition: condition, batch: batch)
        } else if labels != nil || condition != nil {
            fatalError("UNet2DModel: class labels given, but the model has no class embedding (class_embed_type, num_class_embeds)")
        }

        sample = convIn(sample)
        var residuals = [sample]
        for block in downBlocks {
            sample = block(sample, timeEmbedding: embedding, residuals: &residuals)
        }
        if let midBlock {
            sample = midBlock(sample, timeEmbedding: embedding)
        }
        for block in upBlocks {
            sample = block(sample, timeEmbedding: embedding, residuals: &residuals)
        }
        sample = convOut(sample.groupNormSiLU(groupCount: convNormOut.groupCount, weight: convNormOut.weight,
                                              bias: convNormOut.bias, epsilon: convNormOut.epsilon))
        if configuration.timeEmbeddingType == .fourier {
            sample = sample / Tensor(timesteps, shape: [batch, 1, 1, 1])
        }
        return sample
    }

    private func classEmbeddingOutput(_ module: Module, labels: [Int]?, condition: Tensor?, batch: Int) -> Tensor {
        let result: Tensor
        switch module {
        case let table as Embedding:
            guard let labels else { fatalError("UNet2DModel: class labels are required (num_class_embeds is set)") }
            result = table(labels)
        case let embedding as TimestepEmbedding:
            let values = labels.map { $0.map(Float.init) } ?? condition?.toArray()
            guard let values else { fatalError("UNet2DModel: class labels are required (class_embed_type timestep)") }
            result = embedding(timeProjection(values))
        default:
            guard let condition else { fatalError("UNet2DModel: a class condition tensor is required (class_embed_type identity)") }
            result = condition
        }
        guard result.shape.first == batch else {
            fatalError("UNet2DModel: class embedding of shape \(result.shape) does not match the batch of \(batch)")
        }
        return result
    }
}

extension UNet2DConfiguration {
    /// The resnet settings of the down and up blocks.
    var resnetSettings: ResnetSettings {
        ResnetSettings(timeEmbeddingChannels: resolvedTimeEmbeddingDimension, groups: normGroupCount, epsilon: Float(normEpsilon),
                       dropout: Float(dropout), activation: activationFunction.function, timeEmbeddingNorm: resnetTimeScaleShift)
    }

    /// Groups of the middle attention's group norm (nil: none).
    var midAttentionGroups: Int? {
        attentionNormGroupCount ?? (resnetTimeScaleShift == .default ? normGroupCount : nil)
    }

    /// Checks that the configuration builds a model, naming the key at fault.
    public func validate() throws {
        func require(_ condition: Bool, _ key: String, _ reason: @autoclosure () -> String) throws {
            if !condition { throw UNet2DConfigurationError.invalid(key: key, reason: reason()) }
        }
        let channels = blockOutChannels
        try require(!channels.isEmpty && channels.allSatisfy { $0 > 0 }, "block_out_channels", "must be a non-empty list of positive sizes, got \(channels)")
        try require(downBlockTypes.count == channels.count, "down_block_types",
                    "has \(downBlockTypes.count) entries but block_out_channels has \(channels.count)")
        try require(upBlockTypes.count == downBlockTypes.count, "up_block_types",
                    "has \(upBlockTypes.count) entries but down_block_types has \(downBlockTypes.count)")
        try require(inChannels > 0, "in_channels", "must be positive, got \(inChannels)")
        try require(outChannels > 0, "out_channels", "must be positive, got \(outChannels)")
        try require(layersPerBlock > 0, "layers_per_block", "must be positive, got \(layersPerBlock)")
        try require(downsamplePadding >= 0, "downsample_padding", "must not be negative, got \(downsamplePadding)")
        try require(dropout >= 0 && dropout < 1, "dropout", "must be in [0, 1), got \(dropout)")
        try require(normEpsilon >= 0, "norm_eps", "must not be negative, got \(normEpsilon)")
        try require(midBlockScaleFactor != 0, "mid_block_scale_factor", "must not be zero")
        if let dimension = timeEmbeddingDimension { try require(dimension > 0, "time_embedding_dim", "must be positive, got \(dimension)") }
        if timeEmbeddingType == .learned {
            try require((trainTimesteps ?? 0) > 0, "num_train_timesteps", "must be a positive integer for the learned time embedding")
        }
        if let count = classEmbeddingCount { try require(count > 0, "num_class_embeds", "must be positive, got \(count)") }

        // Every group norm's channel count, as the blocks will build them.
        var normalized: [Int] = [channels[0]]
        var attended: [Int] = []
        var output = channels[0]
        for (index, type) in downBlockTypes.enumerated() {
            let input = output
            output = channels[index]
            normalized += [input, output]
            if type == .attentionDownBlock { attended.append(output) }
        }
        let reversed = Array(channels.reversed())
        output = reversed[0]
        for (index, type) in upBlockTypes.enumerated() {
            let previous = output
            output = reversed[index]
            let input = reversed[min(index + 1, channels.count - 1)]
            for layer in 0...layersPerBlock {
                normalized.append((layer == 0 ? previous : output) + (layer == layersPerBlock ? input : output))
            }
            normalized.append(output)
            if type == .attentionUpBlock { attended.append(output) }
        }
        let last = channels[channels.count - 1]
        normalized.append(last)
        try require(normGroupCount > 0, "norm_num_groups", "must be positive, got \(normGroupCount)")
        for count in normalized {
            try require(count % normGroupCount == 0, "norm_num_groups", "\(normGroupCount) groups do not divide a group norm of \(count) channels")
        }
        for count in attended where count % normGroupCount != 0 {
            try require(false, "norm_num_groups", "\(normGroupCount) groups do not divide an attention's \(count) channels")
        }
        if midBlockType != nil && addAttention {
            attended.append(last)
            if let groups = midAttentionGroups {
                try require(groups > 0 && last % groups == 0, attentionNormGroupCount == nil ? "norm_num_groups" : "attn_norm_num_groups",
                            "\(groups) groups do not divide the middle attention's \(last) channels")
            }
        }
        if let headDimension = attentionHeadDimension {
            try require(headDimension > 0, "attention_head_dim", "must be positive, got \(headDimension)")
            for count in attended {
                try require(count >= headDimension, "attention_head_dim", "\(headDimension) is larger than an attention's \(count) channels (no head fits)")
            }
        }
    }
}
