import Foundation
import Hummingbird

/// Around every route: bearer authentication (all but `/healthz`), errors answered as JSON
/// with a message, and response counts for `/metrics`.
struct ServerMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let server: DiffuseServer

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let response: Response
        do {
            try authenticate(request)
            response = try await next(request, context)
        } catch let error as APIError {
            response = try error.response(from: request, context: context)
        } catch let error as any HTTPResponseError {
            let message = error.status == .notFound ? "no route \(request.method.rawValue) \(request.uri.path.prefix(200))"
                : error.status == .contentTooLarge ? "the body is larger than \(server.limits.maximumBodyBytes) bytes (the server's --max-body)"
                : "\(error.status.reasonPhrase)"
            response = try APIError(error.status, message).response(from: request, context: context)
        } catch {
            response = try APIError(.internalServerError, "\(error)").response(from: request, context: context)
        }
        server.metrics.response(status: response.status.code)
        return response
    }

    private func authenticate(_ request: Request) throws {
        guard let key = server.apiKey, request.uri.path != "/healthz" else { return }
        var given: String?
        if let header = request.headers[.authorization], header.lowercased().hasPrefix("bearer ") {
            given = String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        } else if let query = request.uri.queryParameters.get("api_key") {
            given = query
        }
        guard let given, Self.constantTimeEqual(Array(given.utf8), Array(key.utf8)) else {
            throw APIError(.unauthorized, given == nil ? "this server needs Authorization: Bearer KEY (--api-key)" : "wrong API key",
                           headers: [.wwwAuthenticate: "Bearer"])
        }
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(a.count == b.count ? 0 : 1)
        for index in 0..<Swift.max(a.count, b.count) {
            difference |= (index < a.count ? a[index] : 0) ^ (index < b.count ? b[index] : 0)
        }
        return difference == 0
    }
}
