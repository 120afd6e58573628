/// One special token as transformers' `AddedToken` describes it: its text and whether it
/// eats the whitespace on its left (`lstrip`) or right (`rstrip`) when found in a prompt.
public struct CLIPSpecialToken: Sendable, Equatable, ExpressibleByStringLiteral {
    /// The token's text, e.g. `<|endoftext|>`.
    public var content: String
    /// `lstrip`: whitespace just before the token in the text is dropped.
    public var stripsLeft: Bool
    /// `rstrip`: whitespace just after the token in the text is dropped.
    public var stripsRight: Bool

    public init(_ content: String, stripsLeft: Bool = false, stripsRight: Bool = false) {
        self.content = content
        self.stripsLeft = stripsLeft
        self.stripsRight = stripsRight
    }

    public init(stringLiteral content: String) {
        self.init(content)
    }
}

/// The special tokens of a CLIP tokenizer (`bos_token`, `eos_token`, `unk_token`, `pad_token`).
public struct CLIPSpecialTokens: Sendable, Equatable {
    /// `bos_token`, put before every sequence (`<|startoftext|>`, id 49406).
    public var start: CLIPSpecialToken
    /// `eos_token`, put after every sequence and kept by truncation (`<|endoftext|>`, id 49407).
    public var end: CLIPSpecialToken
    /// `unk_token`, the id of any BPE token missing from the vocabulary. With CLIP's full
    /// vocabulary this never happens (every byte, alone and with `</w>`, is in it); with a
    /// smaller vocabulary it does, exactly as transformers' `_convert_token_to_id` falls back.
    public var unknown: CLIPSpecialToken
    /// `pad_token`: Stable Diffusion 1.x pads with `<|endoftext|>` (49407), 2.x with `!` (0).
    /// nil means no padding token (padding then fails with an error).
    public var padding: CLIPSpecialToken?

    public init(start: CLIPSpecialToken = "<|startoftext|>", end: CLIPSpecialToken = "<|endoftext|>",
                unknown: CLIPSpecialToken = "<|endoftext|>", padding: CLIPSpecialToken? = "<|endoftext|>") {
        self.start = start
        self.end = end
        self.unknown = unknown
        self.padding = padding
    }

    /// transformers' defaults, as in Stable Diffusion 1.x: pad with `<|endoftext|>`.
    public static let stableDiffusion1 = CLIPSpecialTokens()
    /// Stable Diffusion 2.x (OpenCLIP ViT-H): pad with `!`.
    public static let stableDiffusion2 = CLIPSpecialTokens(padding: "!")

    /// The tokens in transformers' `SPECIAL_TOKENS_ATTRIBUTES` order (bos, eos, unk, pad),
    /// with their attribute names.
    var named: [(name: String, token: CLIPSpecialToken)] {
        var list: [(String, CLIPSpecialToken)] = [("bos_token", start), ("eos_token", end), ("unk_token", unknown)]
        if let padding { list.append(("pad_token", padding)) }
        return list
    }
}

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
