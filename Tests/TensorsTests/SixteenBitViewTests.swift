import Foundation
@testable import Tensors
import XCTest

/// Views of 16-bit tensors stay 16-bit views of the same memory: a reshaped weight (a 1×1
/// convolution's kernel as a matrix) must not become a new float32 copy on every call, which
/// the bfloat16 path's weight caches (keyed by storage) then kept for good — SD 1.5's UNet grew
/// by 275 MB per call in bfloat16 mode until this held.
final class SixteenBitViewTests: XCTestCase {
    func testReshapingARowMajorSixteenBitTensorIsAView() {
        var generator = RandomGenerator(seed: 21)
        for dataType in [DataType.bfloat16, .float16] {
            let weight = Tensor.randn([8, 6, 1, 1], generator: &generator).converted(to: dataType)
            let matrix = weight.reshaped([8, 6])
            XCTAssertTrue(matrix.storage === weight.storage, "\(dataType): reshape copied")
            XCTAssertEqual(matrix.dataType, dataType)
            XCTAssertEqual(matrix.toArray(), weight.toArray(), "\(dataType): the view reads the same values")
        }
    }

    /// A strided (transposed) 16-bit tensor has no row-major view: reshaping it copies, in float32, with the same values.
    func testReshapingAStridedSixteenBitTensorCopies() {
        var generator = RandomGenerator(seed: 22)
        let weight = Tensor.randn([4, 6], generator: &generator).converted(to: .bfloat16)
        let transposed = weight.transposed(0, 1)
        let reshaped = transposed.reshaped([24])
        XCTAssertFalse(reshaped.storage === weight.storage)
        XCTAssertEqual(reshaped.toArray(), transposed.contiguous().toArray())
    }
}
