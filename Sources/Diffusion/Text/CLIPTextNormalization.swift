import Foundation

/// How text is cleaned before CLIP's pre-tokenizer splits it.
public enum CLIPTextNormalization: String, Sendable, CaseIterable {
    /// transformers' slow `CLIPTokenizer` when `ftfy` is not installed (the common case, and
    /// what diffusers' Stable Diffusion pipelines get): `BasicTokenizer(strip_accents=False,
    /// do_split_on_punc=False)`. It drops U+0000, U+FFFD and every `C*` character (controls,
    /// format characters such as U+200D ZWJ, private use, and characters unassigned in
    /// Python's Unicode version) except tab, newline and return; turns those three and `Zs`
    /// spaces into a space; puts spaces around CJK ideographs; NFC-normalises; splits on
    /// whitespace; lower-cases each word with Python's `str.lower()`; joins with single spaces.
    case transformers
    /// openai/CLIP's `SimpleTokenizer` without `ftfy.fix_text`: `html.unescape` twice, strip,
    /// runs of whitespace (`regex`'s `\s`) to one space, strip, `str.lower()`.
    case openAI
}

/// The text cleaning of `CLIPTextNormalization`, producing the UTF-8 bytes the pre-tokenizer scans.
struct CLIPTextNormalizer: Sendable {
    var normalization: CLIPTextNormalization
    var python: PythonUnicode

    /// Appends the normalised UTF-8 of `text` to `output`.
    func normalize(_ text: Substring, into output: inout [UInt8]) {
        switch normalization {
        case .transformers:
            if text.utf8.allSatisfy({ $0 < 0x80 }) {
                appendBasicASCII(text.utf8, to: &output)
            } else {
                output.append(contentsOf: basicTokenizerText(text).utf8)
            }
        case .openAI:
            output.append(contentsOf: openAIText(String(text)).utf8)
        }
    }

    /// `BasicTokenizer.tokenize` joined with spaces, for ASCII text: controls dropped, the
    /// whitespace runs (space, tab, newline, return) one space, trimmed, A–Z lower-cased.
    private func appendBasicASCII(_ bytes: Substring.UTF8View, to output: inout [UInt8]) {
        let start = output.count
        var pendingSpace = false
        for byte in bytes {
            switch byte {
            case 0x20, 0x09, 0x0A, 0x0D:
                pendingSpace = output.count > start
            case 0..<0x20, 0x7F:
                continue
            default:
                if pendingSpace { output.append(0x20); pendingSpace = false }
                output.append(byte >= 0x41 && byte <= 0x5A ? byte + 32 : byte)
            }
        }
    }

    /// `" ".join(BasicTokenizer(strip_accents=False, do_split_on_punc=False).tokenize(text))`.
    func basicTokenizerText(_ text: Substring) -> String {
        // _clean_text and _tokenize_chinese_chars.
        var cleaned = String.UnicodeScalarView()
        var needsComposition = false
        for scalar in text.unicodeScalars {
            let value = scalar.value
            if value == 0 || value == 0xFFFD || python.isControl(scalar) { continue }
            if python.isWhitespace(scalar) {
                cleaned.append(" ")
            } else if PythonUnicode.isChineseCharacter(scalar) {
                cleaned.append(" ")
                cleaned.append(scalar)
                cleaned.append(" ")
                needsComposition = needsComposition || value >= 0xF900
            } else {
                cleaned.append(scalar)
                // Below U+0300 nothing decomposes or composes with what precedes it.
                needsComposition = needsComposition || value >= 0x300
            }
        }
        var composed = String(cleaned)
        if needsComposition { composed = composed.precomposedStringWithCanonicalMapping }
        // whitespace_tokenize (str.split()), lower-case each word, join with spaces.
        let scalars = Array(composed.unicodeScalars)
        var output = String.UnicodeScalarView()
        var index = 0
        while index < scalars.count {
            while index < scalars.count && PythonUnicode.isStringSpace(scalars[index]) { index += 1 }
            let wordStart = index
            while index < scalars.count && !PythonUnicode.isStringSpace(scalars[index]) { index += 1 }
            guard index > wordStart else { break }
            if !output.isEmpty { output.append(" ") }
            PythonUnicode.appendLowercased(scalars[wordStart..<index], to: &output)
        }
        return String(output)
    }

    /// `whitespace_clean(basic_clean(text)).lower()` of openai/CLIP, without ftfy.
    func openAIText(_ text: String) -> String {
        let unescaped = HTMLUnescape.unescape(HTMLUnescape.unescape(text))
        let scalars = Array(unescaped.unicodeScalars)
        // basic_clean's strip() (str.isspace), then regex \s+ → " ", then strip() again.
        var start = 0, end = scalars.count
        while start < end && PythonUnicode.isStringSpace(scalars[start]) { start += 1 }
        while end > start && PythonUnicode.isStringSpace(scalars[end - 1]) { end -= 1 }
        var collapsed: [Unicode.Scalar] = []
        collapsed.reserveCapacity(end - start)
        var index = start
        while index < end {
            if PythonUnicode.isRegexSpace(scalars[index]) {
                while index < end && PythonUnicode.isRegexSpace(scalars[index]) { index += 1 }
                collapsed.append(" ")
            } else {
                collapsed.append(scalars[index])
                index += 1
            }
        }
        var first = 0, last = collapsed.count
        while first < last && PythonUnicode.isStringSpace(collapsed[first]) { first += 1 }
        while last > first && PythonUnicode.isStringSpace(collapsed[last - 1]) { last -= 1 }
        var output = String.UnicodeScalarView()
        PythonUnicode.appendLowercased(collapsed[first..<last], to: &output)
        return String(output)
    }
}
