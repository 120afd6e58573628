import Diffusion
import Foundation
import XCTest

final class IDXFileTests: XCTestCase {
    private func write(_ bytes: [UInt8]) -> String {
        let path = NSTemporaryDirectory() + "idx-\(UUID().uuidString)"
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func testReadsAValidFile() throws {
        let path = write([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
        let file = try IDXFile(path: path)
        XCTAssertEqual(file.dimensions, [2, 3])
        XCTAssertEqual(file.bytes, [1, 2, 3, 4, 5, 6])
    }

    func testRejectsMalformedFiles() {
        let cases: [[UInt8]] = [
            [],
            [1, 0, 8, 1, 0, 0, 0, 1, 9],            // bad magic
            [0, 0, 0x0D, 1, 0, 0, 0, 1, 9, 9, 9, 9], // float data
            [0, 0, 8, 2, 0, 0, 0, 2],               // truncated header
            [0, 0, 8, 1, 0, 0, 0, 5, 1, 2],         // truncated data
        ]
        for bytes in cases {
            XCTAssertThrowsError(try IDXFile(path: write(bytes)), "\(bytes)")
        }
        XCTAssertThrowsError(try IDXFile(path: "/nonexistent/file.gz"))
    }

    func testFashionMNISTFromTheDebianPackage() throws {
        try XCTSkipUnless(FileManager.default.fileExists(atPath: FashionMNIST.directory), "dataset-fashion-mnist is not installed")
        let data = try FashionMNIST.load(training: false, limit: 100)
        XCTAssertEqual(data.images.shape, [100, 1, 28, 28])
        XCTAssertEqual(data.labels.count, 100)
        // The first test label of Fashion-MNIST is 9 (ankle boot), the second 2 (pullover).
        XCTAssertEqual(Array(data.labels.prefix(2)), [9, 2])
        let values = data.images.toArray()
        XCTAssertEqual(values.min(), -1)
        XCTAssertLessThanOrEqual(values.max()!, 1)
    }
}
