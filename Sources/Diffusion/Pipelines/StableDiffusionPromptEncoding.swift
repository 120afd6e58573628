import Foundation
import NN
import Tensors

/// What ``StableDiffusionPipeline/encodePrompt(_:negativePrompts:imagesPerPrompt:classifierFreeGuidance:clipSkip:)`` returns.
public struct StableDiffusionPromptEmbeddings {
    /// `[prompts × imagesPerPrompt, tokens, width]`: each prompt's embeddings repeated for its images.
    public var prompt: Tensor
    /// The negative (unconditional) embeddings, shaped like `prompt`; nil without classifier-free guidance.
    public var negative: Tensor?
    /// The padded token ids of each prompt.
    public var promptIDs: [[Int]]
    /// The padded token ids of each negative prompt (empty without guidance).
    public var negativeIDs: [[Int]]
    /// One line per prompt that was too long, naming the text that was dropped.
    public var warnings: [String]
}

extension StableDiffusionPipeline {
    /// The number of tokens prompts are padded and truncated to: the tokenizer's `model_max_length`
    /// (77), at most the text encoder's `max_position_embeddings`.
    public var promptLength: Int {
        Swift.min(tokenizer.modelMaxLength, textEncoder.configuration.maximumPositionEmbeddings)
    }

    /// Prompt embeddings as diffusers' `encode_prompt` computes them: each prompt tokenized, padded
    /// with the padding token and truncated to ``promptLength`` (a warning names what was dropped),
    /// run through the text encoder without an attention mask, and the last hidden state taken
    /// (with `clipSkip` k: the hidden state of layer −(k+1), through the final layer norm).
    /// With classifier-free guidance the negative prompts (default: the empty string) are encoded
    /// the same way, without `clipSkip`, as diffusers does.
    ///
    /// - Parameters:
    ///   - negativePrompts: one per prompt, or one for all; nil for empty strings.
    ///   - imagesPerPrompt: each prompt's embeddings are repeated this many times, in a row.
    public func encodePrompt(_ prompts: [String], negativePrompts: [String]? = nil, imagesPerPrompt: Int = 1,
                             classifierFreeGuidance: Bool, clipSkip: Int? = nil) throws -> StableDiffusionPromptEmbeddings {
        guard !prompts.isEmpty else { throw StableDiffusionError("no prompt given") }
        guard imagesPerPrompt >= 1 else { throw StableDiffusionError("images per prompt must be at least 1, got \(imagesPerPrompt)") }
        let layers = textEncoder.configuration.hiddenLayerCount
        if let clipSkip, clipSkip < 0 || clipSkip > layers {
            throw StableDiffusionError("clip skip \(clipSkip) is outside 0…\(layers): the text encoder has \(layers) layers")
        }
        var warnings: [String] = []
        let (promptIDs, promptEmbeddings) = try encode(prompts, throughLayer: clipSkip.map { layers - $0 }, label: "prompt", warnings: &warnings)
        var negativeIDs: [[Int]] = []
        var negativeEmbeddings: Tensor?
        if classifierFreeGuidance {
            let negatives: [String]
            switch negativePrompts {
            case nil: negatives = Array(repeating: "", count: prompts.count)
            case let given? where given.count == prompts.count: negatives = given
            case let given? where given.count == 1: negatives = Array(repeating: given[0], count: prompts.count)
            case let given?:
                throw StableDiffusionError("\(given.count) negative prompts for \(prompts.count) prompts; give one, or one per prompt")
            }
            let encoded = try encode(negatives, throughLayer: nil, label: "negative prompt", warnings: &warnings)
            negativeIDs = encoded.ids
            negativeEmbeddings = encoded.embeddings
        }
        let repeated = prompts.indices.flatMap { Array(repeating: $0, count: imagesPerPrompt) }
        func repeatEach(_ tensor: Tensor) -> Tensor {
            imagesPerPrompt == 1 ? tensor : noGrad { tensor.indexSelect(axis: 0, indices: repeated) }
        }
        return StableDiffusionPromptEmbeddings(prompt: repeatEach(promptEmbeddings), negative: negativeEmbeddings.map(repeatEach),
                                               promptIDs: promptIDs, negativeIDs: negativeIDs, warnings: warnings)
    }

    /// Token ids padded to ``promptLength`` and the text encoder's output for them.
    private func encode(_ texts: [String], throughLayer: Int?, label: String,
                        warnings: inout [String]) throws -> (ids: [[Int]], embeddings: Tensor) {
        let length = promptLength
        let batch = try tokenizer.tokenize(texts, padding: .maximumLength, truncation: true, maximumLength: length)
        for (index, text) in texts.enumerated() where batch.isTruncated(index) {
            let full = tokenizer.encode(text)
            // diffusers decodes untruncated_ids[:, max_length - 1 : -1]: the text after the kept tokens, without the end token.
            let dropped = tokenizer.decode(Array(full[(length - 1)..<(full.count - 1)]))
            warnings.append("the following part of your \(label) was truncated because CLIP can only handle sequences up to "
                            + "\(length) tokens: \(dropped)")
        }
        let ids = batch.ids
        let output = noGrad { textEncoder(ids: ids.flatMap { $0 }, batch: ids.count, throughLayer: throughLayer) }
        return (ids, output.lastHiddenState)
    }
}
