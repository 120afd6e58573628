import Foundation
import NN
import Tensors

/// diffusers' `UNet2DConditionModel`: Stable Diffusion's cross-attention UNet,
/// with the same parameter names (`down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight`, …),
/// `config.json` keys and forward pass, so Stable Diffusion 1.x and 2.x
/// `unet/` folders load and give diffusers' outputs.
///
/// ```swift
/// let unet = try UNet2DConditionModel.load(folder: URL(fileURLWithPath: "stable-diffusion-v1-5/unet"))
/// let noise = noGrad { unet(latents, timestep: 981, encoderHiddenStates: promptEmbeddings) }
/// ```
///
/// Under `noGrad` no graph is kept; with gradients on, the output is
/// differentiable with respect to the parameters, the sample and the context
/// (training and guidance).
public final class UNet2DConditionModel: Module {
    public let convIn: Conv2d
    public let timeProjection: Timesteps
    public let timeEmbedding: TimestepEmbedding
    /// An `Embedding` (`num_class_embeds`), a `TimestepEmbedding` (`timestep`, `projection`),
    /// `Identity`, a `Linear` (`simple_projection`), or nil.
    public let classEmbedding: Module?
    /// `CrossAttnDownBlock2D` or `UNetDownBlock` (`DownBlock2D`) per level.
    public let downBlocks: [Module]
    /// `UNetMidBlock2DCrossAttn`, `UNetMidBlock2D`, or nil.
    public let midBlock: Module?
    /// `CrossAttnUpBlock2D` or `UNetUpBlock` (`UpBlock2D`) per level.
    public let upBlocks: [Module]
    public let convNormOut: GroupNorm
    public let convActivation: Activation
    public let convOut: Conv2d

    public override class var stateDictKeys: [String: String] {
        ["convIn": "conv_in", "timeProjection": "time_proj", "timeEmbedding": "time_embedding", "classEmbedding": "class_embedding",
         "downBlocks": "down_blocks", "upBlocks": "up_blocks", "midBlock": "mid_block", "convNormOut": "conv_norm_out",
         "convActivation": "conv_act", "convOut": "conv_out"]
    }

    /// The configuration the model was built from.
    public let configuration: UNet2DConditionConfiguration
    /// What did not match when the weights were loaded by `load(folder:variant:strict:)`.
    public internal(set) var loadReport: StateDictReport?

    /// diffusers' `enable_gradient_checkpointing()`: while gradients are recorded, every
    /// down, mid and up block runs each resnet and each transformer block through
    /// `checkpoint(_:parameters:_:)`, keeping only their inputs for backward and
    /// recomputing the rest there (same gradients, less memory, about one more forward
    /// pass of time). No effect under `noGrad`.
    public var gradientCheckpointing = false {
        didSet {
            for block in downBlocks + upBlocks + (midBlock.map { [$0] } ?? []) {
                switch block {
                case let block as CrossAttnDownBlock2D: block.gradientCheckpointing = gradientCheckpointing
                case let block as CrossAttnUpBlock2D: block.gradientCheckpointing = gradientCheckpointing
                case let block as UNetMidBlock2DCrossAttn: block.gradientCheckpointing = gradientCheckpointing
                case let block as UNetDownBlock: block.gradientCheckpointing = gradientCheckpointing
                case let block as UNetUpBlock: block.gradientCheckpointing = gradientCheckpointing
                case let block as UNetMidBlock2D: block.gradientCheckpointing = gradientCheckpointing
                default: break
                }
            }
        }
    }

    /// Builds a randomly initialised model. Throws `UNet2DConditionConfigurationError`
    /// naming the key when the configuration cannot build a model.
    public init(configuration: UNet2DConditionConfiguration) throws {
        try configuration.validate()
        self.configuration = configuration
        let channels = configuration.blockOutChannels
        let count = channels.count
        let timeDimension = configuration.resolvedTimeEmbeddingDimension
        let activation = configuration.activationFunction.function
        convIn = Conv2d(configuration.inChannels, channels[0], kernelSize: configuration.convInKernel,
                        padding: (configuration.convInKernel - 1) / 2)
        timeProjection = Timesteps(channels: channels[0], flipSinToCos: configuration.flipSinToCos,
                                   downscaleFrequencyShift: Float(configuration.frequencyShift))
        timeEmbedding = TimestepEmbedding(inputChannels: channels[0], embeddingDimension: timeDimension, activation: activation,
                                          conditionDimension: configuration.timeConditionProjectionDimension)
        let projectionInput = configuration.projectionClassEmbeddingInputDimension ?? 0
        switch (configuration.classEmbeddingType, configuration.classEmbeddingCount) {
        case (.timestep?, _):
            classEmbedding = TimestepEmbedding(inputChannels: channels[0], embeddingDimension: timeDimension, activation: activation)
        case (.identity?, _): classEmbedding = Identity()
        case (.projection?, _): classEmbedding = TimestepEmbedding(inputChannels: projectionInput, embeddingDimension: timeDimension)
        case (.simpleProjection?, _): classEmbedding = Linear(projectionInput, timeDimension)
        case (nil, let rows?): classEmbedding = Embedding(rows, timeDimension)
        case (nil, nil): classEmbedding = nil
        }

        let settings = ResnetSettings(timeEmbeddingChannels: configuration.blockTimeEmbeddingDimension,
                                      groups: configuration.normGroupCount, epsilon: Float(configuration.normEpsilon),
                                      dropout: Float(configuration.dropout), activation: activation,
                                      timeEmbeddingNorm: configuration.resnetTimeScaleShift)
        let heads = configuration.resolvedHeadCounts
        let layers = configuration.layersPerBlock.values(count: count)
        let crossDimensions = configuration.crossAttentionDimension.values(count: count)
        let transformerLayers = configuration.transformerLayersPerBlock.values(count: count)
        let onlyCross = configuration.onlyCrossAttention.values(count: count)
        func transformer(_ index: Int) -> TransformerSettings {
            TransformerSettings(heads: heads[index], layers: transformerLayers[index], crossAttentionDimension: crossDimensions[index],
                                groups: configuration.normGroupCount, useLinearProjection: configuration.useLinearProjection,
                                onlyCrossAttention: onlyCross[index])
        }

        var downBlocks: [Module] = []
        var output = channels[0]
        for (index, type) in configuration.downBlockTypes.enumerated() {
            let input = output
            output = channels[index]
            let isFinal = index == count - 1
            switch type {
            case .crossAttentionDownBlock:
                downBlocks.append(CrossAttnDownBlock2D(layers: layers[index], inChannels: input, outChannels: output, settings: settings,
                                                       transformer: transformer(index), addDownsample: !isFinal,
                                                       downsamplePadding: configuration.downsamplePadding))
            case .downBlock:
                downBlocks.append(UNetDownBlock(type: .downBlock, layers: layers[index], inChannels: input, outChannels: output,
                                                settings: settings, attentionHeadDimension: output, downsampling: isFinal ? nil : .conv,
                                                downsamplePadding: configuration.downsamplePadding))
            }
        }
        self.downBlocks = downBlocks

        var midSettings = settings
        midSettings.outputScaleFactor = Float(configuration.midBlockScaleFactor)
        switch configuration.midBlockType {
        case .crossAttention?:
            // diffusers builds the middle transformer without only_cross_attention
            // (mid_block_only_cross_attention is for UNetMidBlock2DSimpleCrossAttn).
            var midTransformer = transformer(count - 1)
            midTransformer.onlyCrossAttention = false
            midBlock = UNetMidBlock2DCrossAttn(channels: channels[count - 1], settings: midSettings, transformer: midTransformer)
        case .plain?:
            midBlock = UNetMidBlock2D(channels: channels[count - 1], settings: midSettings, layers: 0,
                                      attentionHeadDimension: channels[count - 1], attentionGroups: nil, addAttention: false)
        case nil:
            midBlock = nil
        }

        var upBlocks: [Module] = []
        let reversed = Array(channels.reversed())
        output = reversed[0]
        for (index, type) in configuration.upBlockTypes.enumerated() {
            let previous = output
            output = reversed[index]
            let input = reversed[min(index + 1, count - 1)]
            let isFinal = index == count - 1
            let level = count - 1 - index  // the down block this up block mirrors
            switch type {
            case .crossAttentionUpBlock:
                upBlocks.append(CrossAttnUpBlock2D(layers: layers[level] + 1, inChannels: input, previousOutputChannels: previous,
                                                   outChannels: output, settings: settings, transformer: transformer(level),
                                                   addUpsample: !isFinal))
            case .upBlock:
                upBlocks.append(UNetUpBlock(type: .upBlock, layers: layers[level] + 1, inChannels: input, previousOutputChannels: previous,
                                            outChannels: output, settings: settings, attentionHeadDimension: output,
                                            upsampling: isFinal ? nil : .conv))
            }
        }
        self.upBlocks = upBlocks

        convNormOut = GroupNorm(groupCount: configuration.normGroupCount, channels: channels[0], epsilon: Float(configuration.normEpsilon))
        convActivation = Activation(activation)
        convOut = Conv2d(channels[0], configuration.outChannels, kernelSize: configuration.convOutKernel,
                         padding: (configuration.convOutKernel - 1) / 2)
        super.init()
    }

    // MARK: Forward

    /// The noise (or v) prediction for `sample` `[batch, inChannels, height, width]`.
    ///
    /// - Parameters:
    ///   - timesteps: one per example, or one for all.
    ///   - encoderHiddenStates: the context, `[batch, tokens, cross_attention_dim]` (the text encoder's output).
    ///   - classLabels: integer labels for `num_class_embeds` (or `class_embed_type: timestep`).
    ///   - classCondition: the class input as a tensor: `[batch]` labels for `timestep`,
    ///     `[batch, width]` for `identity`, `projection` and `simple_projection`.
    ///   - encoderAttentionMask: `[batch, tokens]`, 1 for tokens to attend to and 0 for
    ///     tokens to ignore (made into diffusers' additive bias of −10000).
    ///   - timestepCondition: `[batch, time_cond_proj_dim]` (`timestep_cond`).
    public func callAsFunction(_ sample: Tensor, timesteps: [Float], encoderHiddenStates: Tensor, classLabels: [Int]? = nil,
                               classCondition: Tensor? = nil, encoderAttentionMask: Tensor? = nil,
                               timestepCondition: Tensor? = nil) -> Tensor {
        forward(sample, timesteps: timesteps, context: encoderHiddenStates, labels: classLabels, condition: classCondition,
                mask: encoderAttentionMask, timestepCondition: timestepCondition)
    }

    /// As `callAsFunction(_:timesteps:encoderHiddenStates:…)` with one timestep for the whole batch.
    public func callAsFunction(_ sample: Tensor, timestep: Float, encoderHiddenStates: Tensor, classLabels: [Int]? = nil,
                               classCondition: Tensor? = nil, encoderAttentionMask: Tensor? = nil,
                               timestepCondition: Tensor? = nil) -> Tensor {
        forward(sample, timesteps: [timestep], context: encoderHiddenStates, labels: classLabels, condition: classCondition,
                mask: encoderAttentionMask, timestepCondition: timestepCondition)
    }

    /// As `callAsFunction(_:timesteps:encoderHiddenStates:…)` with timesteps in a `[batch]` (or scalar) tensor.
    public func callAsFunction(_ sample: Tensor, timesteps: Tensor, encoderHiddenStates: Tensor, classLabels: [Int]? = nil,
                               classCondition: Tensor? = nil, encoderAttentionMask: Tensor? = nil,
                               timestepCondition: Tensor? = nil) -> Tensor {
        forward(sample, timesteps: timesteps.toArray(), context: encoderHiddenStates, labels: classLabels, condition: classCondition,
                mask: encoderAttentionMask, timestepCondition: timestepCondition)
    }

    private func forward(_ input: Tensor, timesteps given: [Float], context: Tensor, labels: [Int]?, condition: Tensor?,
                         mask: Tensor?, timestepCondition: Tensor?) -> Tensor {
        let name = "UNet2DConditionModel"
        guard input.rank == 4, input.shape[1] == configuration.inChannels else {
            fatalError("\(name): sample must be [batch, \(configuration.inChannels), height, width], got \(input.shape)")
        }
        let batch = input.shape[0]
        guard context.rank == 3, context.shape[0] == batch else {
            fatalError("\(name): encoderHiddenStates must be [\(batch), tokens, channels], got \(context.shape)")
        }
        let timesteps: [Float]
        if given.count == 1 {
            timesteps = Array(repeating: given[0], count: batch)
        } else if given.count == batch {
            timesteps = given
        } else {
            fatalError("\(name): \(given.count) timesteps for a batch of \(batch); give one per example or one for all")
        }
        var contextMask: Tensor?
        if let mask {
            guard mask.shape == [batch, context.shape[1]] else {
                fatalError("\(name): encoderAttentionMask must be [\(batch), \(context.shape[1])], got \(mask.shape)")
            }
            contextMask = noGrad { ((1 - mask.detach()) * -10000).reshaped([batch, 1, 1, context.shape[1]]) }
        }
        let crossContext = CrossAttentionContext(states: context, mask: contextMask)
        var sample = configuration.centerInputSample ? input * 2 - 1 : input

        var embedding = timeEmbedding(timeProjection(timesteps), condition: timestepCondition)
        if let classEmbedding {
            let classOutput = classEmbeddingOutput(classEmbedding, labels: labels, condition: condition, batch: batch)
            embedding = configuration.classEmbeddingsConcatenated
                ? Tensor.concatenate([embedding, classOutput], axis: 1) : embedding + classOutput
        } else if labels != nil || condition != nil {
            fatalError("\(name): class labels given, but the model has no class embedding (class_embed_type, num_class_embeds)")
        }
        if let activation = configuration.timeEmbeddingActivation {
            embedding = Activation(activation.function)(embedding)
        }

        sample = convIn(sample)
        var residuals = [sample]
        for block in downBlocks {
            if let block = block as? CrossAttnDownBlock2D {
                sample = block(sample, timeEmbedding: embedding, context: crossContext, residuals: &residuals)
            } else if let block = block as? UNetDownBlock {
                sample = block(sample, timeEmbedding: embedding, residuals: &residuals)
            }
        }
        if let block = midBlock as? UNetMidBlock2DCrossAttn {
            sample = block(sample, timeEmbedding: embedding, context: crossContext)
        } else if let block = midBlock as? UNetMidBlock2D {
            sample = block(sample, timeEmbedding: embedding)
        }
        for block in upBlocks {
            if let block = block as? CrossAttnUpBlock2D {
                sample = block(sample, timeEmbedding: embedding, context: crossContext, residuals: &residuals)
            } else if let block = block as? UNetUpBlock {
                sample = block(sample, timeEmbedding: embedding, residuals: &residuals)
            }
        }
        if convActivation.function == .silu || convActivation.function == .swish {
            sample = sample.groupNormSiLU(groupCount: convNormOut.groupCount, weight: convNormOut.weight, bias: convNormOut.bias,
                                          epsilon: convNormOut.epsilon)
        } else {
            sample = convActivation(convNormOut(sample))
        }
        return convOut(sample)
    }

    private func classEmbeddingOutput(_ module: Module, labels: [Int]?, condition: Tensor?, batch: Int) -> Tensor {
        let name = "UNet2DConditionModel"
        let result: Tensor
        switch (module, configuration.classEmbeddingType) {
        case (let table as Embedding, _):
            guard let labels else { fatalError("\(name): class labels are required (num_class_embeds is set)") }
            result = table(labels)
        case (let embedding as TimestepEmbedding, .timestep?):
            let values = labels.map { $0.map(Float.init) } ?? condition?.toArray()
            guard let values else { fatalError("\(name): class labels are required (class_embed_type timestep)") }
            result = embedding(timeProjection(values))
        case (let embedding as TimestepEmbedding, _):
            guard let condition else { fatalError("\(name): a class condition tensor is required (class_embed_type projection)") }
            result = embedding(condition)
        case (let linear as Linear, _):
            guard let condition else { fatalError("\(name): a class condition tensor is required (class_embed_type simple_projection)") }
            result = linear(condition)
        default:
            guard let condition else { fatalError("\(name): a class condition tensor is required (class_embed_type identity)") }
            result = condition
        }
        guard result.shape.first == batch else {
            fatalError("\(name): class embedding of shape \(result.shape) does not match the batch of \(batch)")
        }
        return result
    }

    /// `[hidden, skip]` along the channels.
    static func joined(_ hidden: Tensor, skip: Tensor?) -> Tensor {
        guard let skip else { fatalError("UNet2DConditionModel: no skip connection left") }
        guard skip.shape[2] == hidden.shape[2], skip.shape[3] == hidden.shape[3] else {
            fatalError("UNet2DConditionModel: skip connection \(skip.shape) does not match \(hidden.shape)")
        }
        return Tensor.concatenate([hidden, skip], axis: 1)
    }
}
