import Foundation
import NN
import Tensors

/// transformers' `CLIPModel`: both towers, their projections into one space
/// and the learned temperature `logit_scale` (a log).
public final class CLIPModel: Module {
    /// What `load(folder:)` found missing, unexpected or mis-shaped (empty when strict).
    public internal(set) var loadReport: StateDictReport?
    public let textModel: CLIPTextTransformer
    public let visionModel: CLIPVisionTransformer
    public let visualProjection: Linear
    public let textProjection: Linear
    /// A scalar: logits are cosine similarities times `exp(logit_scale)`.
    public let logitScale: Tensor
    public let configuration: CLIPConfiguration

    public override class var stateDictKeys: [String: String] {
        ["textModel": "text_model", "visionModel": "vision_model", "visualProjection": "visual_projection",
         "textProjection": "text_projection", "logitScale": "logit_scale"]
    }

    public init(_ configuration: CLIPConfiguration) {
        textModel = CLIPTextTransformer(configuration.text)
        visionModel = CLIPVisionTransformer(configuration.vision)
        visualProjection = Linear(configuration.vision.hiddenSize, configuration.projectionDimension, bias: false)
        textProjection = Linear(configuration.text.hiddenSize, configuration.projectionDimension, bias: false)
        logitScale = Initialization.constant(Float(configuration.logitScaleInitialValue), [])
        self.configuration = configuration
        super.init()
    }

    /// `text_embeds` before normalisation: `[batch, projection_dim]` (`get_text_features`).
    public func textFeatures(ids: [Int], batch: Int = 1, attentionMask: [Int]? = nil) -> Tensor {
        textProjection(textModel(ids: ids, batch: batch, attentionMask: attentionMask).pooled)
    }

    /// `image_embeds` before normalisation: `[batch, projection_dim]` (`get_image_features`).
    public func imageFeatures(_ pixels: Tensor) -> Tensor {
        visualProjection(visionModel(pixels).pooled)
    }

    /// Cosine similarities times `exp(logit_scale)`: `logits_per_image` `[images, texts]`.
    public func logitsPerImage(imageFeatures: Tensor, textFeatures: Tensor) -> Tensor {
        let images = CLIPModel.normalized(imageFeatures)
        let texts = CLIPModel.normalized(textFeatures)
        return images.matmul(texts.transposed(0, 1)) * logitScale.exp()
    }

    /// Rows scaled to unit length.
    public static func normalized(_ rows: Tensor) -> Tensor {
        rows / rows.square().sum(axis: -1, keepDims: true).sqrt()
    }

    /// CLIP's symmetric contrastive loss of `logits_per_image` whose matching pairs
    /// are on the diagonal: the mean of the image→text and text→image cross-entropies.
    public static func contrastiveLoss(logitsPerImage: Tensor) -> Tensor {
        let count = logitsPerImage.shape[0]
        let targets = Array(0..<count)
        let imageLoss = Tensor.crossEntropy(logits: logitsPerImage, targets: targets)
        let textLoss = Tensor.crossEntropy(logits: logitsPerImage.transposed(0, 1), targets: targets)
        return (imageLoss + textLoss) * 0.5
    }
}
