import Foundation
import NN
import Tensors

/// transformers' `CLIPTextEmbeddings`: token and learned position embeddings.
public final class CLIPTextEmbeddings: Module {
    public let tokenEmbedding: Embedding
    public let positionEmbedding: Embedding

    public override class var stateDictKeys: [String: String] {
        ["tokenEmbedding": "token_embedding", "positionEmbedding": "position_embedding"]
    }

    public init(_ configuration: CLIPTextConfiguration) {
        tokenEmbedding = Embedding(configuration.vocabularySize, configuration.hiddenSize)
        positionEmbedding = Embedding(configuration.maximumPositionEmbeddings, configuration.hiddenSize)
        super.init()
    }

    /// `[batch, tokens, width]` for `ids` of `batch` rows of `tokens` each.
    public func callAsFunction(ids: [Int], batch: Int) -> Tensor {
        let tokens = ids.count / batch
        let tokenVectors = tokenEmbedding.weight.embedding(indices: ids, indexShape: [batch, tokens])
        let positions = positionEmbedding.weight.narrowed(axis: 0, start: 0, length: tokens)
        return tokenVectors + positions.unsqueezed(0)
    }
}

/// What a CLIP text tower returns.
public struct CLIPTextOutput {
    /// `[batch, tokens, width]` after `final_layer_norm`.
    public var lastHiddenState: Tensor
    /// `[batch, width]`: the last hidden state at each prompt's end token.
    public var pooled: Tensor
    /// The embeddings and every layer's output before the final norm (when asked for):
    /// `hidden_states` of transformers, layer count + 1 entries.
    public var hiddenStates: [Tensor]
}

/// transformers' `CLIPTextTransformer` (`text_model.*`): embeddings, a causal
/// pre-norm encoder and `final_layer_norm`.
public final class CLIPTextTransformer: Module {
    public let embeddings: CLIPTextEmbeddings
    public let encoder: CLIPEncoder
    public let finalLayerNorm: LayerNorm
    public let configuration: CLIPTextConfiguration

    public override class var stateDictKeys: [String: String] { ["finalLayerNorm": "final_layer_norm"] }

    public init(_ configuration: CLIPTextConfiguration) {
        embeddings = CLIPTextEmbeddings(configuration)
        encoder = CLIPEncoder(configuration)
        finalLayerNorm = LayerNorm(configuration.hiddenSize, epsilon: configuration.layerNormEpsilon)
        self.configuration = configuration
        super.init()
    }

    /// Encodes `ids`, `batch` rows of equal length (at most `max_position_embeddings`).
    ///
    /// - Parameters:
    ///   - attentionMask: 1 for real tokens, 0 for padding, per id (transformers'
    ///     `attention_mask`; Stable Diffusion's pipelines pass none).
    ///   - keepingHiddenStates: also return every layer's output.
    ///   - throughLayer: run only this many layers (the rest are skipped, not computed).
    public func callAsFunction(ids: [Int], batch: Int = 1, attentionMask: [Int]? = nil,
                               keepingHiddenStates: Bool = false, throughLayer: Int? = nil) -> CLIPTextOutput {
        precondition(batch > 0 && ids.count % batch == 0, "CLIPTextTransformer: \(ids.count) ids do not split into \(batch) rows")
        let tokens = ids.count / batch
        precondition(tokens <= configuration.maximumPositionEmbeddings,
                     "CLIPTextTransformer: \(tokens) tokens exceed max_position_embeddings \(configuration.maximumPositionEmbeddings)")
        precondition(ids.allSatisfy { $0 >= 0 && $0 < configuration.vocabularySize },
                     "CLIPTextTransformer: a token id is outside the vocabulary of \(configuration.vocabularySize)")
        let hidden = embeddings(ids: ids, batch: batch)
        let mask = Self.causalMask(tokens: tokens, batch: batch, attentionMask: attentionMask)
        let encoded = encoder(hidden, mask: mask, keepingHiddenStates: keepingHiddenStates, throughLayer: throughLayer)
        let last = finalLayerNorm(encoded.last)
        let positions = poolingPositions(ids: ids, batch: batch)
        let flat = last.reshaped([batch * tokens, configuration.hiddenSize])
        let pooled = flat.indexSelect(axis: 0, indices: positions.enumerated().map { $0.offset * tokens + $0.element })
        return CLIPTextOutput(lastHiddenState: last, pooled: pooled, hiddenStates: encoded.hiddenStates)
    }

    /// Each row's end-token position by transformers' rule: with `eos_token_id`
    /// 2 (older configs) the position of the largest id, else the first `eos_token_id`
    /// (the last position when a row has none).
    public func poolingPositions(ids: [Int], batch: Int) -> [Int] {
        let tokens = ids.count / batch
        return (0..<batch).map { row in
            let slice = ids[(row * tokens)..<((row + 1) * tokens)]
            if configuration.endTokenID == 2 {
                // torch.argmax returns the first maximum.
                var best = slice.startIndex
                for index in slice.indices where slice[index] > slice[best] { best = index }
                return best - row * tokens
            }
            // (ids == eos).argmax(): the first match, or 0 when there is none.
            return (slice.firstIndex(of: configuration.endTokenID) ?? slice.startIndex) - row * tokens
        }
    }

    /// The additive causal mask `[1 or batch, 1, tokens, tokens]`, with padded keys masked too.
    static func causalMask(tokens: Int, batch: Int, attentionMask: [Int]?) -> Tensor {
        let blocked = -Float.greatestFiniteMagnitude
        let rows = attentionMask == nil ? 1 : batch
        var values = [Float](repeating: 0, count: rows * tokens * tokens)
        for row in 0..<rows {
            for query in 0..<tokens {
                for key in 0..<tokens where key > query || (attentionMask.map { $0[row * tokens + key] == 0 } ?? false) {
                    values[(row * tokens + query) * tokens + key] = blocked
                }
            }
        }
        return Tensor(values, shape: [rows, 1, tokens, tokens])
    }
}

/// transformers' `CLIPTextModel`: the text tower alone (`text_model.*`), as
/// Stable Diffusion pipelines store it in `text_encoder/`.
public final class CLIPTextModel: Module {
    /// What `load(folder:)` found missing, unexpected or mis-shaped (empty when strict).
    public internal(set) var loadReport: StateDictReport?
    public let textModel: CLIPTextTransformer

    public override class var stateDictKeys: [String: String] { ["textModel": "text_model"] }

    public init(_ configuration: CLIPTextConfiguration) {
        textModel = CLIPTextTransformer(configuration)
        super.init()
    }

    public var configuration: CLIPTextConfiguration { textModel.configuration }

    public func callAsFunction(ids: [Int], batch: Int = 1, attentionMask: [Int]? = nil,
                               keepingHiddenStates: Bool = false, throughLayer: Int? = nil) -> CLIPTextOutput {
        textModel(ids: ids, batch: batch, attentionMask: attentionMask, keepingHiddenStates: keepingHiddenStates, throughLayer: throughLayer)
    }
}

/// transformers' `CLIPTextModelWithProjection`: the text tower and
/// `text_projection` (no bias) of its pooled output (`text_embeds`).
public final class CLIPTextModelWithProjection: Module {
    /// What `load(folder:)` found missing, unexpected or mis-shaped (empty when strict).
    public internal(set) var loadReport: StateDictReport?
    public let textModel: CLIPTextTransformer
    public let textProjection: Linear

    public override class var stateDictKeys: [String: String] { ["textModel": "text_model", "textProjection": "text_projection"] }

    public init(_ configuration: CLIPTextConfiguration) {
        textModel = CLIPTextTransformer(configuration)
        textProjection = Linear(configuration.hiddenSize, configuration.projectionDimension, bias: false)
        super.init()
    }

    public var configuration: CLIPTextConfiguration { textModel.configuration }

    /// The tower's output and the projected pooled output `[batch, projection_dim]`.
    public func callAsFunction(ids: [Int], batch: Int = 1, attentionMask: [Int]? = nil,
                               keepingHiddenStates: Bool = false) -> (output: CLIPTextOutput, textEmbeddings: Tensor) {
        let output = textModel(ids: ids, batch: batch, attentionMask: attentionMask, keepingHiddenStates: keepingHiddenStates)
        return (output, textProjection(output.pooled))
    }
}
