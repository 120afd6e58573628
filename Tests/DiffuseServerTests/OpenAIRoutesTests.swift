import DiffuseServer
import Diffusion
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// OpenAI's `POST /v1/images/generations`.
final class OpenAIRoutesTests: XCTestCase {
    func testImagesGenerationsAnswersBase64AndURLs() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.stableDiffusionModel()])
        try await withRouter(server) { client in
            let response = try await client.send(.post, "/v1/images/generations", json: [
                "prompt": "a lighthouse", "n": 2, "size": "32x40", "response_format": "b64_json", "model": "tiny-sd",
            ])
            XCTAssertEqual(response.status, .ok, response.text)
            let data = response.jsonObject["data"] as? [[String: Any]] ?? []
            XCTAssertEqual(data.count, 2)
            let image = try PNG.decode(pngBytes(data.first?["b64_json"] as? String))
            XCTAssertEqual([image.width, image.height], [32, 40])
            XCTAssertNotNil(response.jsonObject["created"] as? Int)

            let url = try await client.send(.post, "/v1/images/generations", json: ["prompt": "a lighthouse", "response_format": "url", "size": "32x32"])
            XCTAssertEqual(url.status, .ok, url.text)
            let link = try XCTUnwrap((url.jsonObject["data"] as? [[String: Any]])?.first?["url"] as? String)
            XCTAssertTrue(link.hasPrefix("http://localhost/api/v1/jobs/"), link)
            let path = String(link.dropFirst("http://localhost".count))
            let file = try await client.send(.get, path)
            XCTAssertEqual(file.status, .ok)
            XCTAssertEqual(Array(Data(buffer: file.body).prefix(8)), pngSignature)
        }
    }

    func testImagesGenerationsBadInputIsAnswered400() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.stableDiffusionModel()])
        let cases: [(body: [String: Any], expected: String)] = [
            ([:], "prompt is required"),
            (["prompt": ""], "prompt is required"),
            (["prompt": "x", "size": "huge"], "size \"huge\""),
            (["prompt": "x", "size": "1024x1024x3"], "WIDTHxHEIGHT"),
            (["prompt": "x", "size": "99999x64"], "--max-width"),
            (["prompt": "x", "n": 0], "count 0"),
            (["prompt": "x", "n": 1000], "--max-count"),
            (["prompt": "x", "response_format": "gif"], "response_format"),
            (["prompt": "x", "model": "dall-e-3"], "unknown model"),
            (["prompt": ["x"]], "field \"prompt\""),
        ]
        try await withRouter(server) { client in
            for (body, expected) in cases {
                let response = try await client.send(.post, "/v1/images/generations", json: body)
                XCTAssertEqual(response.status, .badRequest, "\(body): \(response.text)")
                XCTAssertTrue(response.message.contains(expected), "\(expected): \(response.message)")
                XCTAssertEqual((response.jsonObject["error"] as? [String: Any])?["message"] as? String, response.message, "OpenAI's error shape")
            }
        }
    }
}
