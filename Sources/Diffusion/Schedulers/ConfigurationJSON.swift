import Foundation
import NN

/// A JSON value as Python's `json` module reads and writes it.
///
/// Integers and floats stay distinct (`1` and `1.0` are different values, as
/// in Python), and the non-standard literals `NaN`, `Infinity` and `-Infinity`
/// that `json.dumps` emits (diffusers writes `"lambda_min_clipped": -Infinity`)
/// are accepted and written.
public enum JSONValue: Equatable, Sendable, CustomStringConvertible {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// The value as a number, when it is one (an integer or a float).
    public var numberValue: Double? {
        switch self {
        case .int(let value): return Double(value)
        case .double(let value): return value
        default: return nil
        }
    }

    /// A short name of the value's type, for error messages.
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .int: return "integer"
        case .double: return "float"
        case .string: return "string"
        case .array: return "list"
        case .object: return "object"
        }
    }

    /// Compact JSON text (one line), for messages.
    public var description: String { JSONText.write(self, indent: nil) }
}

/// Errors reading JSON text.
public struct JSONSyntaxError: Error, CustomStringConvertible, Equatable {
    /// What is wrong.
    public let message: String
    /// 1-based line and column of the offending character.
    public let line: Int, column: Int

    public var description: String { "invalid JSON at line \(line), column \(column): \(message)" }
}

/// Reading and writing JSON exactly as Python's `json` does.
enum JSONText {
    // MARK: Writing

    /// `json.dumps(value, indent=indent, sort_keys=True)`: keys sorted by code
    /// point, `", "`/`": "` separators, floats in Python's `repr`, non-ASCII escaped.
    static func write(_ value: JSONValue, indent: Int?) -> String {
        var output = ""
        write(value, indent: indent, level: 0, into: &output)
        return output
    }

    private static func write(_ value: JSONValue, indent: Int?, level: Int, into output: inout String) {
        switch value {
        case .null: output += "null"
        case .bool(let flag): output += flag ? "true" : "false"
        case .int(let number): output += String(number)
        case .double(let number): output += pythonRepr(number)
        case .string(let text): writeString(text, into: &output)
        case .array(let items):
            if items.isEmpty { output += "[]"; return }
            output += "["
            for (index, item) in items.enumerated() {
                if index > 0 { output += indent == nil ? ", " : "," }
                newline(indent, level + 1, &output)
                write(item, indent: indent, level: level + 1, into: &output)
            }
            newline(indent, level, &output)
            output += "]"
        case .object(let members):
            if members.isEmpty { output += "{}"; return }
            output += "{"
            let keys = members.keys.sorted { $0.unicodeScalars.lexicographicallyPrecedes($1.unicodeScalars) }
            for (index, key) in keys.enumerated() {
                if index > 0 { output += indent == nil ? ", " : "," }
                newline(indent, level + 1, &output)
                writeString(key, into: &output)
                output += ": "
                write(members[key]!, indent: indent, level: level + 1, into: &output)
            }
            newline(indent, level, &output)
            output += "}"
        }
    }

    private static func newline(_ indent: Int?, _ level: Int, _ output: inout String) {
        guard let indent else { return }
        output += "\n" + String(repeating: " ", count: indent * level)
    }

    /// As Python's `json.dumps` with `ensure_ascii`, as diffusers writes its configs.
    private static func writeString(_ text: String, into output: inout String) {
        JSONStringLiteral.append(text, escaping: .asciiOnly, to: &output)
    }

    /// Python's `repr(float)`: the shortest digits that round-trip, in
    /// exponent form when the decimal exponent is below -4 or above 16.
    static func pythonRepr(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value < 0 ? "-Infinity" : "Infinity" }
        if value == 0 { return value.sign == .minus ? "-0.0" : "0.0" }
        // Swift's description also prints the shortest round-trip digits; take them apart.
        var text = Swift.abs(value).description
        var exponent = 0
        if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            exponent = Int(text[text.index(after: e)...])!
            text = String(text[..<e])
        }
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        let integerPart = String(parts[0])
        let fractionPart = parts.count > 1 ? String(parts[1]) : ""
        var digits = integerPart + fractionPart
        var point = integerPart.count + exponent // value = 0.digits × 10^point
        while digits.hasPrefix("0") { digits.removeFirst(); point -= 1 }
        while digits.hasSuffix("0") { digits.removeLast() }
        let sign = value < 0 ? "-" : ""
        if point <= -4 || point > 16 {
            let first = digits.prefix(1)
            let rest = digits.dropFirst()
            let power = point - 1
            let powerText = (power < 0 ? "-" : "+") + (Swift.abs(power) < 10 ? "0" : "") + String(Swift.abs(power))
            return sign + first + (rest.isEmpty ? "" : "." + rest) + "e" + powerText
        }
        if point <= 0 { return sign + "0." + String(repeating: "0", count: -point) + digits }
        if point >= digits.count { return sign + digits + String(repeating: "0", count: point - digits.count) + ".0" }
        let split = digits.index(digits.startIndex, offsetBy: point)
        return sign + digits[..<split] + "." + digits[split...]
    }

    // MARK: Reading

    /// Parses one JSON value (with Python's NaN/Infinity extensions) filling the whole text.
    static func parse(_ text: String) throws -> JSONValue {
        var parser = Parser(scalars: Array(text.unicodeScalars))
        parser.skipWhitespace()
        let value = try parser.value(depth: 0)
        parser.skipWhitespace()
        guard parser.position == parser.scalars.count else { throw parser.error("unexpected text after the value") }
        return value
    }

    private struct Parser {
        let scalars: [Unicode.Scalar]
        var position = 0

        func error(_ message: String) -> JSONSyntaxError {
            var line = 1, column = 1
            for scalar in scalars[..<Swift.min(position, scalars.count)] {
                if scalar == "\n" { line += 1; column = 1 } else { column += 1 }
            }
            return JSONSyntaxError(message: message, line: line, column: column)
        }

        var current: Unicode.Scalar? { position < scalars.count ? scalars[position] : nil }

        mutating func skipWhitespace() {
            while let scalar = current, scalar == " " || scalar == "\n" || scalar == "\r" || scalar == "\t" { position += 1 }
        }

        mutating func literal(_ word: String) -> Bool {
            let wordScalars = Array(word.unicodeScalars)
            guard position + wordScalars.count <= scalars.count,
                  Array(scalars[position..<position + wordScalars.count]) == wordScalars else { return false }
            position += wordScalars.count
            return true
        }

        mutating func value(depth: Int) throws -> JSONValue {
            guard depth < 512 else { throw error("nesting too deep") }
            guard let scalar = current else { throw error("expected a value, found the end of the text") }
            switch scalar {
            case "{": return try object(depth: depth)
            case "[": return try array(depth: depth)
            case "\"": return .string(try string())
            case "t": if literal("true") { return .bool(true) }
            case "f": if literal("false") { return .bool(false) }
            case "n": if literal("null") { return .null }
            case "N": if literal("NaN") { return .double(.nan) }
            case "I": if literal("Infinity") { return .double(.infinity) }
            case "-":
                if literal("-Infinity") { return .double(-.infinity) }
                return try number()
            default:
                if ("0"..."9").contains(scalar) { return try number() }
            }
            throw error("unexpected character '\(scalar)'")
        }

        mutating func object(depth: Int) throws -> JSONValue {
            position += 1
            var members: [String: JSONValue] = [:]
            skipWhitespace()
            if current == "}" { position += 1; return .object(members) }
            while true {
                skipWhitespace()
                guard current == "\"" else { throw error("expected a quoted key") }
                let key = try string()
                skipWhitespace()
                guard current == ":" else { throw error("expected ':' after key \"\(key)\"") }
                position += 1
                skipWhitespace()
                members[key] = try value(depth: depth + 1) // a repeated key keeps the last value, as Python does
                skipWhitespace()
                if current == "," { position += 1; continue }
                if current == "}" { position += 1; return .object(members) }
                throw error("expected ',' or '}' in an object")
            }
        }

        mutating func array(depth: Int) throws -> JSONValue {
            position += 1
            var items: [JSONValue] = []
            skipWhitespace()
            if current == "]" { position += 1; return .array(items) }
            while true {
                skipWhitespace()
                items.append(try value(depth: depth + 1))
                skipWhitespace()
                if current == "," { position += 1; continue }
                if current == "]" { position += 1; return .array(items) }
                throw error("expected ',' or ']' in a list")
            }
        }

        mutating func string() throws -> String {
            position += 1
            var result = String.UnicodeScalarView()
            while true {
                guard let scalar = current else { throw error("unterminated string") }
                position += 1
                if scalar == "\"" { return String(result) }
                if scalar.value < 0x20 { throw error("control character in a string") }
                guard scalar == "\\" else { result.append(scalar); continue }
                guard let escape = current else { throw error("unterminated escape") }
                position += 1
                switch escape {
                case "\"": result.append("\"")
                case "\\": result.append("\\")
                case "/": result.append("/")
                case "b": result.append("\u{08}")
                case "f": result.append("\u{0C}")
                case "n": result.append("\n")
                case "r": result.append("\r")
                case "t": result.append("\t")
                case "u":
                    var code = try hexQuad()
                    if (0xD800..<0xDC00).contains(code), literal("\\u") {
                        let low = try hexQuad()
                        if (0xDC00..<0xE000).contains(low) { code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00) }
                    }
                    result.append(Unicode.Scalar(code) ?? "\u{FFFD}")
                default: throw error("bad escape '\\\(escape)'")
                }
            }
        }

        mutating func hexQuad() throws -> UInt32 {
            guard position + 4 <= scalars.count,
                  let code = UInt32(String(String.UnicodeScalarView(scalars[position..<position + 4])), radix: 16) else {
                throw error("bad \\u escape")
            }
            position += 4
            return code
        }

        mutating func number() throws -> JSONValue {
            let start = position
            var isFloat = false
            if current == "-" { position += 1 }
            guard let first = current, ("0"..."9").contains(first) else { throw error("bad number") }
            if first == "0" { position += 1 } else { while let digit = current, ("0"..."9").contains(digit) { position += 1 } }
            if current == "." {
                isFloat = true
                position += 1
                guard let digit = current, ("0"..."9").contains(digit) else { throw error("bad number: digits must follow '.'") }
                while let digit = current, ("0"..."9").contains(digit) { position += 1 }
            }
            if current == "e" || current == "E" {
                isFloat = true
                position += 1
                if current == "+" || current == "-" { position += 1 }
                guard let digit = current, ("0"..."9").contains(digit) else { throw error("bad number: digits must follow the exponent") }
                while let digit = current, ("0"..."9").contains(digit) { position += 1 }
            }
            let text = String(String.UnicodeScalarView(scalars[start..<position]))
            if !isFloat, let integer = Int(text) { return .int(integer) }
            guard let double = Double(text) else { throw error("bad number \(text)") }
            return .double(double)
        }
    }
}
