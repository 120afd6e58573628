import ArgumentParser
import Diffusion
import Foundation
import NN

/// `diffuse tokenize`: CLIP token ids of prompts, one JSON line per prompt.
struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the CLIP token ids of prompts, one JSON line per prompt.",
        discussion: """
        MODEL is a tokenizer folder (vocab.json, merges.txt, tokenizer_config.json, \
        special_tokens_map.json), a pipeline folder (its tokenizer/ is used) or openai's \
        bpe_simple_vocab_16e6.txt.gz (`make clip-vocab` puts it in data/clip/). Each line is \
        {"text", "ids", "tokens", "count", "limit", "truncated"}: ids and tokens as the text encoder \
        gets them (start token, text, end token, truncated to the limit, no padding); count is the \
        token count with start and end tokens before truncation.
        """)

    @Argument(help: ArgumentHelp("A tokenizer folder, a pipeline folder or a BPE merges file (.txt.gz).", valueName: "model-or-tokenizer-dir"))
    var model: String
    @Argument(help: "Prompts; each is one JSON line of output.") var texts: [String] = []
    @Option(help: ArgumentHelp("A file of prompts, one per line.", valueName: "prompts.txt")) var file: String?
    @Option(help: ArgumentHelp("Text cleaning: transformers (BasicTokenizer, the default) or openai (html.unescape, whitespace, lower case).", valueName: "transformers|openai"))
    var normalization = "transformers"
    @Option(help: .hidden) var benchmark: Int?

    func run() throws {
        try CommandFailure.report {
            guard let normalization = CLIPTextNormalization.allCases.first(where: { $0.rawValue.lowercased() == self.normalization.lowercased() }) else {
                throw ValidationError("--normalization \"\(self.normalization)\" is not transformers or openai")
            }
            var prompts = texts
            if let file {
                guard let data = FileManager.default.contents(atPath: file) else { throw TokenizerError.missingFile(path: file) }
                var lines = String(decoding: data, as: UTF8.self).components(separatedBy: "\n")
                if lines.last == "" { lines.removeLast() }
                prompts += lines
            }
            let tokenizer = try CLIPTokenizer(contentsOf: URL(fileURLWithPath: model), normalization: normalization)
            if let repetitions = benchmark {
                try runBenchmark(prompts, repetitions: repetitions, model: URL(fileURLWithPath: model), normalization: normalization)
                return
            }
            let batch = try tokenizer.tokenize(prompts, padding: .none, truncation: true)
            var output = ""
            for (index, text) in prompts.enumerated() {
                let ids = batch.ids[index]
                output += "{\"text\":" + JSONStringLiteral.quoted(text)
                output += ",\"ids\":[" + ids.map(String.init).joined(separator: ",") + "]"
                output += ",\"tokens\":[" + tokenizer.tokens(for: ids).map { JSONStringLiteral.quoted($0) }.joined(separator: ",") + "]"
                output += ",\"count\":\(batch.untruncatedCounts[index]),\"limit\":\(tokenizer.modelMaxLength)"
                output += ",\"truncated\":\(batch.isTruncated(index))}\n"
                if output.utf8.count > 1 << 16 { FileHandle.standardOutput.write(Data(output.utf8)); output = "" }
            }
            FileHandle.standardOutput.write(Data(output.utf8))
        }
    }

    /// Tokenizes all prompts `repetitions` times (no padding or truncation, so every token is
    /// produced) and prints one JSON line of timings: the first pass with a fresh word cache,
    /// then the best pass once warm. Loading is not timed.
    private func runBenchmark(_ prompts: [String], repetitions: Int, model: URL, normalization: CLIPTextNormalization) throws {
        func seconds(_ body: () throws -> Void) rethrows -> Double {
            let start = DispatchTime.now().uptimeNanoseconds
            try body()
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        }
        let fresh = try CLIPTokenizer(contentsOf: model, normalization: normalization)
        var tokens = 0
        let cold = try seconds { tokens = try fresh.tokenize(prompts, padding: .none, truncation: false).ids.reduce(0) { $0 + $1.count } }
        var best = Double.infinity
        for _ in 0..<max(1, repetitions) {
            best = min(best, try seconds { _ = try fresh.tokenize(prompts, padding: .none, truncation: false) })
        }
        print("{\"prompts\":\(prompts.count),\"tokens\":\(tokens),\"cold_seconds\":\(cold),\"warm_seconds\":\(best),"
              + "\"cold_tokens_per_second\":\(Double(tokens) / cold),\"warm_tokens_per_second\":\(Double(tokens) / best)}")
    }
}
