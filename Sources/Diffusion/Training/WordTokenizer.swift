import Foundation

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
