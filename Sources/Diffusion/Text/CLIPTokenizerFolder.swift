import Foundation
import NN

/// Reading and writing CLIP tokenizers: transformers' tokenizer folders (as in a diffusers
/// Stable Diffusion pipeline's `tokenizer/`) and openai's `bpe_simple_vocab_16e6.txt.gz`.
extension CLIPTokenizer {
    /// What a path holds.
    public enum Source: Sendable, Equatable {
        /// A folder with vocab.json and merges.txt (and optionally tokenizer_config.json, special_tokens_map.json).
        case tokenizerFolder(URL)
        /// openai's merges file (`bpe_simple_vocab_16e6.txt.gz`, gzip or plain text).
        case mergesFile(URL)

        /// Recognises `path`: a tokenizer folder, a pipeline folder (its `tokenizer/`), or a merges file.
        public static func detect(_ url: URL) throws -> Source {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
                throw TokenizerError.missingFile(path: url.path)
            }
            if isDirectory.boolValue {
                if FileManager.default.fileExists(atPath: url.appendingPathComponent("vocab.json").path) { return .tokenizerFolder(url) }
                let nested = url.appendingPathComponent("tokenizer")
                if FileManager.default.fileExists(atPath: nested.appendingPathComponent("vocab.json").path) { return .tokenizerFolder(nested) }
                throw TokenizerError.unknownFormat(path: url.path, reason: "a folder without vocab.json or tokenizer/vocab.json")
            }
            let name = url.lastPathComponent.lowercased()
            if name.hasSuffix(".txt.gz") || name.hasSuffix(".txt") || name.hasSuffix(".gz") { return .mergesFile(url) }
            throw TokenizerError.unknownFormat(path: url.path, reason: "expected a tokenizer folder, a pipeline folder or a BPE merges file (.txt.gz)")
        }
    }

    /// Loads a tokenizer from a tokenizer folder, a pipeline folder (its `tokenizer/`), or openai's
    /// `bpe_simple_vocab_16e6.txt.gz`.
    /// - Throws: `TokenizerError` naming the missing, unreadable or malformed file.
    public convenience init(contentsOf url: URL, normalization: CLIPTextNormalization = .transformers,
                            pythonUnicode: PythonUnicode = .python311) throws {
        switch try Source.detect(url) {
        case let .tokenizerFolder(folder):
            try self.init(folder: folder, normalization: normalization, pythonUnicode: pythonUnicode)
        case let .mergesFile(file):
            try self.init(mergesFile: file, normalization: normalization, pythonUnicode: pythonUnicode)
        }
    }

    /// Loads openai's merges file and builds the vocabulary as openai/CLIP and transformers do:
    /// the 256 byte characters, the same with `</w>`, every merge joined, `<|startoftext|>`,
    /// `<|endoftext|>` (49,408 entries for `bpe_simple_vocab_16e6`). The merges are lines
    /// 1…48,894 (`[1 : 49152-256-2+1]`); special tokens as Stable Diffusion 1.x, 77 tokens.
    public convenience init(mergesFile url: URL, specialTokens: CLIPSpecialTokens = .stableDiffusion1,
                            normalization: CLIPTextNormalization = .transformers, pythonUnicode: PythonUnicode = .python311) throws {
        let text = try Self.readText(url, gzip: true)
        let merges = try Self.parseMerges(text, path: url.path)
        var vocabulary: [String: Int] = [:]
        var next = 0
        func add(_ token: String) { vocabulary[token] = next; next += 1 }
        let characters = ByteLevelEncoding.byteOrder.map { String(ByteLevelEncoding.scalarForByte[Int($0)]) }
        characters.forEach { add($0) }
        characters.forEach { add($0 + "</w>") }
        merges.forEach { add($0.0 + $0.1) }
        add("<|startoftext|>")
        add("<|endoftext|>")
        self.init(vocabulary: vocabulary, merges: merges, specialTokens: specialTokens, modelMaxLength: 77,
                  normalization: normalization, pythonUnicode: pythonUnicode)
    }

    /// Loads a transformers tokenizer folder: vocab.json and merges.txt (required),
    /// tokenizer_config.json (`model_max_length`, the special tokens, `added_tokens_decoder`) and
    /// special_tokens_map.json (whose tokens win, as in `from_pretrained`). Tokens may be strings
    /// or `AddedToken` objects `{"content": ..., "lstrip": ..., "rstrip": ...}`.
    public convenience init(folder: URL, normalization: CLIPTextNormalization = .transformers,
                            pythonUnicode: PythonUnicode = .python311) throws {
        let vocabularyURL = folder.appendingPathComponent("vocab.json")
        let vocabularyJSON = try Self.readJSON(vocabularyURL, required: true)
        guard case let .object(entries)? = vocabularyJSON else {
            throw TokenizerError.malformedJSON(path: vocabularyURL.path, reason: "expected an object of token: id")
        }
        var vocabulary: [String: Int] = [:]
        vocabulary.reserveCapacity(entries.count)
        for (token, value) in entries {
            guard case let .int(id) = value, id >= 0 else {
                throw TokenizerError.malformedJSON(path: vocabularyURL.path, reason: "the id of \(JSONStringLiteral.quoted(token)) is \(value), not a non-negative integer")
            }
            vocabulary[token] = id
        }
        let mergesURL = folder.appendingPathComponent("merges.txt")
        let merges = try Self.parseMerges(try Self.readText(mergesURL, gzip: false), path: mergesURL.path)

        var specialTokens = CLIPSpecialTokens()
        var modelMaxLength = Int(Int32.max)
        var addedTokens: [(CLIPSpecialToken, Int)] = []
        let configURL = folder.appendingPathComponent("tokenizer_config.json")
        if let config = try Self.readJSON(configURL, required: false) {
            guard case let .object(members) = config else {
                throw TokenizerError.malformedJSON(path: configURL.path, reason: "expected an object")
            }
            try Self.applySpecialTokens(members, to: &specialTokens, path: configURL.path)
            switch members["model_max_length"] {
            case let .int(length)?: modelMaxLength = length
            case let .double(length)? where length >= 1: modelMaxLength = length >= Double(Int32.max) ? Int(Int32.max) : Int(length)
            case nil, .null?: break
            case let other?: throw TokenizerError.malformedJSON(path: configURL.path, reason: "model_max_length is \(other), not a number")
            }
            if case let .object(decoder)? = members["added_tokens_decoder"] {
                for (key, value) in decoder {
                    guard let id = Int(key), let token = try Self.specialToken(value, name: "added_tokens_decoder[\(key)]", path: configURL.path) else {
                        throw TokenizerError.malformedJSON(path: configURL.path, reason: "added_tokens_decoder has an entry \(JSONStringLiteral.quoted(key)) that is not an id with a token")
                    }
                    addedTokens.append((token, id))
                }
                addedTokens.sort { $0.1 < $1.1 }
            }
        }
        let mapURL = folder.appendingPathComponent("special_tokens_map.json")
        if let map = try Self.readJSON(mapURL, required: false) {
            guard case let .object(members) = map else {
                throw TokenizerError.malformedJSON(path: mapURL.path, reason: "expected an object")
            }
            try Self.applySpecialTokens(members, to: &specialTokens, path: mapURL.path)
        }
        self.init(vocabulary: vocabulary, merges: merges, specialTokens: specialTokens, modelMaxLength: modelMaxLength,
                  normalization: normalization, pythonUnicode: pythonUnicode, addedTokens: addedTokens)
    }

    /// Writes vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json into
    /// `folder` (created when missing), which transformers' `CLIPTokenizer.from_pretrained` loads.
    public func save(to folder: URL) throws {
        do {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        } catch {
            throw TokenizerError.unwritableFile(path: folder.path, reason: error.localizedDescription)
        }
        var vocabularyText = "{"
        for (index, entry) in vocabulary.sorted(by: { $0.value < $1.value }).enumerated() {
            vocabularyText += index == 0 ? "\n  " : ",\n  "
            JSONStringLiteral.append(entry.key, to: &vocabularyText)
            vocabularyText += ": \(entry.value)"
        }
        vocabularyText += "\n}\n"
        var mergesText = "#version: 0.2\n"
        for pair in merges.pairs { mergesText += pair.0 + " " + pair.1 + "\n" }
        func tokenJSON(_ token: CLIPSpecialToken, type: Bool) -> String {
            "{" + (type ? "\"__type\": \"AddedToken\", " : "") + "\"content\": " + JSONStringLiteral.quoted(token.content)
                + ", \"lstrip\": \(token.stripsLeft), \"normalized\": true, \"rstrip\": \(token.stripsRight), \"single_word\": false}"
        }
        func tokensJSON(type: Bool) -> [String] {
            specialTokens.named.map { "  \"\($0.name)\": " + tokenJSON($0.token, type: type) }
        }
        let map = "{\n" + tokensJSON(type: false).joined(separator: ",\n") + "\n}\n"
        let config = "{\n  \"add_prefix_space\": false,\n" + tokensJSON(type: true).joined(separator: ",\n")
            + ",\n  \"clean_up_tokenization_spaces\": false,\n  \"errors\": \"replace\",\n  \"model_max_length\": \(modelMaxLength),\n"
            + "  \"tokenizer_class\": \"CLIPTokenizer\"\n}\n"
        for (name, text) in [("vocab.json", vocabularyText), ("merges.txt", mergesText), ("special_tokens_map.json", map), ("tokenizer_config.json", config)] {
            let url = folder.appendingPathComponent(name)
            do {
                try Data(text.utf8).write(to: url, options: .atomic)
            } catch {
                throw TokenizerError.unwritableFile(path: url.path, reason: error.localizedDescription)
            }
        }
    }

    // MARK: Helpers

    /// transformers' merges reading: `read().strip().split("\n")[1 : 49152-256-2+1]`, each line
    /// split on whitespace. Line 0 (`#version: 0.2`) is skipped whatever it says; blank lines
    /// are ignored (as the `()` pair they give never matches); other lines must be two symbols.
    static func parseMerges(_ text: String, path: String) throws -> [(String, String)] {
        let stripped = text.trimmingCharacters(in: .whitespacesAndNewlines)
        let lines = stripped.split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.count >= 1, !stripped.isEmpty else {
            throw TokenizerError.malformedMerges(path: path, line: 1, reason: "the file is empty")
        }
        var merges: [(String, String)] = []
        merges.reserveCapacity(min(lines.count, 48_894))
        for (index, line) in lines.enumerated().dropFirst().prefix(48_894) {
            let fields = line.split(whereSeparator: { $0.unicodeScalars.allSatisfy(PythonUnicode.isStringSpace) })
            if fields.isEmpty { continue }
            guard fields.count == 2 else {
                throw TokenizerError.malformedMerges(path: path, line: index + 1, reason: "\(fields.count) fields instead of two symbols")
            }
            merges.append((String(fields[0]), String(fields[1])))
        }
        return merges
    }

    static func readText(_ url: URL, gzip: Bool) throws -> String {
        guard FileManager.default.fileExists(atPath: url.path) else { throw TokenizerError.missingFile(path: url.path) }
        let bytes: [UInt8]
        if gzip {
            do {
                bytes = try IDXFile.readAll(path: url.path)
            } catch {
                throw TokenizerError.unreadableFile(path: url.path, reason: "\(error)")
            }
        } else {
            guard let data = FileManager.default.contents(atPath: url.path) else {
                throw TokenizerError.unreadableFile(path: url.path, reason: "could not read the file")
            }
            bytes = [UInt8](data)
        }
        if bytes.count >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B {
            throw TokenizerError.unknownFormat(path: url.path, reason: "a gzip file where plain text was expected")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw TokenizerError.unknownFormat(path: url.path, reason: "not UTF-8 text")
        }
        return text
    }

    static func readJSON(_ url: URL, required: Bool) throws -> JSONValue? {
        guard FileManager.default.fileExists(atPath: url.path) else {
            if required { throw TokenizerError.missingFile(path: url.path) }
            return nil
        }
        let text = try readText(url, gzip: false)
        do {
            return try JSONText.parse(text)
        } catch {
            throw TokenizerError.malformedJSON(path: url.path, reason: "\(error)")
        }
    }

    /// A token value: a string, an `AddedToken` object, or null (no token).
    static func specialToken(_ value: JSONValue, name: String, path: String) throws -> CLIPSpecialToken? {
        switch value {
        case let .string(content):
            return CLIPSpecialToken(content)
        case let .object(members):
            guard case let .string(content)? = members["content"] else {
                throw TokenizerError.malformedJSON(path: path, reason: "\(name) is an object without a string \"content\"")
            }
            func flag(_ key: String) throws -> Bool {
                switch members[key] {
                case nil, .null?: return false
                case let .bool(value)?: return value
                case let other?: throw TokenizerError.malformedJSON(path: path, reason: "\(name).\(key) is \(other), not true or false")
                }
            }
            return CLIPSpecialToken(content, stripsLeft: try flag("lstrip"), stripsRight: try flag("rstrip"))
        case .null:
            return nil
        default:
            throw TokenizerError.malformedJSON(path: path, reason: "\(name) is \(value), not a string or a token object")
        }
    }

    private static func applySpecialTokens(_ members: [String: JSONValue], to tokens: inout CLIPSpecialTokens, path: String) throws {
        func token(_ name: String) throws -> CLIPSpecialToken?? {
            guard let value = members[name] else { return .none }
            return .some(try specialToken(value, name: name, path: path))
        }
        if case let .some(value) = try token("bos_token"), let value { tokens.start = value }
        if case let .some(value) = try token("eos_token"), let value { tokens.end = value }
        if case let .some(value) = try token("unk_token"), let value { tokens.unknown = value }
        if case let .some(value) = try token("pad_token") { tokens.padding = value }
    }
}
