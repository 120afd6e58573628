/// Padding of a batch.
public enum CLIPPadding: Sendable, Equatable {
    /// No padding: each sequence keeps its length (attention masks all ones).
    case none
    /// Pad to the longest sequence of the batch (`padding="longest"`).
    case longest
    /// Pad to the maximum length (`padding="max_length"`), what Stable Diffusion pipelines do.
    case maximumLength
}

/// Token ids and attention masks of a batch of texts, as `tokenizer(texts, ...)` returns them.
public struct CLIPTokenizedBatch: Sendable, Equatable {
    /// `input_ids`: per text, start token, text tokens, end token, then padding.
    public var ids: [[Int]]
    /// `attention_mask`: 1 for the start token, the text tokens and the end token, 0 for padding.
    public var attentionMask: [[Int]]
    /// Per text, the token count with start and end tokens before truncation.
    public var untruncatedCounts: [Int]

    /// Whether text `index` lost tokens to truncation.
    public func isTruncated(_ index: Int) -> Bool {
        untruncatedCounts[index] > attentionMask[index].reduce(0, +)
    }
}
