import TestSupport
import CZlib
import Diffusion
import Foundation
import XCTest

/// The CLIP tokenizer against transformers' slow `CLIPTokenizer` (Scripts/make-tokenizer-goldens,
/// transformers 4.57 without ftfy) and on its own: truncation, folders, errors, a tiny vocabulary.
///
/// The goldens need openai's vocabulary, `data/clip/bpe_simple_vocab_16e6.txt.gz` (`make clip-vocab`,
/// which `make test` runs) or `$DIFFUSE_CLIP_VOCAB`; without it those tests fail, they do not skip.
final class CLIPTokenizerTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Prompts whose ids are allowed to differ from transformers', with the reason. None so far.
    static let knownExceptions: [String: String] = [:]

    static var vocabularyURL: URL {
        if let path = ProcessInfo.processInfo.environment["DIFFUSE_CLIP_VOCAB"], !path.isEmpty { return URL(fileURLWithPath: path) }
        return root.appendingPathComponent("data/clip/bpe_simple_vocab_16e6.txt.gz")
    }

    nonisolated(unsafe) static var sharedTokenizer: CLIPTokenizer?
    nonisolated(unsafe) static var sharedGoldens: [String: Any]?

    /// openai's vocabulary as a tokenizer, or a failure telling how to get it.
    func tokenizer() throws -> CLIPTokenizer {
        if let tokenizer = Self.sharedTokenizer { return tokenizer }
        guard FileManager.default.fileExists(atPath: Self.vocabularyURL.path) else {
            throw MissingVocabulary()
        }
        let tokenizer = try CLIPTokenizer(contentsOf: Self.vocabularyURL)
        Self.sharedTokenizer = tokenizer
        return tokenizer
    }

    func goldens() throws -> [String: Any] {
        if let goldens = Self.sharedGoldens { return goldens }
        let path = Self.root.appendingPathComponent("Tests/Fixtures/tokenizer/clip-goldens.json.gz").path
        guard let file = gzopen(path, "rb") else { throw TokenizerError.missingFile(path: path) }
        defer { gzclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let read = chunk.withUnsafeMutableBytes { gzread(file, $0.baseAddress, UInt32($0.count)) }
            XCTAssertGreaterThanOrEqual(read, 0)
            if read <= 0 { break }
            bytes += chunk[0..<Int(read)]
        }
        let goldens = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        Self.sharedGoldens = goldens
        return goldens
    }

    func cases(_ name: String) throws -> [[String: Any]] {
        try XCTUnwrap(try goldens()[name] as? [[String: Any]], "goldens have no \(name)")
    }

    /// Compares every golden of `name` (un-padded ids, padded ids and masks) with `tokenizer`.
    func checkParity(_ tokenizer: CLIPTokenizer, _ name: String, minimumCount: Int) throws {
        let cases = try cases(name)
        XCTAssertGreaterThanOrEqual(cases.count, minimumCount)
        let texts = cases.map { $0["text"] as! String }
        let batch = try tokenizer.tokenize(texts, padding: .maximumLength, truncation: true, maximumLength: 77)
        var failures: [String] = []
        var identical = 0
        for (index, golden) in cases.enumerated() {
            let text = texts[index]
            let expectedIDs = golden["ids"] as! [Int]
            let ids = tokenizer.encode(text)
            let same = ids == expectedIDs && batch.ids[index] == golden["padded"] as! [Int]
                && batch.attentionMask[index] == golden["mask"] as! [Int] && batch.untruncatedCounts[index] == expectedIDs.count
            if same {
                identical += 1
            } else if Self.knownExceptions[text] == nil {
                failures.append("\(JSONSerialization.quoted(text)): got \(ids) \(tokenizer.tokens(for: ids)), transformers \(expectedIDs) \(tokenizer.tokens(for: expectedIDs))")
            }
        }
        print("CLIP tokenizer parity (\(name)): \(identical) of \(cases.count) prompts identical")
        XCTAssertEqual(failures.count, 0, "\(failures.count) of \(cases.count) prompts differ from transformers, first:\n" + failures.prefix(15).joined(separator: "\n"))
    }

    // MARK: Goldens

    func testParityWithTransformersStableDiffusion1() throws {
        try checkParity(try tokenizer(), "sd1", minimumCount: 2000)
    }

    func testParityWithTransformersPaddingExclamationMark() throws {
        // Stable Diffusion 2.x: special_tokens_map.json says pad_token "!", so "!" is split out
        // of prompts as an added token (id 0) and pads the batch.
        let folder = try temporaryFolderURL("tokenizer")
        try tokenizer().save(to: folder)
        try Data(#"{"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"}"#.utf8)
            .write(to: folder.appendingPathComponent("special_tokens_map.json"))
        let stableDiffusion2 = try CLIPTokenizer(contentsOf: folder)
        XCTAssertEqual(stableDiffusion2.paddingID, 0)
        try checkParity(stableDiffusion2, "sd2", minimumCount: 500)
    }

    func testDecodeMatchesTransformers() throws {
        let tokenizer = try tokenizer()
        var failures: [String] = []
        for golden in try cases("decode") {
            let ids = golden["ids"] as! [Int]
            let text = tokenizer.decode(ids), skipped = tokenizer.decode(ids, skipSpecialTokens: true)
            if text != golden["text"] as! String || skipped != golden["skipped"] as! String {
                failures.append("\(ids): \(JSONSerialization.quoted(text)) / \(JSONSerialization.quoted(skipped))")
            }
        }
        XCTAssertEqual(failures, [])
    }

    func testOpenAINormalizationMatchesSimpleTokenizerWithoutFtfy() throws {
        _ = try tokenizer()
        let openAI = try CLIPTokenizer(contentsOf: Self.vocabularyURL, normalization: .openAI)
        var failures: [String] = []
        for golden in try cases("openai") {
            let text = golden["text"] as! String
            let ids = openAI.encode(text)
            if ids != golden["ids"] as! [Int] { failures.append("\(JSONSerialization.quoted(text)): \(ids) vs \(golden["ids"]!)") }
        }
        XCTAssertEqual(failures.count, 0, failures.prefix(10).joined(separator: "\n"))
    }

    // MARK: Behaviour

    func testVocabularyFromTheMergesFile() throws {
        let tokenizer = try tokenizer()
        XCTAssertEqual(tokenizer.vocabulary.count, 49_408)
        XCTAssertEqual(tokenizer.startID, 49_406)
        XCTAssertEqual(tokenizer.endID, 49_407)
        XCTAssertEqual(tokenizer.paddingID, 49_407)
        XCTAssertEqual(tokenizer.vocabulary["!"], 0)
        XCTAssertEqual(tokenizer.vocabulary["!</w>"], 256)
        XCTAssertEqual(tokenizer.encode("a photo of a cat"), [49406, 320, 1125, 539, 320, 2368, 49407])
        XCTAssertEqual(tokenizer.modelMaxLength, 77)
    }

    func testTruncationKeepsTheEndToken() throws {
        let tokenizer = try tokenizer()
        let long = String(repeating: "tokens ", count: 100)
        let batch = try tokenizer.tokenize([long, "short"])
        XCTAssertEqual(batch.ids[0].count, 77)
        XCTAssertEqual(batch.ids[0].first, 49406)
        XCTAssertEqual(batch.ids[0].last, 49407)
        XCTAssertEqual(batch.attentionMask[0], [Int](repeating: 1, count: 77))
        XCTAssertEqual(batch.untruncatedCounts[0], 102)
        XCTAssertTrue(batch.isTruncated(0))
        XCTAssertEqual(batch.ids[1].count, 77)
        XCTAssertEqual(batch.attentionMask[1].reduce(0, +), 3)
        XCTAssertFalse(batch.isTruncated(1))
        let longest = try tokenizer.tokenize(["a", "a b c"], padding: .longest, truncation: false)
        XCTAssertEqual(longest.ids, [[49406, 320, 49407, 49407, 49407], [49406, 320, 321, 322, 49407]])
        XCTAssertEqual(longest.attentionMask, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
        XCTAssertThrowsError(try tokenizer.tokenize(["a"], maximumLength: 1))
    }

    func testFolderRoundTrip() throws {
        let tokenizer = try tokenizer()
        let folder = try temporaryFolderURL("tokenizer")
        try tokenizer.save(to: folder)
        let reloaded = try CLIPTokenizer(contentsOf: folder)
        XCTAssertEqual(reloaded.vocabulary, tokenizer.vocabulary)
        XCTAssertEqual(reloaded.specialTokens, tokenizer.specialTokens)
        XCTAssertEqual(reloaded.modelMaxLength, 77)
        for golden in try cases("sd1").prefix(600) {
            let text = golden["text"] as! String
            XCTAssertEqual(reloaded.encode(text), tokenizer.encode(text), text)
        }
        // A pipeline folder: its tokenizer/ subfolder is used.
        let pipeline = try temporaryFolderURL("tokenizer")
        try tokenizer.save(to: pipeline.appendingPathComponent("tokenizer"))
        XCTAssertEqual(try CLIPTokenizer(contentsOf: pipeline).encode("Hello, World!"), tokenizer.encode("Hello, World!"))
    }

    func testMalformedFilesAreErrorsNamingTheFile() throws {
        let folder = try temporaryFolderURL("tokenizer")
        func expect(_ url: URL, _ check: (TokenizerError) -> Bool, line: UInt = #line) {
            XCTAssertThrowsError(try CLIPTokenizer(contentsOf: url), line: line) { error in
                guard let error = error as? TokenizerError else { return XCTFail("\(error) is not a TokenizerError", line: line) }
                XCTAssertTrue(check(error), "\(error)", line: line)
            }
        }
        expect(folder.appendingPathComponent("nothing-here")) { if case .missingFile = $0 { return true }; return false }
        expect(folder) { if case .unknownFormat = $0 { return true }; return false }
        let weights = folder.appendingPathComponent("model.safetensors")
        try Data([1, 2, 3]).write(to: weights)
        expect(weights) { if case .unknownFormat = $0 { return true }; return false }
        let binary = folder.appendingPathComponent("merges.txt.gz")
        try Data([0xFF, 0xFE, 0x00, 0x80, 0xC0]).write(to: binary)
        expect(binary) { if case .unknownFormat = $0 { return true }; return false }

        let vocabulary = folder.appendingPathComponent("vocab.json")
        try Data(#"{"a": 0, "b": 1, "a</w>": 2, "b</w>": 3, "ab</w>": 4"#.utf8).write(to: vocabulary)
        expect(folder) { $0.description.contains("vocab.json") && { if case .malformedJSON = $0 { return true }; return false }($0) }
        try Data(#"["a", "b"]"#.utf8).write(to: vocabulary)
        expect(folder) { if case .malformedJSON = $0 { return true }; return false }
        try Data(#"{"a": "zero"}"#.utf8).write(to: vocabulary)
        expect(folder) { if case .malformedJSON = $0 { return true }; return false }
        try Data(#"{"a": 0, "b": 1, "a</w>": 2, "b</w>": 3, "ab</w>": 4}"#.utf8).write(to: vocabulary)
        expect(folder) { $0 == .missingFile(path: folder.appendingPathComponent("merges.txt").path) }
        let merges = folder.appendingPathComponent("merges.txt")
        try Data("#version: 0.2\na b</w>\na b c\n".utf8).write(to: merges)
        expect(folder) { $0 == .malformedMerges(path: merges.path, line: 3, reason: "3 fields instead of two symbols") }
        try Data("#version: 0.2\na b</w>\n".utf8).write(to: merges)
        XCTAssertNoThrow(try CLIPTokenizer(contentsOf: folder))
        let config = folder.appendingPathComponent("tokenizer_config.json")
        try Data(#"{"model_max_length": 77, "bos_token": {"lstrip": false}}"#.utf8).write(to: config)
        expect(folder) { $0.description.contains("tokenizer_config.json") && $0.description.contains("bos_token") }
        try Data("not json".utf8).write(to: config)
        expect(folder) { $0.description.contains("tokenizer_config.json") }
        try Data(#"{"model_max_length": 8, "pad_token": null}"#.utf8).write(to: config)
        let unpadded = try CLIPTokenizer(contentsOf: folder)
        XCTAssertNil(unpadded.paddingID)
        XCTAssertThrowsError(try unpadded.tokenize(["ab"])) { XCTAssertEqual(($0 as? TokenizerError).map { "\($0)" }?.contains("pad_token"), true) }
        XCTAssertEqual(try unpadded.tokenize(["ab"], padding: .none).ids[0].count, 3)
    }

    /// A hand-made vocabulary: merges apply by rank, not left to right, and all occurrences of
    /// the best pair merge in one pass from the left.
    func testTinyVocabularyMergeOrder() throws {
        let symbols = ["a", "b", "c", "l", "o", "w", "e", "r", "a</w>", "b</w>", "c</w>", "r</w>", "w</w>",
                       "bc</w>", "ab", "lo", "low</w>", "er</w>", "aa", "aa</w>", "<|startoftext|>", "<|endoftext|>"]
        let vocabulary = Dictionary(uniqueKeysWithValues: symbols.enumerated().map { ($1, $0) })
        // "b c</w>" outranks "a b": "abc" is a + bc</w>, although a b comes first in the word.
        let merges = [("b", "c</w>"), ("a", "b"), ("l", "o"), ("lo", "w</w>"), ("e", "r</w>"), ("a", "a"), ("a", "a</w>")]
        let tiny = CLIPTokenizer(vocabulary: vocabulary, merges: merges)
        let id = { (token: String) in vocabulary[token]! }
        XCTAssertEqual(tiny.encodeWithoutSpecialTokens("abc"), [id("a"), id("bc</w>")])
        XCTAssertEqual(tiny.encodeWithoutSpecialTokens("ab"), [id("a"), id("b</w>")])
        XCTAssertEqual(tiny.encodeWithoutSpecialTokens("LOW"), [id("low</w>")])
        // Rank 5 (a a) merges its occurrences from the left in one pass, then rank 6 (a a</w>).
        XCTAssertEqual(tiny.encodeWithoutSpecialTokens("aaaa"), [id("aa"), id("aa</w>")])
        XCTAssertEqual(tiny.encodeWithoutSpecialTokens("aaa"), [id("aa"), id("a</w>")])
        XCTAssertEqual(tiny.encodeWithoutSpecialTokens("aaaaa"), [id("aa"), id("aa"), id("a</w>")])
        // "lo" + "w" does not merge (only "lo" + "w</w>" does); "e r</w>" does.
        XCTAssertEqual(tiny.encodeWithoutSpecialTokens("lower"), [id("lo"), id("w"), id("er</w>")])
        // A token missing from the vocabulary ("z</w>") falls back to unk_token (<|endoftext|>).
        XCTAssertEqual(tiny.encodeWithoutSpecialTokens("z"), [tiny.unknownID])
        XCTAssertEqual(tiny.unknownID, id("<|endoftext|>"))
        XCTAssertEqual(tiny.encode("ab"), [id("<|startoftext|>"), id("a"), id("b</w>"), id("<|endoftext|>")])
    }

    func testAnyTextIsTokenizedWithoutFailing() throws {
        let tokenizer = try tokenizer()
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            var text = String.UnicodeScalarView()
            for _ in 0..<Int.random(in: 0..<30, using: &generator) {
                if let scalar = Unicode.Scalar(UInt32.random(in: 0...0x10FFFF, using: &generator)) { text.append(scalar) }
            }
            let ids = tokenizer.encode(String(text))
            XCTAssertTrue(ids.allSatisfy { (0..<49_408).contains($0) })
        }
        XCTAssertEqual(tokenizer.decode(tokenizer.encode("Hello, World! it's 3 o'clock"), skipSpecialTokens: true), "hello , world ! it 's 3 o ' clock")
    }

    func testSharedBetweenThreads() throws {
        _ = try self.tokenizer()
        let tokenizer = try CLIPTokenizer(contentsOf: Self.vocabularyURL)
        let texts = try cases("sd1").prefix(400).map { $0["text"] as! String }
        let expected = texts.map { try! self.tokenizer().encode($0) }
        let results = UnsafeMutableBufferPointer<Bool>.allocate(capacity: 8)
        defer { results.deallocate() }
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            results[worker] = texts.indices.allSatisfy { tokenizer.encode(texts[($0 + worker * 37) % texts.count]) == expected[($0 + worker * 37) % texts.count] }
        }
        XCTAssertTrue(results.allSatisfy { $0 })
    }
}

/// The tests fail (they never skip) without openai's vocabulary, saying how to get it.
struct MissingVocabulary: Error, CustomStringConvertible {
    var description: String {
        "CLIP vocabulary missing at \(CLIPTokenizerTests.vocabularyURL.path): run `make clip-vocab` (or set DIFFUSE_CLIP_VOCAB)"
    }
}

private extension JSONSerialization {
    static func quoted(_ text: String) -> String {
        (try? String(decoding: JSONSerialization.data(withJSONObject: [text]), as: UTF8.self).dropFirst().dropLast()).map(String.init) ?? text
    }
}
