import Foundation
import NN
import Tensors

/// CLIP guidance (the notes' third guidance): the squared great-circle
/// distance between CLIP's embedding of random cut-outs of the predicted x0
/// and the embedding of a prompt, averaged over the cut-outs,
/// `2 · arcsin(‖a − b‖ / 2)²` for unit vectors a and b.
///
/// The prompt is embedded once. Every call draws new cut-outs (``CLIPCutouts``)
/// from the loss's own generator, so a run is reproducible from its seed.
/// One-channel models are seen by CLIP as grey RGB images.
public final class CLIPGuidanceLoss: GuidanceLoss {
    public let model: CLIPModel
    public let prompt: String
    public var cutouts: CLIPCutouts
    /// The prompt's unit embedding `[1, projection_dim]`.
    public let textEmbedding: Tensor
    private var generator: RandomGenerator

    public var name: String { "CLIP loss" }

    /// - Parameters:
    ///   - promptIDs: the prompt's token ids as the model's tokenizer makes them
    ///     (padded or not: pooling finds the end token).
    public init(model: CLIPModel, prompt: String, promptIDs: [Int], cutouts: CLIPCutouts = CLIPCutouts(), seed: UInt64 = 0) {
        self.model = model
        self.prompt = prompt
        self.cutouts = cutouts
        model.eval()
        model.freeze()
        textEmbedding = noGrad { CLIPModel.normalized(model.textFeatures(ids: promptIDs, batch: 1)) }
        generator = RandomGenerator(seed: seed)
    }

    /// The squared great-circle distance between rows of unit vectors `a` `[N, D]`
    /// and `b` (`[N, D]` or `[1, D]`): `[N]`.
    public static func sphericalDistance(_ a: Tensor, _ b: Tensor) -> Tensor {
        let chord = (a - b).square().sum(axis: -1).sqrt() * 0.5
        // Clamped below 1 so arcsin's derivative stays finite for opposite vectors.
        let angle = chord.clamped(max: 1 - 1e-6).asin()
        return angle.square() * 2
    }

    /// Embeds x0 `[N, C, H, W]` (model range [-1, 1]) through `cutouts.count`
    /// cut-outs per image: unit vectors `[count · N, projection_dim]`, cut-out major.
    public func imageEmbeddings(_ predictedOriginal: Tensor) -> Tensor {
        var images = predictedOriginal
        if images.shape[1] == 1 { images = images.expanded([images.shape[0], 3, images.shape[2], images.shape[3]]) }
        precondition(images.shape[1] == 3, "CLIP guidance needs RGB or one-channel images, got \(predictedOriginal.shape)")
        let cuts = cutouts(images, size: model.configuration.vision.imageSize, generator: &generator)
        // Cut-outs stay in [-1, 1]; the normalisation maps that range to CLIP's pixel values.
        return CLIPModel.normalized(model.imageFeatures(CLIPImageNormalization.normalize(cuts)))
    }

    public func callAsFunction(_ predictedOriginal: Tensor) -> Tensor {
        let batch = predictedOriginal.shape[0]
        let embeddings = imageEmbeddings(predictedOriginal)
        let distances = Self.sphericalDistance(embeddings, textEmbedding)
        return distances.reshaped([embeddings.shape[0] / batch, batch]).mean(axis: 0)
    }
}

/// Several guidance losses lowered together: Σ weightᵢ · lossᵢ per image
/// (colour and CLIP guidance at once).
public struct CombinedGuidanceLoss: GuidanceLoss {
    public let terms: [(loss: any GuidanceLoss, weight: Float)]

    public init(_ terms: [(loss: any GuidanceLoss, weight: Float)]) {
        precondition(!terms.isEmpty, "CombinedGuidanceLoss needs at least one loss")
        self.terms = terms
    }

    public var name: String { terms.map(\.loss.name).joined(separator: " + ") }

    public func callAsFunction(_ predictedOriginal: Tensor) -> Tensor {
        var total: Tensor?
        for (loss, weight) in terms {
            let value = weight == 1 ? loss(predictedOriginal) : loss(predictedOriginal) * weight
            total = total.map { $0 + value } ?? value
        }
        return total!
    }
}
