import Foundation

/// transformers' CLIP tokenizer as the trainer's caption tokenizer; its files
/// (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json)
/// go beside the trained model.
extension CLIPTokenizer: CaptionTokenizing {
    public func tokenIDs(_ text: String) -> [Int] { encode(text) }
    public var vocabularySize: Int { (vocabulary.values.max() ?? 0) + 1 }
    public var startTokenID: Int { startID }
    public var endTokenID: Int { endID }
    public var paddingTokenID: Int { paddingID ?? endID }
    public var maximumLength: Int { modelMaxLength }
    public func saveFiles(in folder: URL) throws { try save(to: folder) }
}

extension CLIPTraining {
    /// Where `make clip-vocab` puts openai's BPE merges (relative to the working directory).
    public static let defaultVocabularyPath = "data/clip/bpe_simple_vocab_16e6.txt.gz"

    /// The tokenizer `diffuse train-clip` trains with: openai's CLIP BPE (49,408 ids,
    /// 77 positions, padding with `<|endoftext|>`), from `path` — a merges file
    /// (`bpe_simple_vocab_16e6.txt.gz`) or a transformers tokenizer folder — or
    /// by default from `data/clip/` (`make clip-vocab`).
    public static func defaultTokenizer(path: String? = nil) throws -> CaptionTokenizing {
        let location = path ?? ProcessInfo.processInfo.environment["DIFFUSE_CLIP_VOCAB"] ?? defaultVocabularyPath
        guard FileManager.default.fileExists(atPath: location) else {
            throw TrainingError.data("no CLIP tokenizer at \(location): run `make clip-vocab` (openai's BPE merges into data/clip/), "
                                     + "or give --tokenizer a bpe_simple_vocab_16e6.txt.gz or a tokenizer folder")
        }
        return try CLIPTokenizer(contentsOf: URL(fileURLWithPath: location))
    }
}
