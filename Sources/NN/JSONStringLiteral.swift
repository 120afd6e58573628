/// A string written as a JSON string literal, in the three dialects Diffuse's files need.
///
/// Every dialect escapes `"`, `\` and the C0 control characters (with the short
/// forms `\n \r \t \b \f` where JSON has them, lowercase `\u00xx` otherwise); they
/// differ in what else they escape, so that each file matches the program that
/// reads or writes the same file elsewhere byte for byte.
public enum JSONStringLiteral {
    /// What is escaped beyond what JSON requires.
    public enum Escaping: Sendable {
        /// Nothing more, as serde_json writes (the safetensors header).
        case minimal
        /// Also DEL, U+2028 and U+2029, so that a line is safe to paste into JavaScript (the JSONL logs).
        case javaScriptSafe
        /// Everything outside printable ASCII as `\uXXXX` (astral characters as a UTF-16
        /// surrogate pair), as Python's `json.dumps` with `ensure_ascii` (diffusers' config files).
        case asciiOnly
    }

    /// `text` as a JSON string literal, quotes included.
    public static func quoted(_ text: String, escaping: Escaping = .minimal) -> String {
        var output = ""
        append(text, escaping: escaping, to: &output)
        return output
    }

    /// Appends `text` as a JSON string literal, quotes included, to `output`.
    public static func append(_ text: String, escaping: Escaping = .minimal, to output: inout String) {
        output += "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": output += "\\\""
            case "\\": output += "\\\\"
            case "\n": output += "\\n"
            case "\r": output += "\\r"
            case "\t": output += "\\t"
            case "\u{08}": output += "\\b"
            case "\u{0C}": output += "\\f"
            default:
                if needsEscape(scalar, escaping) {
                    for unit in String(scalar).utf16 {
                        let hex = String(unit, radix: 16)
                        output += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                    }
                } else {
                    output.unicodeScalars.append(scalar)
                }
            }
        }
        output += "\""
    }

    private static func needsEscape(_ scalar: Unicode.Scalar, _ escaping: Escaping) -> Bool {
        if scalar.value < 0x20 { return true }
        switch escaping {
        case .minimal: return false
        case .javaScriptSafe: return scalar.value == 0x7F || scalar.value == 0x2028 || scalar.value == 0x2029
        case .asciiOnly: return scalar.value > 0x7E
        }
    }
}
