import Foundation
import Hummingbird

extension DiffuseServer {
    /// The request's body within the size limit (413 naming it beyond).
    func bodyBytes(of request: Request) async throws -> Data {
        let limit = limits.maximumBodyBytes
        let tooLarge = APIError(.contentTooLarge, "the body is larger than \(limit) bytes (the server's --max-body)")
        if let length = request.headers[.contentLength].flatMap(Int.init), length > limit { throw tooLarge }
        let buffer: ByteBuffer
        do { buffer = try await request.body.collect(upTo: limit) } catch { throw tooLarge }
        return Data(buffer: buffer)
    }

    /// The body decoded as JSON (snake_case keys); 400 saying which field is wrong.
    func decodeBody<Body: Decodable>(_ type: Body.Type, from request: Request) async throws -> (body: Body, object: [String: Any]) {
        let data = try await bodyBytes(of: request)
        guard !data.isEmpty else { throw APIError.badRequest("the body is empty; send a JSON object") }
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) } catch {
            throw APIError.badRequest("the body is not valid JSON")
        }
        guard let dictionary = object as? [String: Any] else { throw APIError.badRequest("the body must be a JSON object") }
        do {
            return (try JSONOutput.decoder().decode(Body.self, from: data), dictionary)
        } catch let error as DecodingError {
            throw APIError.badRequest(Self.describe(error))
        }
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let names = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? snakeCase($0.stringValue) }
            return names.isEmpty ? "the body" : "field \"" + names.joined(separator: ".").replacingOccurrences(of: ".[", with: "[") + "\""
        }
        switch error {
        case .typeMismatch(let type, let context): return "\(path(context)): expected \(typeName(type))"
        case .valueNotFound(let type, let context): return "\(path(context)): expected \(typeName(type)), got null"
        case .keyNotFound(let key, let context):
            return "missing field \"\(snakeCase(key.stringValue))\"" + (context.codingPath.isEmpty ? "" : " in \(path(context))")
        case .dataCorrupted(let context) where context.codingPath.isEmpty:
            // The body parsed as JSON, so the decoder met a number it cannot hold (1e30 for an integer).
            return "the body has a number out of range or of the wrong kind (\(context.debugDescription))"
        case .dataCorrupted(let context): return "\(path(context)): \(context.debugDescription)"
        @unknown default: return "the body does not match the API"
        }
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type, is Int64.Type, is UInt64.Type: return "an integer"
        case is Double.Type, is Float.Type: return "a number"
        case is String.Type: return "a string"
        case is Bool.Type: return "true or false"
        default: return "\(type)".contains("Array") ? "an array" : "\(type)".contains("Dictionary") ? "an object" : "\(type)"
        }
    }

    static func snakeCase(_ name: String) -> String {
        var result = ""
        for character in name {
            if character.isUppercase { result += "_" + character.lowercased() } else { result.append(character) }
        }
        return result
    }
}

extension Data {
    init(buffer: ByteBuffer) {
        self = buffer.withUnsafeReadableBytes { Data($0) }
    }
}

/// JSON responses.
enum JSONResponse {
    static func make<Value: Encodable>(_ value: Value, status: HTTPResponse.Status = .ok) -> Response {
        make(data: JSONOutput.data(value), status: status)
    }

    static func make(object: Any, status: HTTPResponse.Status = .ok) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return make(data: data, status: status)
    }

    static func make(data: Data, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }
}
