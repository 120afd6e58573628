import Foundation
import NN
import Tensors

/// transformers' `CLIPVisionEmbeddings`: a patch convolution (kernel = stride
/// = patch size, no bias), a learned class token first, learned positions.
public final class CLIPVisionEmbeddings: Module {
    public let classEmbedding: Tensor
    public let patchEmbedding: Conv2d
    public let positionEmbedding: Embedding
    public let configuration: CLIPVisionConfiguration

    public override class var stateDictKeys: [String: String] {
        ["classEmbedding": "class_embedding", "patchEmbedding": "patch_embedding", "positionEmbedding": "position_embedding"]
    }

    public init(_ configuration: CLIPVisionConfiguration) {
        classEmbedding = Initialization.normal([configuration.hiddenSize])
        patchEmbedding = Conv2d(configuration.channelCount, configuration.hiddenSize, kernelSize: configuration.patchSize,
                                stride: configuration.patchSize, bias: false)
        positionEmbedding = Embedding(configuration.positionCount, configuration.hiddenSize)
        self.configuration = configuration
        super.init()
    }

    /// `[batch, patches + 1, width]` for `pixels` `[batch, channels, image_size, image_size]`.
    public func callAsFunction(_ pixels: Tensor) -> Tensor {
        let size = configuration.imageSize
        precondition(pixels.rank == 4 && pixels.shape[1] == configuration.channelCount && pixels.shape[2] == size && pixels.shape[3] == size,
                     "CLIPVisionEmbeddings: input \(pixels.shape) is not [batch, \(configuration.channelCount), \(size), \(size)]")
        let batch = pixels.shape[0]
        let width = configuration.hiddenSize
        let patches = patchEmbedding(pixels)  // [B, width, grid, grid]
        let grid = patches.shape[2] * patches.shape[3]
        let tokens = patches.reshaped([batch, width, grid]).transposed(1, 2)
        let classToken = classEmbedding.reshaped([1, 1, width]).expanded([batch, 1, width])
        let joined = Tensor.concatenate([classToken, tokens], axis: 1)
        return joined + positionEmbedding.weight.unsqueezed(0)
    }
}

/// What a CLIP image tower returns.
public struct CLIPVisionOutput {
    /// `[batch, patches + 1, width]`, before `post_layernorm` (as transformers returns it).
    public var lastHiddenState: Tensor
    /// `[batch, width]`: `post_layernorm` of the class token.
    public var pooled: Tensor
    /// The embeddings after `pre_layrnorm` and every layer's output (when asked for).
    public var hiddenStates: [Tensor]
}

/// transformers' `CLIPVisionTransformer` (`vision_model.*`).
public final class CLIPVisionTransformer: Module {
    public let embeddings: CLIPVisionEmbeddings
    /// transformers' spelling: `pre_layrnorm`.
    public let preLayerNorm: LayerNorm
    public let encoder: CLIPEncoder
    public let postLayerNorm: LayerNorm
    public let configuration: CLIPVisionConfiguration

    public override class var stateDictKeys: [String: String] { ["preLayerNorm": "pre_layrnorm", "postLayerNorm": "post_layernorm"] }

    public init(_ configuration: CLIPVisionConfiguration) {
        embeddings = CLIPVisionEmbeddings(configuration)
        preLayerNorm = LayerNorm(configuration.hiddenSize, epsilon: configuration.layerNormEpsilon)
        encoder = CLIPEncoder(configuration)
        postLayerNorm = LayerNorm(configuration.hiddenSize, epsilon: configuration.layerNormEpsilon)
        self.configuration = configuration
        super.init()
    }

    /// Encodes images `[batch, channels, image_size, image_size]`, already
    /// normalised with CLIP's mean and standard deviation.
    public func callAsFunction(_ pixels: Tensor, keepingHiddenStates: Bool = false) -> CLIPVisionOutput {
        let hidden = preLayerNorm(embeddings(pixels))
        let encoded = encoder(hidden, mask: nil, keepingHiddenStates: keepingHiddenStates)
        let classToken = encoded.last.narrowed(axis: 1, start: 0, length: 1).squeezed(1)
        return CLIPVisionOutput(lastHiddenState: encoded.last, pooled: postLayerNorm(classToken), hiddenStates: encoded.hiddenStates)
    }
}

/// transformers' `CLIPVisionModel`: the image tower alone (`vision_model.*`).
public final class CLIPVisionModel: Module {
    /// What `load(folder:)` found missing, unexpected or mis-shaped (empty when strict).
    public internal(set) var loadReport: StateDictReport?
    public let visionModel: CLIPVisionTransformer

    public override class var stateDictKeys: [String: String] { ["visionModel": "vision_model"] }

    public init(_ configuration: CLIPVisionConfiguration) {
        visionModel = CLIPVisionTransformer(configuration)
        super.init()
    }

    public var configuration: CLIPVisionConfiguration { visionModel.configuration }

    public func callAsFunction(_ pixels: Tensor, keepingHiddenStates: Bool = false) -> CLIPVisionOutput {
        visionModel(pixels, keepingHiddenStates: keepingHiddenStates)
    }
}

/// transformers' `CLIPVisionModelWithProjection`: the image tower and
/// `visual_projection` (no bias) of its pooled output (`image_embeds`).
public final class CLIPVisionModelWithProjection: Module {
    /// What `load(folder:)` found missing, unexpected or mis-shaped (empty when strict).
    public internal(set) var loadReport: StateDictReport?
    public let visionModel: CLIPVisionTransformer
    public let visualProjection: Linear

    public override class var stateDictKeys: [String: String] { ["visionModel": "vision_model", "visualProjection": "visual_projection"] }

    public init(_ configuration: CLIPVisionConfiguration) {
        visionModel = CLIPVisionTransformer(configuration)
        visualProjection = Linear(configuration.hiddenSize, configuration.projectionDimension, bias: false)
        super.init()
    }

    public var configuration: CLIPVisionConfiguration { visionModel.configuration }

    public func callAsFunction(_ pixels: Tensor, keepingHiddenStates: Bool = false) -> (output: CLIPVisionOutput, imageEmbeddings: Tensor) {
        let output = visionModel(pixels, keepingHiddenStates: keepingHiddenStates)
        return (output, visualProjection(output.pooled))
    }
}
