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

/// A whitespace word tokenizer over a fixed word list, for tests and tiny
/// models: id 0 is unknown, words follow, then start and end (end pads).
/// Its `saveFiles` writes only `vocab.json` — it is no transformers tokenizer.
public final class WordTokenizer: CaptionTokenizing {
    /// The words, by id − 1.
    public let words: [String]
    private let index: [String: Int]
    public let maximumLength: Int

    /// A tokenizer of `words` (deduplicated, in order).
    public init(words: [String], maximumLength: Int = 77) {
        var seen = Set<String>()
        self.words = words.filter { seen.insert($0).inserted }
        index = Dictionary(uniqueKeysWithValues: self.words.enumerated().map { ($1, $0 + 1) })
        self.maximumLength = maximumLength
    }

    /// The words of every caption of `texts` (lower-cased, split at spaces).
    public convenience init(vocabularyOf texts: [String], maximumLength: Int = 77) {
        self.init(words: texts.flatMap { Self.split($0) }, maximumLength: maximumLength)
    }

    static func split(_ text: String) -> [String] {
        text.lowercased().split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).map(String.init)
    }

    public var startTokenID: Int { words.count + 1 }
    public var endTokenID: Int { words.count + 2 }
    public var paddingTokenID: Int { endTokenID }
    public var vocabularySize: Int { words.count + 3 }

    public func tokenIDs(_ text: String) -> [Int] {
        [startTokenID] + Self.split(text).map { index[$0] ?? 0 } + [endTokenID]
    }

    public func saveFiles(in folder: URL) throws {
        var members: [String: JSONValue] = ["<unk>": .int(0), "<|startoftext|>": .int(startTokenID), "<|endoftext|>": .int(endTokenID)]
        for (offset, word) in words.enumerated() { members[word] = .int(offset + 1) }
        try (JSONText.write(.object(members), indent: 2) + "\n").write(to: folder.appendingPathComponent("vocab.json"), atomically: true, encoding: .utf8)
    }
}
