import Foundation
@testable import Tensors
import XCTest

/// The row-broadcast path of binary ops (a Linear bias, a per-sample channel vector over a
/// channels-last image) against the general strided loop, reached with a full-size copy of the vector.
final class RowBroadcastTests: XCTestCase {
    func testRowVectorsMatchTheGeneralLoop() {
        var generator = RandomGenerator(seed: 41)
        let cases: [(Tensor, Tensor)] = [
            (Tensor.randn([5, 7, 12], generator: &generator), Tensor.randn([12], generator: &generator)),
            (Tensor.randn([9, 3], generator: &generator), Tensor.randn([1, 3], generator: &generator)),
            (Tensor.randn([3, 12, 4, 5], generator: &generator).withLayout(.channelsLast), Tensor.randn([3, 12, 1, 1], generator: &generator)),
            (Tensor.randn([2, 16, 3, 3], generator: &generator).withLayout(.channelsLast), Tensor.randn([16, 1, 1], generator: &generator)),
        ]
        for (index, (left, right)) in cases.enumerated() {
            XCTAssertNotNil(Tensor.rowBroadcast(left, right, outputShape: left.shape, outputStrides: left.strides), "case \(index)")
            let full = right.expanded(left.shape).contiguousCopy()
            XCTAssertNil(Tensor.rowBroadcast(left, full, outputShape: left.shape, outputStrides: left.strides))
            let divisor = right.abs() + 1, fullDivisor = full.abs() + 1
            for (fast, general) in [(left + right, left + full), (left - right, left - full),
                                    (left * right, left * full), (left / divisor, left / fullDivisor)] {
                XCTAssertEqual(fast.shape, general.shape)
                XCTAssertEqual(fast.strides, left.strides, "the result keeps the left operand's layout")
                XCTAssertEqual(fast.toArray(), general.toArray(), "case \(index)")
            }
        }
    }
}

/// A channels-last gradient split by a channel concatenation's backward stays channels-last.
final class SliceCopyTests: XCTestCase {
    func testChannelsLastSlicesStayChannelsLast() {
        var generator = RandomGenerator(seed: 42)
        let gradient = Tensor.randn([2, 6, 3, 4], generator: &generator).withLayout(.channelsLast)
        let piece = gradient.sliceCopy(axis: 1, start: 2, length: 3)
        XCTAssertEqual(piece.layout, .channelsLast)
        XCTAssertEqual(piece.toArray(), gradient.narrowed(axis: 1, start: 2, length: 3).contiguousCopy().toArray())
        // Row-major stays row-major.
        let rowMajor = Tensor.randn([2, 6, 3, 4], generator: &generator)
        XCTAssertEqual(rowMajor.sliceCopy(axis: 1, start: 1, length: 2).layout, .contiguous)
    }
}
