import Foundation
import XCTest

extension XCTestCase {
    /// A new, empty folder `diffuse-<label>-<UUID>` in the system's temporary directory, removed when
    /// the test ends (the one helper every test target uses for files it writes).
    public func temporaryFolderURL(_ label: String) throws -> URL {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("diffuse-\(label)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: folder) }
        return folder
    }

    /// `temporaryFolderURL(_:)` as a path.
    public func temporaryFolderPath(_ label: String) throws -> String {
        try temporaryFolderURL(label).path
    }
}
