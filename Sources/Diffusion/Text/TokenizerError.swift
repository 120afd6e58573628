import Foundation

/// Why a tokenizer could not be loaded, saved or used. Every case names the file (or
/// the setting) at fault, so that the message alone tells what to fix.
public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    /// A file the tokenizer needs is not there.
    case missingFile(path: String)
    /// A file exists but could not be read (permissions, a broken gzip stream, not UTF-8).
    case unreadableFile(path: String, reason: String)
    /// A JSON file (vocab.json, tokenizer_config.json, special_tokens_map.json) is not valid
    /// JSON or does not have the expected shape.
    case malformedJSON(path: String, reason: String)
    /// A merges file (merges.txt or the BPE `.txt.gz`) has a line that is not two symbols.
    case malformedMerges(path: String, line: Int, reason: String)
    /// A path that is neither a tokenizer folder, a pipeline folder with `tokenizer/`, nor a BPE merges file.
    case unknownFormat(path: String, reason: String)
    /// A special token (bos, eos, unk, pad) that the vocabulary does not contain, or that is needed and not set.
    case missingToken(name: String, reason: String)
    /// A setting or argument that cannot work (such as truncating to fewer than 2 tokens).
    case invalidSetting(String)
    /// A file could not be written.
    case unwritableFile(path: String, reason: String)

    public var description: String {
        switch self {
        case let .missingFile(path): return "\(path): no such file"
        case let .unreadableFile(path, reason): return "\(path): cannot be read: \(reason)"
        case let .malformedJSON(path, reason): return "\(path): malformed JSON: \(reason)"
        case let .malformedMerges(path, line, reason): return "\(path), line \(line): malformed merge: \(reason)"
        case let .unknownFormat(path, reason): return "\(path): not a CLIP tokenizer: \(reason)"
        case let .missingToken(name, reason): return "\(name): \(reason)"
        case let .invalidSetting(reason): return reason
        case let .unwritableFile(path, reason): return "\(path): cannot be written: \(reason)"
        }
    }
}
