import DiffuseServer
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The server on a real loopback socket: an events client that goes away cancels its job.
final class LiveServerTests: XCTestCase {
    /// A plain TCP client on 127.0.0.1 (blocking, with a receive timeout).
    final class RawClient {
        let descriptor: Int32

        init(port: Int) throws {
            descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard descriptor >= 0 else { throw POSIXError(.EIO) }
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard connected == 0 else { close(descriptor); throw POSIXError(.ECONNREFUSED) }
        }

        func send(_ text: String) {
            let bytes = Array(text.utf8)
            _ = bytes.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, 0) }
        }

        /// Reads until `marker` has arrived (or the timeout); returns what was read.
        func read(until marker: String) -> String {
            var received = ""
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !received.contains(marker) {
                let count = recv(descriptor, &buffer, buffer.count, 0)
                guard count > 0 else { break }
                received += String(decoding: buffer[0..<count], as: UTF8.self)
            }
            return received
        }

        func disconnect() { close(descriptor) }
    }

    func testAnEventsClientThatDisconnectsCancelsItsJob() async throws {
        var limits = ServerLimits()
        limits.maximumSteps = 1000
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self, steps: 1000, size: 32)], limits: limits)
        let app = Application(router: server.makeRouter(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            let port = try XCTUnwrap(client.port)
            let created = try await client.send(.post, "/api/v1/jobs", json: ["steps": 1000, "count": 8, "scheduler": "ddpm"])
            let id = try XCTUnwrap((created.jsonObject["job"] as? [String: Any])?["id"] as? String)
            let listener = try RawClient(port: port)
            listener.send("GET /api/v1/jobs/\(id)/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
            let received = listener.read(until: "event: step")
            XCTAssertTrue(received.hasPrefix("HTTP/1.1 200"), received)
            XCTAssertTrue(received.contains("content-type: text/event-stream") || received.contains("Content-Type: text/event-stream"), received)
            XCTAssertTrue(received.contains("event: step"), received)
            listener.disconnect()
            let job = try await client.waitForJob(id, timeout: 60)
            XCTAssertEqual(job["state"] as? String, "cancelled", "\(job)")
            XCTAssertEqual(job["error"] as? String, "the client disconnected")
            XCTAssertLessThan(job["step"] as? Int ?? 1000, 1000)
            let health = try await client.send(.get, "/healthz")
            XCTAssertEqual(health.status, .ok)
        }
        server.shutdown()
    }
}
