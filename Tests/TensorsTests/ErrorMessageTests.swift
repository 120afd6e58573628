import Foundation
import Tensors
import XCTest

/// Illegal arguments stop with a message naming the op and the shapes.
///
/// A `fatalError` ends the process, so each case runs in a child process: this
/// test binary is started again with one `ErrorTriggers` test selected and
/// `DIFFUSE_TRIGGER_ERRORS=1`, and its standard error is checked.
final class ErrorMessageTests: XCTestCase {
    private let expectations: [(test: String, fragments: [String])] = [
        ("testBroadcastMismatch", ["add", "[2, 3]", "[4]"]),
        ("testMatmulMisaligned", ["matmul", "[2, 3]", "[4, 5]"]),
        ("testReshapeCount", ["reshape", "[2, 3]", "[4, 2]"]),
        ("testSliceOutOfBounds", ["slice", "[2, 3]"]),
        ("testIndexSelectOutOfBounds", ["indexSelect", "7", "[2, 3]"]),
        ("testConvolutionChannels", ["conv2d", "[1, 3, 8, 8]", "[4, 2, 3, 3]"]),
        ("testGroupNormGroups", ["groupNorm", "[2, 6, 4, 4]"]),
        ("testAttentionShapes", ["scaledDotProductAttention", "[2, 5, 8]", "[2, 7, 6]"]),
        ("testLossShapes", ["mseLoss", "[2, 3]", "[3, 2]"]),
        ("testEmbeddingIndex", ["embedding", "9"]),
    ]

    func testIllegalArgumentsNameTheOpAndShapes() throws {
        let executable = URL(fileURLWithPath: CommandLine.arguments[0])
        for (test, fragments) in expectations {
            let process = Process()
            process.executableURL = executable
            process.arguments = ["TensorsTests.ErrorTriggers/\(test)"]
            process.environment = ProcessInfo.processInfo.environment.merging(["DIFFUSE_TRIGGER_ERRORS": "1"]) { $1 }
            let errors = Pipe()
            process.standardError = errors
            process.standardOutput = Pipe()
            try process.run()
            let output = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            XCTAssertNotEqual(process.terminationStatus, 0, "\(test) did not stop")
            for fragment in fragments {
                XCTAssertTrue(output.contains(fragment), "\(test): message does not contain \(fragment): \(output.suffix(400))")
            }
        }
    }
}

/// Each test here stops the process on purpose; they only run as children of
/// `ErrorMessageTests`.
final class ErrorTriggers: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipUnless(ProcessInfo.processInfo.environment["DIFFUSE_TRIGGER_ERRORS"] == "1", "run by ErrorMessageTests in a child process")
    }

    func testBroadcastMismatch() { _ = Tensor.zeros([2, 3]) + Tensor.zeros([4]) }
    func testMatmulMisaligned() { _ = Tensor.zeros([2, 3]).matmul(Tensor.zeros([4, 5])) }
    func testReshapeCount() { _ = Tensor.zeros([2, 3]).reshaped([4, 2]) }
    func testSliceOutOfBounds() { _ = Tensor.zeros([2, 3]).sliced(axis: 1, start: 1, end: 9) }
    func testIndexSelectOutOfBounds() { _ = Tensor.zeros([2, 3]).indexSelect(axis: 1, indices: [7]) }
    func testConvolutionChannels() { _ = Tensor.zeros([1, 3, 8, 8]).conv2d(weight: Tensor.zeros([4, 2, 3, 3])) }
    func testGroupNormGroups() { _ = Tensor.zeros([2, 6, 4, 4]).groupNorm(groupCount: 4) }
    func testAttentionShapes() {
        _ = Tensor.scaledDotProductAttention(query: Tensor.zeros([2, 5, 8]), key: Tensor.zeros([2, 7, 6]), value: Tensor.zeros([2, 7, 8]))
    }
    func testLossShapes() { _ = Tensor.mseLoss(Tensor.zeros([2, 3]), Tensor.zeros([3, 2])) }
    func testEmbeddingIndex() { _ = Tensor.zeros([4, 2]).embedding(indices: [9]) }
}
