/// The character properties that Python's `str`, `unicodedata` and `regex` use in
/// transformers' CLIP tokenization, computed from Swift's Unicode data.
///
/// Python's `unicodedata` is fixed to the Unicode version of the interpreter (14.0 in
/// Python 3.11); a character assigned later is `Cn` (unassigned) to it, and so a "control"
/// character that transformers' `BasicTokenizer` drops. `PythonUnicode` reproduces this with
/// the character's age against `unicodeVersion`.
public struct PythonUnicode: Sendable, Equatable {
    /// The Unicode version of Python's `unicodedata` (`unicodedata.unidata_version`).
    public var unicodeVersion: (major: Int, minor: Int)

    /// Python 3.11's `unicodedata` (Unicode 14.0), with which the goldens were made.
    public static let python311 = PythonUnicode(unicodeVersion: (14, 0))
    /// Python 3.12 (Unicode 15.0).
    public static let python312 = PythonUnicode(unicodeVersion: (15, 0))
    /// Python 3.13 (Unicode 15.1).
    public static let python313 = PythonUnicode(unicodeVersion: (15, 1))

    public init(unicodeVersion: (major: Int, minor: Int)) {
        self.unicodeVersion = unicodeVersion
    }

    public static func == (lhs: PythonUnicode, rhs: PythonUnicode) -> Bool {
        lhs.unicodeVersion == rhs.unicodeVersion
    }

    /// Whether the character is assigned in `unicodeVersion`.
    @inline(__always) func isAssigned(_ scalar: Unicode.Scalar) -> Bool {
        guard let age = scalar.properties.age else { return false }
        return age.major < unicodeVersion.major || (age.major == unicodeVersion.major && age.minor <= unicodeVersion.minor)
    }

    /// transformers' `_is_control`: a `C*` category (Cc, Cf, Cs, Co, Cn) other than tab, newline, return.
    func isControl(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x09, 0x0A, 0x0D: return false
        case 0..<0x20, 0x7F..<0xA0: return true
        case 0xA0..<0x300 where scalar.value != 0xAD: return false
        default: break
        }
        guard isAssigned(scalar) else { return true }
        switch scalar.properties.generalCategory {
        case .control, .format, .surrogate, .privateUse, .unassigned: return true
        default: return false
        }
    }

    /// transformers' `_is_whitespace`: space, tab, newline, return, or category Zs.
    func isWhitespace(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x20, 0x09, 0x0A, 0x0D: return true
        case 0..<0xA0: return false
        default: return isAssigned(scalar) && scalar.properties.generalCategory == .spaceSeparator
        }
    }

    /// Python's `str.isspace` (what `str.split()` and `str.strip()` split and strip on).
    static func isStringSpace(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: return true
        default: return false
        }
    }

    /// The `regex` module's `\s` (Unicode White_Space; unlike `str.isspace`, not U+001C…U+001F).
    static func isRegexSpace(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x09...0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: return true
        default: return false
        }
    }

    /// `BasicTokenizer._is_chinese_char`: the CJK Unified Ideographs blocks and their extensions
    /// as transformers lists them (not Hiragana, Katakana or Hangul).
    static func isChineseCharacter(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F,
             0x2B740...0x2B81F, 0x2B820...0x2CEAF, 0xF900...0xFAFF, 0x2F800...0x2FA1F:
            return true
        default:
            return false
        }
    }

    /// Python's `str.lower()` of `scalars`: the full lower-case mapping of each character
    /// (İ becomes i + U+0307) and the Final_Sigma rule (Σ becomes ς at the end of a word,
    /// σ elsewhere), appended to `output`.
    static func appendLowercased(_ scalars: ArraySlice<Unicode.Scalar>, to output: inout String.UnicodeScalarView) {
        for index in scalars.indices {
            let scalar = scalars[index]
            if scalar.value < 0x80 {
                output.append(scalar.value >= 0x41 && scalar.value <= 0x5A ? Unicode.Scalar(scalar.value + 32)! : scalar)
            } else if scalar.value == 0x3A3 {
                output.append(isFinalSigma(scalars, at: index) ? "\u{3C2}" : "\u{3C3}")
            } else if scalar.properties.changesWhenLowercased {
                output.append(contentsOf: scalar.properties.lowercaseMapping.unicodeScalars)
            } else {
                output.append(scalar)
            }
        }
    }

    /// CPython's `handle_capital_sigma`: a cased letter before (skipping case-ignorables)
    /// and no cased letter after (skipping case-ignorables).
    private static func isFinalSigma(_ scalars: ArraySlice<Unicode.Scalar>, at index: Int) -> Bool {
        var before = index - 1
        while before >= scalars.startIndex && scalars[before].properties.isCaseIgnorable { before -= 1 }
        guard before >= scalars.startIndex && scalars[before].properties.isCased else { return false }
        var after = index + 1
        while after < scalars.endIndex && scalars[after].properties.isCaseIgnorable { after += 1 }
        return after == scalars.endIndex || !scalars[after].properties.isCased
    }
}
