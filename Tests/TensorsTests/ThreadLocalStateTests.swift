import Foundation
@testable import Tensors
import XCTest

/// The per-thread state every operation reads: a `ThreadLocalCount` is per thread, and `noGrad`
/// (built on one) nests.
final class ThreadLocalStateTests: XCTestCase {
    func testCountsArePerThreadAndStartAtZero() {
        let count = ThreadLocalCount()
        XCTAssertEqual(count.value, 0)
        count.value = 3
        var seenElsewhere = -1
        let thread = Thread { seenElsewhere = count.value; count.value = 7 }
        let done = DispatchSemaphore(value: 0)
        let waiter = Thread { while !thread.isFinished { usleep(100) }; done.signal() }
        thread.start(); waiter.start()
        done.wait()
        XCTAssertEqual(seenElsewhere, 0)
        XCTAssertEqual(count.value, 3, "another thread's value leaked into this one")
        count.value = 0
    }

    func testNoGradNestsAndRecordingRestoresIt() {
        XCTAssertTrue(GradientMode.isEnabled)
        noGrad {
            XCTAssertFalse(GradientMode.isEnabled)
            noGrad { XCTAssertFalse(GradientMode.isEnabled) }
            XCTAssertFalse(GradientMode.isEnabled, "the inner scope's end must not re-enable the outer one")
            GradientMode.recording { XCTAssertTrue(GradientMode.isEnabled) }
            XCTAssertFalse(GradientMode.isEnabled)
        }
        XCTAssertTrue(GradientMode.isEnabled)
    }
}
