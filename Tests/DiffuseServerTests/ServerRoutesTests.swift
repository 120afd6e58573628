import DiffuseServer
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// The page, health, metrics, OpenAPI document and authentication.
final class ServerRoutesTests: XCTestCase {
    func testHealthzAnswersWithoutTheKeyAndEveryOtherRouteNeedsIt() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self)], apiKey: "s3cret")
        try await withRouter(server) { client in
            let health = try await client.send(.get, "/healthz")
            XCTAssertEqual(health.status, .ok)
            XCTAssertEqual(health.jsonObject["status"] as? String, "ok")
            for (method, uri) in [(HTTPRequest.Method.get, "/"), (.get, "/metrics"), (.get, "/openapi.json"), (.get, "/api/v1/models"),
                                  (.post, "/api/v1/jobs"), (.get, "/sdapi/v1/progress"), (.post, "/v1/images/generations"),
                                  (.get, "/sdapi/v1/samplers"), (.post, "/sdapi/v1/interrupt")] {
                let bare = try await client.send(method, uri)
                XCTAssertEqual(bare.status, .unauthorized, uri)
                XCTAssertEqual(bare.headers[.wwwAuthenticate], "Bearer")
                XCTAssertTrue(bare.message.contains("Bearer"), bare.message)
                let wrong = try await client.send(method, uri, headers: [.authorization: "Bearer s3cres"])
                XCTAssertEqual(wrong.status, .unauthorized, uri)
                XCTAssertEqual(wrong.message, "wrong API key")
            }
            let right = try await client.send(.get, "/api/v1/models", headers: [.authorization: "Bearer s3cret"])
            XCTAssertEqual(right.status, .ok)
            let page = try await client.send(.get, "/?api_key=s3cret")
            XCTAssertEqual(page.status, .ok)
        }
    }

    func testThePageIsSelfContained() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self)])
        try await withRouter(server) { client in
            let page = try await client.send(.get, "/")
            XCTAssertEqual(page.status, .ok)
            XCTAssertEqual(page.headers[.contentType], "text/html; charset=utf-8")
            let html = page.text
            for needed in ["<textarea id=\"prompt\"", "id=\"classes\"", "type=\"color\"", "id=\"guideScale\"", "id=\"scheduler\"", "id=\"steps\"",
                           "id=\"seed\"", "id=\"width\"", "id=\"count\"", "new EventSource", "previewSample", "previewOriginal", "download", "gallery"] {
                XCTAssertTrue(html.contains(needed), needed)
            }
            XCTAssertFalse(html.contains("http://") || html.contains("https://") || html.contains("src=\"//"), "nothing from another host")
        }
    }

    func testMetricsAreInPrometheusTextFormat() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self)])
        try await withRouter(server) { client in
            let created = try await client.send(.post, "/api/v1/jobs", json: ["steps": 3])
            let id = try XCTUnwrap((created.jsonObject["job"] as? [String: Any])?["id"] as? String)
            _ = try await client.waitForJob(id)
            let metrics = try await client.send(.get, "/metrics")
            XCTAssertEqual(metrics.status, .ok)
            XCTAssertTrue(metrics.headers[.contentType]?.hasPrefix("text/plain; version=0.0.4") ?? false)
            let text = metrics.text
            for line in ["diffuse_queue_length{model=\"tiny-pixel\"} 0", "diffuse_jobs_total{state=\"succeeded\"} 1", "diffuse_steps_total 3",
                         "diffuse_job_seconds_count 1", "diffuse_job_seconds_bucket{le=\"+Inf\"} 1", "# TYPE diffuse_job_seconds histogram",
                         "# TYPE diffuse_steps_per_second gauge", "diffuse_http_responses_total{code=\"202\"} 1"] {
                XCTAssertTrue(text.contains(line), "\(line) in\n\(text)")
            }
            // Every sample line is NAME{labels} VALUE with a numeric value.
            for line in text.split(separator: "\n") where !line.hasPrefix("#") {
                let value = line.split(separator: " ").last.map(String.init) ?? ""
                XCTAssertNotNil(Double(value), String(line))
            }
        }
    }

    /// The OpenAPI document is valid JSON, OpenAPI 3, and names every route the router has.
    func testOpenAPIDocumentCoversEveryRoute() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self)])
        try await withRouter(server) { client in
            let response = try await client.send(.get, "/openapi.json")
            XCTAssertEqual(response.status, .ok)
            let document = response.jsonObject
            XCTAssertEqual((document["openapi"] as? String)?.hasPrefix("3."), true)
            let paths = document["paths"] as? [String: [String: Any]] ?? [:]
            let routes: [(String, String)] = [
                ("/", "get"), ("/healthz", "get"), ("/metrics", "get"), ("/openapi.json", "get"), ("/api/v1/models", "get"),
                ("/api/v1/jobs", "post"), ("/api/v1/jobs", "get"), ("/api/v1/jobs/{id}", "get"), ("/api/v1/jobs/{id}", "delete"),
                ("/api/v1/jobs/{id}/events", "get"), ("/api/v1/jobs/{id}/images/{index}", "get"),
                ("/sdapi/v1/txt2img", "post"), ("/sdapi/v1/img2img", "post"), ("/sdapi/v1/progress", "get"),
                ("/sdapi/v1/interrupt", "post"), ("/sdapi/v1/options", "get"), ("/sdapi/v1/options", "post"), ("/sdapi/v1/samplers", "get"), ("/sdapi/v1/sd-models", "get"),
                ("/v1/images/generations", "post"),
            ]
            for (path, method) in routes { XCTAssertNotNil(paths[path]?[method], "\(method) \(path)") }
            let documented = paths.flatMap { path, item in item.keys.filter { $0 != "parameters" }.map { (path, $0) } }
            XCTAssertEqual(documented.count, routes.count, "every documented route is a route")
            // Each documented GET without parameters answers (not 404).
            for (path, method) in routes where method == "get" && !path.contains("{") {
                let answer = try await client.send(.get, path)
                XCTAssertEqual(answer.status, .ok, path)
            }
        }
    }

    func testUnknownRoutesAreAnswered404WithAMessage() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self)])
        try await withRouter(server) { client in
            for uri in ["/nope", "/../../etc/passwd", "/api/v1/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd"] {
                let response = try await client.send(.get, uri)
                XCTAssertEqual(response.status, .notFound, uri)
                XCTAssertFalse(response.message.isEmpty)
                XCTAssertFalse(response.text.contains("root:"), "no file outside is served")
            }
        }
    }
}
