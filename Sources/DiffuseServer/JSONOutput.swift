import Foundation

/// JSON at the edge: snake_case keys, as the three APIs spell them.
enum JSONOutput {
    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return encoder
    }

    static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }

    /// `value` as JSON text ("{}" if it cannot be encoded, which the types here rule out).
    static func string<Value: Encodable>(_ value: Value) -> String {
        (try? String(decoding: encoder().encode(value), as: UTF8.self)) ?? "{}"
    }

    static func data<Value: Encodable>(_ value: Value) -> Data {
        (try? encoder().encode(value)) ?? Data("{}".utf8)
    }
}
