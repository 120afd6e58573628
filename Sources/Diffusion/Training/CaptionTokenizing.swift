import Foundation

/// What CLIP training needs of a tokenizer: a caption's ids with the start and
/// end tokens, the special ids, and files beside the trained model that
/// transformers' `CLIPTokenizer.from_pretrained` reads.
public protocol CaptionTokenizing: AnyObject {
    /// The ids of `text`: the start token, the text's tokens, the end token
    /// (without padding or truncation).
    func tokenIDs(_ text: String) -> [Int]
    /// Ids the model's embedding table must hold (the largest id + 1).
    var vocabularySize: Int { get }
    /// The start-of-text, end-of-text and padding ids.
    var startTokenID: Int { get }
    var endTokenID: Int { get }
    var paddingTokenID: Int { get }
    /// The longest sequence the tokenizer pads or truncates to (`model_max_length`).
    var maximumLength: Int { get }
    /// Writes the tokenizer's files into `folder` (which exists).
    func saveFiles(in folder: URL) throws
}

/// A batch of captions as ids: `count` rows of `length` ids each, padded after
/// the end token, with transformers' `attention_mask` (1 for real tokens).
public struct TokenizedCaptions: Equatable, Sendable {
    public var ids: [Int]
    public var attentionMask: [Int]
    public var count: Int
    public var length: Int
}

extension CaptionTokenizing {
    /// Tokenizes `texts`, padding every row to the longest (or to `length` when
    /// given); a row longer than the limit is cut and ends with the end token,
    /// as transformers' `truncation=True` does.
    public func encode(_ texts: [String], length fixedLength: Int? = nil) -> TokenizedCaptions {
        let limit = Swift.min(fixedLength ?? maximumLength, maximumLength)
        let rows: [[Int]] = texts.map { text in
            let ids = tokenIDs(text)
            guard ids.count > limit else { return ids }
            return Array(ids.prefix(limit - 1)) + [endTokenID]
        }
        let length = fixedLength.map { Swift.min($0, maximumLength) } ?? (rows.map(\.count).max() ?? 0)
        var ids: [Int] = [], mask: [Int] = []
        ids.reserveCapacity(rows.count * length)
        mask.reserveCapacity(rows.count * length)
        for row in rows {
            ids += row + [Int](repeating: paddingTokenID, count: length - row.count)
            mask += [Int](repeating: 1, count: row.count) + [Int](repeating: 0, count: length - row.count)
        }
        return TokenizedCaptions(ids: ids, attentionMask: mask, count: texts.count, length: length)
    }
}
