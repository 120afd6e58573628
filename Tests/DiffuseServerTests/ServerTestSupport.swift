import TestSupport
import DiffuseServer
import Diffusion
import Foundation
import Hummingbird
import HummingbirdTesting
import NN
import XCTest

/// Tiny models and helpers for the router tests.
enum ServerFixtures {
    /// A tiny 8×8 RGB DDIM pipeline saved in a folder (class-conditional with `classNames`), as `diffuse train` writes one.
    /// `steps`: the training timesteps of its scheduler (the most inference steps).
    /// `size`: its images' side (32 for jobs that must run for a while).
    static func pixelFolder(_ test: XCTestCase, name: String = "tiny-pixel", classNames: [String]? = nil, steps: Int = 100,
                            size: Int = 8) throws -> String {
        let folder = try test.temporaryFolderPath("server") + "/" + name
        let configuration = try ModelPresets.resolve(.preset("tiny"), imageSize: size, channels: 3, classCount: classNames?.count)
        Initialization.seed(21)
        let scheduler = try DDIMScheduler(configuration: SchedulerConfiguration(values: ["num_train_timesteps": .int(steps)]))
        try DDPMPipeline(unet: try UNet2DModel(configuration: configuration), scheduler: scheduler)
            .save(folder: URL(fileURLWithPath: folder))
        if let classNames {
            let data = try JSONEncoder().encode(PipelineClasses(names: classNames))
            try data.write(to: URL(fileURLWithPath: folder + "/" + PipelineClasses.fileName))
        }
        return folder
    }

    static func pixelModel(_ test: XCTestCase, name: String = "tiny-pixel", classNames: [String]? = nil, steps: Int = 100,
                           size: Int = 8) throws -> ServedModel {
        try ServedModel.load(folder: try pixelFolder(test, name: name, classNames: classNames, steps: steps, size: size))
    }

    /// The fixtures folder of the repository.
    static var fixtures: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures").path
    }

    /// The tiny Stable Diffusion pipeline of `Tests/Fixtures/sd-pipeline/tiny` (64×64 images).
    static func stableDiffusionModel() throws -> ServedModel {
        try ServedModel.load(folder: fixtures + "/sd-pipeline/tiny", name: "tiny-sd")
    }

    static var initImageBase64: String {
        get throws { try Data(contentsOf: URL(fileURLWithPath: fixtures + "/sd-pipeline/init.png")).base64EncodedString() }
    }
}

extension XCTestCase {
    /// Runs `test` against the server's router (HummingbirdTesting's router framework), then stops the workers.
    func withRouter(_ server: DiffuseServer, _ test: @escaping @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        let app = Application(router: server.makeRouter())
        do {
            try await app.test(.router) { client in try await test(client) }
        } catch {
            server.shutdown()
            throw error
        }
        server.shutdown()
    }
}

extension TestClientProtocol {
    /// Sends a JSON body.
    @discardableResult
    func send(_ method: HTTPRequest.Method, _ uri: String, json: Any? = nil, raw: String? = nil, headers: HTTPFields = [:]) async throws -> TestResponse {
        var body: ByteBuffer?
        if let json { body = ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: json, options: [.fragmentsAllowed])) }
        if let raw { body = ByteBuffer(string: raw) }
        var fields = headers
        if body != nil { fields[.contentType] = "application/json" }
        return try await execute(uri: uri, method: method, headers: fields, body: body)
    }

    /// Polls a job until it has finished.
    func waitForJob(_ id: String, timeout: Double = 120) async throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let job = try await send(.get, "/api/v1/jobs/\(id)").jsonObject
            if let state = job["state"] as? String, ["succeeded", "failed", "cancelled"].contains(state) { return job }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        throw JobTimeout(id: id)
    }
}

extension TestResponse {
    var text: String { String(buffer: body) }

    var jsonObject: [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
    }

    var jsonArray: [[String: Any]] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [[String: Any]] ?? []
    }

    /// The error message of an error response.
    var message: String { jsonObject["detail"] as? String ?? "" }
}

/// PNG bytes of a base64 string.
func pngBytes(_ base64: String?) -> [UInt8] {
    [UInt8](Data(base64Encoded: base64 ?? "") ?? Data())
}

let pngSignature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

struct JobTimeout: Error { let id: String }

extension ServerFixtures {
    /// A valid 8×8 PNG, base64.
    static var tinyPNG: String {
        let image = PixelImage(width: 8, height: 8, channels: 3, samples: [UInt8](repeating: 128, count: 192))
        return Data((try? PNG.encode(image)) ?? []).base64EncodedString()
    }
}
