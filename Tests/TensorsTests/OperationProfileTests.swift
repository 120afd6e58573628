import Tensors
import XCTest

final class OperationProfileTests: XCTestCase {
    /// A recorded forward and backward pass shows up per op, with forward and backward counts.
    func testRecordsForwardAndBackwardPerOp() {
        OperationProfile.isEnabled = true
        OperationProfile.reset()
        defer { OperationProfile.isEnabled = false; OperationProfile.reset() }
        let weight = Tensor.ones([8, 8])
        weight.requiresGrad = true
        OperationProfile.mark()
        let loss = (Tensor.ones([4, 8]).matmul(weight).relu() * 2).sum()
        loss.backward()
        let report = OperationProfile.report()
        let matmulLine = report.split(separator: "\n").first { $0.hasPrefix("matmul ") }
        XCTAssertNotNil(matmulLine, report)
        XCTAssertEqual(matmulLine?.split(separator: " ").dropFirst().first, "1", report)
        XCTAssertTrue(report.contains("pointwise"), report)
        XCTAssertTrue(report.contains("sum"), report)
        XCTAssertTrue(report.split(separator: "\n").last?.hasPrefix("total") ?? false, report)
    }

    /// With `splitsByShape`, one op gets a row per output shape.
    func testSplitsRowsByShape() {
        OperationProfile.isEnabled = true
        OperationProfile.splitsByShape = true
        OperationProfile.reset()
        defer { OperationProfile.isEnabled = false; OperationProfile.splitsByShape = false; OperationProfile.reset() }
        let weight = Tensor.ones([8, 8])
        weight.requiresGrad = true
        OperationProfile.mark()
        let loss = Tensor.ones([4, 8]).matmul(weight).sum() + Tensor.ones([2, 8]).matmul(weight).sum()
        loss.backward()
        let lines = OperationProfile.report().split(separator: "\n")
        XCTAssertNotNil(lines.first { $0.hasPrefix("matmul 4x8 ") }, lines.joined(separator: "\n"))
        XCTAssertNotNil(lines.first { $0.hasPrefix("matmul 2x8 ") }, lines.joined(separator: "\n"))
    }
}
