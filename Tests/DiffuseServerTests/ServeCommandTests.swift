import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// `diffuse serve` as a process: it binds loopback, answers, and on SIGTERM cancels the running job
/// (its events client is told) and exits with status 0.
final class ServeCommandTests: XCTestCase {
    /// The `diffuse` executable next to the test bundle (`swift build --build-tests` builds it).
    private var executable: URL? {
        // The test runner (DiffusePackageTests.xctest on Linux) lives in the products folder.
        let runner = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let candidates = [runner.deletingLastPathComponent(), Bundle.main.bundleURL, Bundle.main.bundleURL.deletingLastPathComponent()]
        return candidates.map { $0.appendingPathComponent("diffuse") }.first { FileManager.default.isExecutableFile(atPath: $0.path) }
    }

    func testSIGTERMCancelsTheRunningJobAndExitsCleanly() throws {
        guard let executable else { throw XCTSkip("the diffuse executable is not built next to the tests") }
        let folder = try ServerFixtures.pixelFolder(self, steps: 1000, size: 32)
        let process = Process()
        process.executableURL = executable
        process.arguments = ["serve", folder, "--port", "0", "--max-steps", "1000"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        defer { if process.isRunning { process.terminate() } }

        // The port from Hummingbird's "listening on 127.0.0.1:PORT" line.
        var text = ""
        let deadline = Date().addingTimeInterval(60)
        var port: Int?
        while port == nil && Date() < deadline {
            let data = output.fileHandleForReading.availableData
            guard !data.isEmpty else { break }
            text += String(decoding: data, as: UTF8.self)
            if let range = text.range(of: "listening on 127.0.0.1:") {
                port = Int(text[range.upperBound...].prefix { $0.isNumber })
            }
        }
        let bound = try XCTUnwrap(port, text)
        XCTAssertTrue(text.contains("loaded "), text)

        let submit = try LiveServerTests.RawClient(port: bound)
        let body = #"{"steps": 1000, "count": 8, "scheduler": "ddpm"}"#
        submit.send("POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)")
        let answer = submit.read(until: "\"position\"")
        submit.disconnect()
        XCTAssertTrue(answer.hasPrefix("HTTP/1.1 202"), answer)
        let id = try XCTUnwrap(answer.range(of: #""id":""#).map { String(answer[$0.upperBound...].prefix { $0 != "\"" }) })

        let listener = try LiveServerTests.RawClient(port: bound)
        listener.send("GET /api/v1/jobs/\(id)/events HTTP/1.1\r\nHost: x\r\n\r\n")
        XCTAssertTrue(listener.read(until: "event: step").contains("event: step"))

        let signalled = Date()
        kill(process.processIdentifier, SIGTERM)
        let rest = listener.read(until: "event: cancelled")
        listener.disconnect()
        process.waitUntilExit()
        let seconds = Date().timeIntervalSince(signalled)
        XCTAssertTrue(rest.contains("event: cancelled"), rest)
        XCTAssertTrue(rest.contains("the server is shutting down"), rest)
        XCTAssertEqual(process.terminationReason, .exit)
        XCTAssertEqual(process.terminationStatus, 0)
        XCTAssertLessThan(seconds, 20, "exits soon after SIGTERM")
    }
}
