import Foundation
import Hummingbird

/// An error answered to the client: a status and a message, as JSON that both OpenAI's clients
/// (`error.message`) and A1111's (`detail`) read.
public struct APIError: HTTPResponseError, CustomStringConvertible {
    public let status: HTTPResponse.Status
    public let message: String
    /// Extra headers (`Retry-After`, `WWW-Authenticate`).
    public var headers: HTTPFields = [:]

    public init(_ status: HTTPResponse.Status, _ message: String, headers: HTTPFields = [:]) {
        self.status = status
        self.message = message
        self.headers = headers
    }

    public var description: String { "\(status.code) \(message)" }

    static func badRequest(_ message: String) -> APIError { APIError(.badRequest, message) }
    static func notFound(_ message: String) -> APIError { APIError(.notFound, message) }

    private struct Body: Encodable {
        struct Detail: Encodable {
            let message: String
            let type: String
            let code: Int
        }
        let error: Detail
        let detail: String
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        let kind = status.code == 429 ? "rate_limit_error" : status.code == 401 ? "authentication_error"
            : status.code >= 500 ? "server_error" : "invalid_request_error"
        let body = JSONOutput.data(Body(error: .init(message: message, type: kind, code: status.code), detail: message))
        var fields = headers
        fields[.contentType] = "application/json; charset=utf-8"
        return Response(status: status, headers: fields, body: ResponseBody(byteBuffer: ByteBuffer(bytes: body)))
    }
}
