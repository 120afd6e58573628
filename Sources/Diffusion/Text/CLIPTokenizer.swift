import Foundation

/// CLIP's tokenizer: byte-level BPE exactly as transformers' slow `CLIPTokenizer` computes it
/// (without `ftfy`), the text encoder's input in Stable Diffusion.
///
/// A prompt goes through four steps:
/// 1. It is split around the special tokens found in it verbatim (transformers' added-token
///    trie: `<|startoftext|>`, `<|endoftext|>`, and the padding token, so with Stable Diffusion
///    2.x's `!` every `!` of a prompt becomes token 0, as in transformers). `.openAI`
///    normalisation skips this step, as openai/CLIP's `SimpleTokenizer` has no added tokens.
/// 2. Each other piece is cleaned (`CLIPTextNormalization`, by default transformers'
///    `BasicTokenizer`: controls dropped, CJK spaced, NFC, lower case).
/// 3. `CLIPPreTokenizer` cuts it into words (letters runs, single digits, punctuation runs, contractions).
/// 4. Each word's UTF-8 bytes become byte-level symbols, the last one marked `</w>`, and the
///    merges are applied by rank (`BPEMerges`); the resulting tokens' ids come from the
///    vocabulary, or are the unknown token's id when a token is missing from it.
///
/// Any text is accepted: every byte has a symbol, so no input fails or crashes.
/// Words are cached (per instance, behind a lock, so an instance may be shared between threads).
///
/// Load one with `CLIPTokenizer(contentsOf:)` from a tokenizer folder (vocab.json, merges.txt,
/// tokenizer_config.json, special_tokens_map.json), a pipeline folder with `tokenizer/`, or
/// openai's `bpe_simple_vocab_16e6.txt.gz`; write one with `save(to:)`.
public final class CLIPTokenizer: @unchecked Sendable {
    /// Token text to id (the vocabulary, `vocab.json`).
    public let vocabulary: [String: Int]
    /// The special tokens.
    public let specialTokens: CLIPSpecialTokens
    /// `model_max_length`: the length batches are truncated and padded to (77 for CLIP).
    public let modelMaxLength: Int
    /// The text cleaning applied before pre-tokenization.
    public let normalization: CLIPTextNormalization
    /// The Unicode version of the Python whose transformers is matched (control characters
    /// unassigned in it are dropped by `.transformers` normalisation).
    public let pythonUnicode: PythonUnicode
    /// The id of `bos_token`.
    public let startID: Int
    /// The id of `eos_token`.
    public let endID: Int
    /// The id of `unk_token`.
    public let unknownID: Int
    /// The id of `pad_token`, nil without one.
    public let paddingID: Int?

    let merges: BPEMerges
    /// The vocabulary id of each internal BPE symbol (added token, vocabulary, else unknown).
    private let symbolIDs: [Int32]
    /// Tokens split out of the raw text before normalisation, longest first, with their ids.
    private let addedTokens: [(token: CLIPSpecialToken, bytes: [UInt8], id: Int)]
    /// Ids of the added tokens beyond the vocabulary, and the id → text map for `tokens(for:)`.
    private let textForID: [Int: String]
    private let normalizer: CLIPTextNormalizer
    private let lock = NSLock()
    private var cache = WordCache()

    /// A tokenizer from a vocabulary and merges in rank order.
    ///
    /// Special tokens missing from the vocabulary get new ids after it, as transformers adds them.
    /// - Parameter addedTokens: further tokens split out of the text verbatim, with their ids
    ///   (transformers' `added_tokens_decoder`); the special tokens are always added.
    public init(vocabulary: [String: Int], merges: [(String, String)], specialTokens: CLIPSpecialTokens = .stableDiffusion1,
                modelMaxLength: Int = 77, normalization: CLIPTextNormalization = .transformers,
                pythonUnicode: PythonUnicode = .python311, addedTokens: [(CLIPSpecialToken, Int)] = []) {
        self.vocabulary = vocabulary
        self.specialTokens = specialTokens
        self.modelMaxLength = modelMaxLength
        self.normalization = normalization
        self.pythonUnicode = pythonUnicode
        normalizer = CLIPTextNormalizer(normalization: normalization, python: pythonUnicode)
        self.merges = BPEMerges(pairs: merges)

        // PreTrainedTokenizer.__init__: added_tokens_decoder first, then the special tokens
        // not yet added, each keeping its vocabulary id or getting len(vocabulary) + k.
        var added: [(token: CLIPSpecialToken, id: Int)] = addedTokens.map { ($0.0, $0.1) }
        var addedIDs = Dictionary(added.map { ($0.token.content, $0.id) }, uniquingKeysWith: { _, last in last })
        var nextID = vocabulary.count + Set(addedIDs.keys).subtracting(vocabulary.keys).count
        for (_, token) in specialTokens.named where addedIDs[token.content] == nil && !token.content.isEmpty {
            let id: Int
            if let existing = vocabulary[token.content] { id = existing } else { id = nextID; nextID += 1 }
            added.append((token, id))
            addedIDs[token.content] = id
        }
        self.addedTokens = added.map { ($0.token, Array($0.token.content.utf8), $0.id) }
            .filter { !$0.bytes.isEmpty }
            .sorted { $0.bytes.count > $1.bytes.count }
        let finalAddedIDs = addedIDs
        func id(of text: String) -> Int? { finalAddedIDs[text] ?? vocabulary[text] }
        let unknown = id(of: specialTokens.unknown.content) ?? 0
        startID = id(of: specialTokens.start.content) ?? 0
        endID = id(of: specialTokens.end.content) ?? 0
        unknownID = unknown
        paddingID = specialTokens.padding.flatMap { id(of: $0.content) }
        symbolIDs = self.merges.symbols.map { Int32(truncatingIfNeeded: id(of: $0) ?? unknown) }
        var texts: [Int: String] = [:]
        texts.reserveCapacity(vocabulary.count + added.count)
        for (text, id) in vocabulary { texts[id] = text }
        for (token, id) in added { texts[id] = token.content }
        textForID = texts
        specialWordIDs = [id(of: "<|startoftext|>") ?? unknown, id(of: "<|endoftext|>") ?? unknown]
    }

    /// Ids of the words `<|startoftext|>` and `<|endoftext|>` met by the pre-tokenizer
    /// (transformers' `bpe` returns them whole, from its initial cache).
    private let specialWordIDs: [Int]

    // MARK: Encoding

    /// The ids of `text` with the start and end tokens, not truncated.
    public func encode(_ text: String) -> [Int] {
        var ids: [Int32] = []
        ids.reserveCapacity(text.utf8.count / 3 + 8)
        appendTextIDs(text, to: &ids)
        return [startID] + ids.map { Int($0) } + [endID]
    }

    /// The ids of `text` without start and end tokens.
    public func encodeWithoutSpecialTokens(_ text: String) -> [Int] {
        var ids: [Int32] = []
        appendTextIDs(text, to: &ids)
        return ids.map { Int($0) }
    }

    /// Token ids and attention masks of `texts`, as transformers'
    /// `tokenizer(texts, padding=..., max_length=..., truncation=...)` returns them.
    ///
    /// Truncation keeps the start token, the first `maximumLength - 2` text tokens and the end token.
    /// - Throws: `TokenizerError.missingToken` when padding is asked for and there is no padding token;
    ///   `TokenizerError.invalidSetting` when truncating to fewer than 2 tokens.
    public func tokenize(_ texts: [String], padding: CLIPPadding = .maximumLength, truncation: Bool = true,
                         maximumLength: Int? = nil) throws -> CLIPTokenizedBatch {
        let limit = maximumLength ?? modelMaxLength
        if truncation && limit < 2 {
            throw TokenizerError.invalidSetting("cannot truncate to \(limit) tokens: the start and end tokens need 2")
        }
        var batch = CLIPTokenizedBatch(ids: [], attentionMask: [], untruncatedCounts: [])
        var ids: [Int32] = []
        for text in texts {
            ids.removeAll(keepingCapacity: true)
            appendTextIDs(text, to: &ids)
            batch.untruncatedCounts.append(ids.count + 2)
            let kept = truncation ? min(ids.count, limit - 2) : ids.count
            var sequence = [startID]
            sequence.reserveCapacity(max(limit, kept + 2))
            for index in 0..<kept { sequence.append(Int(ids[index])) }
            sequence.append(endID)
            batch.ids.append(sequence)
        }
        let target: Int?
        switch padding {
        case .none: target = nil
        case .longest: target = batch.ids.map(\.count).max()
        case .maximumLength: target = limit
        }
        for index in batch.ids.indices {
            let length = batch.ids[index].count
            var mask = [Int](repeating: 1, count: length)
            if let target, target > length {
                guard let paddingID else {
                    throw TokenizerError.missingToken(name: "pad_token", reason: "padding needs a padding token and this tokenizer has none")
                }
                batch.ids[index].append(contentsOf: repeatElement(paddingID, count: target - length))
                mask.append(contentsOf: repeatElement(0, count: target - length))
            }
            batch.attentionMask.append(mask)
        }
        return batch
    }

    /// Appends the ids of `text` (no start and end tokens).
    func appendTextIDs(_ text: String, to ids: inout [Int32]) {
        var normalized: [UInt8] = []
        normalized.reserveCapacity(text.utf8.count + 8)
        lock.lock()
        defer { lock.unlock() }
        if normalization == .openAI {
            // openai/CLIP's SimpleTokenizer has no added tokens: only its pattern finds special tokens.
            normalizer.normalize(text[...], into: &normalized)
            appendNormalizedIDs(normalized, to: &ids)
            return
        }
        forEachPiece(of: text) { piece in
            switch piece {
            case let .added(id):
                ids.append(Int32(truncatingIfNeeded: id))
            case let .text(substring):
                normalized.removeAll(keepingCapacity: true)
                normalizer.normalize(substring, into: &normalized)
                appendNormalizedIDs(normalized, to: &ids)
            }
        }
    }

    private enum Piece {
        case added(Int)
        case text(Substring)
    }

    /// transformers' `tokens_trie.split` and the added tokens' lstrip / rstrip: the pieces of the
    /// raw text between added tokens (leftmost match, longest first), empty ones left out.
    private func forEachPiece(of text: String, _ body: (Piece) -> Void) {
        let utf8 = text.utf8
        var pieces: [(Range<String.Index>, Int?)] = []
        var pieceStart = utf8.startIndex
        var index = utf8.startIndex
        search: while index < utf8.endIndex {
            let byte = utf8[index]
            for added in addedTokens where added.bytes[0] == byte {
                if utf8[index...].starts(with: added.bytes) {
                    let end = utf8.index(index, offsetBy: added.bytes.count)
                    pieces.append((pieceStart..<index, nil))
                    pieces.append((index..<end, added.id))
                    pieceStart = end
                    index = end
                    continue search
                }
            }
            index = utf8.index(after: index)
        }
        if pieces.isEmpty {
            if !text.isEmpty { body(.text(text[...])) }
            return
        }
        pieces.append((pieceStart..<utf8.endIndex, nil))
        var texts = pieces.map { text[$0.0] }
        for (position, piece) in pieces.enumerated() {
            guard let id = piece.1, let token = addedTokens.first(where: { $0.id == id })?.token else { continue }
            if token.stripsRight && position + 1 < texts.count {
                texts[position + 1] = texts[position + 1].drop(while: { $0.unicodeScalars.allSatisfy(PythonUnicode.isStringSpace) })
            }
            if token.stripsLeft && position > 0 {
                var left = texts[position - 1]
                while let last = left.last, last.unicodeScalars.allSatisfy(PythonUnicode.isStringSpace) { left = left.dropLast() }
                texts[position - 1] = left
            }
        }
        for (position, piece) in pieces.enumerated() where !texts[position].isEmpty {
            if let id = piece.1 { body(.added(id)) } else { body(.text(texts[position])) }
        }
    }

    /// Pre-tokenizes normalised UTF-8 and appends each word's ids (cached).
    private func appendNormalizedIDs(_ normalized: [UInt8], to ids: inout [Int32]) {
        var symbols: [Int32] = []
        normalized.withUnsafeBufferPointer { bytes in
            CLIPPreTokenizer.forEachWord(in: bytes) { range in
                let word = UnsafeBufferPointer(rebasing: bytes[range])
                if word.count >= 13 && word[0] == UInt8(ascii: "<"), let special = specialWord(word) {
                    ids.append(Int32(truncatingIfNeeded: special))
                    return
                }
                let hash = WordCache.hash(word)
                if cache.appendIDs(of: word, hash: hash, to: &ids) { return }
                symbols.removeAll(keepingCapacity: true)
                for offset in 0..<(word.count - 1) { symbols.append(merges.byteSymbols[Int(word[offset])]) }
                symbols.append(merges.finalByteSymbols[Int(word[word.count - 1])])
                merges.apply(to: &symbols)
                let start = ids.count
                for symbol in symbols { ids.append(symbolIDs[Int(symbol)]) }
                cache.insert(word, hash: hash, ids: ids[start...])
            }
        }
    }

    /// The id of a word that is exactly `<|startoftext|>` or `<|endoftext|>`.
    private func specialWord(_ word: UnsafeBufferPointer<UInt8>) -> Int? {
        if word.elementsEqual("<|startoftext|>".utf8) { return specialWordIDs[0] }
        if word.elementsEqual("<|endoftext|>".utf8) { return specialWordIDs[1] }
        return nil
    }

    // MARK: Tokens and decoding

    /// The token text of each id (byte-level characters, `</w>` at word ends); ids outside the
    /// vocabulary become `"<unknown id N>"`.
    public func tokens(for ids: [Int]) -> [String] {
        ids.map { textForID[$0] ?? "<unknown id \($0)>" }
    }

    /// The id of a token text, if the vocabulary (or the added tokens) has it.
    public func id(forToken token: String) -> Int? {
        addedTokens.first(where: { $0.token.content == token })?.id ?? vocabulary[token]
    }

    /// The text of `ids`, as transformers' `decode`: the tokens joined, byte-level characters
    /// back to bytes, UTF-8 decoded with U+FFFD for invalid sequences, `</w>` to a space, then
    /// stripped. Ids outside the vocabulary are left out.
    /// - Parameter skipSpecialTokens: leave out bos, eos, unk and pad tokens.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        let special = Set([startID, endID, unknownID] + (paddingID.map { [$0] } ?? []))
        var text = ""
        for id in ids {
            if skipSpecialTokens && special.contains(id) { continue }
            if let token = textForID[id] { text += token }
        }
        // "</w>" is ASCII, so replacing it in the bytes equals replacing it after decoding
        // (and, unlike String's replacement, is not blocked by a combining mark that follows it).
        var bytes: [UInt8] = []
        let raw = ByteLevelEncoding.decode(text)
        bytes.reserveCapacity(raw.count)
        var index = 0
        while index < raw.count {
            if raw[index] == UInt8(ascii: "<") && index + 3 < raw.count && raw[index + 1] == UInt8(ascii: "/")
                && raw[index + 2] == UInt8(ascii: "w") && raw[index + 3] == UInt8(ascii: ">") {
                bytes.append(0x20)
                index += 4
            } else {
                bytes.append(raw[index])
                index += 1
            }
        }
        let scalars = Array(String(decoding: bytes, as: UTF8.self).unicodeScalars)
        var start = 0, end = scalars.count
        while start < end && PythonUnicode.isStringSpace(scalars[start]) { start += 1 }
        while end > start && PythonUnicode.isStringSpace(scalars[end - 1]) { end -= 1 }
        return String(String.UnicodeScalarView(scalars[start..<end]))
    }

    /// The number of cached words (for tests and benchmarks).
    public var cachedWordCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return cache.count
    }
}
