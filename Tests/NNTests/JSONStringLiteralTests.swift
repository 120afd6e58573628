import NN
import XCTest

/// The three JSON string dialects, each checked against what its reference program writes.
final class JSONStringLiteralTests: XCTestCase {
    func testEveryDialectEscapesQuotesBackslashesAndControls() {
        for escaping in [JSONStringLiteral.Escaping.minimal, .javaScriptSafe, .asciiOnly] {
            XCTAssertEqual(JSONStringLiteral.quoted("a\"b\\c/d", escaping: escaping), "\"a\\\"b\\\\c/d\"")
            XCTAssertEqual(JSONStringLiteral.quoted("\n\r\t\u{08}\u{0C}", escaping: escaping), "\"\\n\\r\\t\\b\\f\"")
            XCTAssertEqual(JSONStringLiteral.quoted("\u{00}\u{01}\u{1F}", escaping: escaping), "\"\\u0000\\u0001\\u001f\"")
        }
    }

    func testMinimalLeavesEverythingElseAsUTF8LikeSerdeJSON() {
        // serde_json::to_string("\u{7f}é漢🙂\u{2028}") == "\"\u{7f}é漢🙂\u{2028}\""
        XCTAssertEqual(JSONStringLiteral.quoted("\u{7F}é漢🙂\u{2028}"), "\"\u{7F}é漢🙂\u{2028}\"")
    }

    func testJavaScriptSafeEscapesDeleteAndLineSeparators() {
        XCTAssertEqual(JSONStringLiteral.quoted("\u{7F}x\u{2028}y\u{2029}é", escaping: .javaScriptSafe),
                       "\"\\u007fx\\u2028y\\u2029é\"")
    }

    func testAsciiOnlyMatchesPythonEnsureASCII() {
        // python3 -c 'import json; print(json.dumps("\x7fé漢🙂~"))' → "\u007f\u00e9\u6f22\ud83d\ude42~"
        XCTAssertEqual(JSONStringLiteral.quoted("\u{7F}é漢🙂~", escaping: .asciiOnly),
                       "\"\\u007f\\u00e9\\u6f22\\ud83d\\ude42~\"")
        var output = "x"
        JSONStringLiteral.append("é", escaping: .asciiOnly, to: &output)
        XCTAssertEqual(output, "x\"\\u00e9\"")
    }
}
