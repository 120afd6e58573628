import Tensors
import XCTest

final class SmokeTests: XCTestCase {
    func testAddBroadcast() {
        let a = Tensor([1, 2, 3, 4, 5, 6], shape: [2, 3])
        let b = Tensor([10, 20, 30])
        XCTAssertEqual((a + b).toArray(), [11, 22, 33, 14, 25, 36])
    }
}
