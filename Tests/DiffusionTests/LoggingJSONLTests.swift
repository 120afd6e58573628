import Diffusion
import Foundation
import XCTest

final class LoggingJSONLTests: XCTestCase {
    func testScalars() {
        XCTAssertEqual(JSONScalar.integer(-42).jsonText, "-42")
        XCTAssertEqual(JSONScalar.float(0.1).jsonText, "0.1")
        XCTAssertEqual(JSONScalar.float(1).jsonText, "1.0")
        XCTAssertEqual(JSONScalar.float(1e-5).jsonText, "1e-05")
        XCTAssertEqual(JSONScalar.double(0.1).jsonText, "0.1")
        XCTAssertEqual(JSONScalar.double(-2.5e300).jsonText, "-2.5e+300")
        XCTAssertEqual(JSONScalar.bool(true).jsonText, "true")
        XCTAssertEqual(JSONScalar.null.jsonText, "null")
    }

    func testNonFiniteNumbersBecomeStrings() {
        XCTAssertEqual(JSONScalar.float(.nan).jsonText, "\"nan\"")
        XCTAssertEqual(JSONScalar.double(.infinity).jsonText, "\"inf\"")
        XCTAssertEqual(JSONScalar.float(-.infinity).jsonText, "\"-inf\"")
        XCTAssertEqual(JSONScalar.double(-.nan).jsonText, "\"nan\"")
    }

    func testEscaping() {
        XCTAssertEqual(JSONScalar.quoted("plain"), "\"plain\"")
        XCTAssertEqual(JSONScalar.quoted("a\"b\\c/d"), "\"a\\\"b\\\\c/d\"")
        XCTAssertEqual(JSONScalar.quoted("\n\r\t\u{08}\u{0C}"), "\"\\n\\r\\t\\b\\f\"")
        XCTAssertEqual(JSONScalar.quoted("\u{00}\u{1F}\u{7F}"), "\"\\u0000\\u001f\\u007f\"")
        XCTAssertEqual(JSONScalar.quoted("\u{2028}x\u{2029}"), "\"\\u2028x\\u2029\"")
        XCTAssertEqual(JSONScalar.quoted("é 漢字 🙂"), "\"é 漢字 🙂\"")
    }

    func testLinesAreValidJSONThatFoundationReadsBack() throws {
        let path = NSTemporaryDirectory() + "jsonl-\(UUID().uuidString)/log.jsonl"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let log = try JSONLLog(path: path)
        try log.append(["step": 1, "loss": .float(0.5), "note": "a \"quoted\"\nline", "ok": true, "missing": nil])
        try log.append(orderedFields: [("step", 2), ("loss", .float(.nan)), ("lr", .double(.infinity))])
        // Lines are in the file without flush or close; reopening appends.
        try JSONLLog(path: path).append(["step": 3])
        try log.flush()
        try log.close()
        XCTAssertThrowsError(try log.append(["step": 4]))

        let text = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertEqual(text, """
            {"loss":0.5,"missing":null,"note":"a \\"quoted\\"\\nline","ok":true,"step":1}
            {"step":2,"loss":"nan","lr":"inf"}
            {"step":3}

            """)
        let objects = try text.split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        XCTAssertEqual(objects[0]?["note"] as? String, "a \"quoted\"\nline")
        XCTAssertEqual(objects[1]?["loss"] as? String, "nan")
        XCTAssertEqual(objects[2]?["step"] as? Int, 3)
    }

    func testConcurrentAppendsKeepWholeLines() throws {
        let path = NSTemporaryDirectory() + "jsonl-\(UUID().uuidString).jsonl"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        let log = try JSONLLog(path: path)
        let padding = String(repeating: "x", count: 1000)
        DispatchQueue.concurrentPerform(iterations: 8) { thread in
            for index in 0..<50 {
                try? log.append(orderedFields: [("thread", .integer(thread)), ("index", .integer(index)), ("pad", .string(padding))])
            }
        }
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 400)
        for line in lines {
            XCTAssertNotNil(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        }
    }
}
