@testable import Tensors
import XCTest

/// The pool's rule: live plus cached bytes never exceed the most ever live, and the
/// cache fills up to that mark, so a repeated step reuses what the previous one freed.
final class BufferPoolTests: XCTestCase {
    private let kibibyte = 1024
    private var generator = RandomGenerator(seed: 3)
    private var graphRecorded = false

    // The rules below are training's (no slack); whether this process recorded a graph yet
    // depends on which tests ran before.
    override func setUp() {
        graphRecorded = BufferPool.graphRecorded
        BufferPool.graphRecorded = true
    }

    override func tearDown() { BufferPool.graphRecorded = graphRecorded }

    /// One "training step": activations allocated, then gradients allocated while the
    /// activations are freed (a smaller version of what autograd does).
    private func step(_ pool: BufferPool) {
        let sizes = [300, 200, 100].map { $0 * kibibyte }
        var activations = sizes.map { (pool.allocate(byteCount: $0), $0) }
        var gradients: [(UnsafeMutableRawPointer, Int)] = []
        while let (block, size) = activations.popLast() {
            gradients.append((pool.allocate(byteCount: size), size))
            pool.release(block, byteCount: size)
            if gradients.count == 2 {
                let (first, firstSize) = gradients.removeFirst()
                pool.release(first, byteCount: firstSize)
            }
            XCTAssertLessThanOrEqual(pool.liveBytes + pool.cachedBytes, pool.peakLiveBytes)
        }
        for (block, size) in gradients { pool.release(block, byteCount: size) }
        XCTAssertEqual(pool.liveBytes, 0)
    }

    func testTheCacheFillsUpToTheHighWaterMarkAndServesTheNextSteps() {
        let pool = BufferPool()
        step(pool)
        // Everything freed is kept, up to the most ever live (the earlier rule kept the
        // cache at whatever it held when it first ran dry).
        XCTAssertEqual(pool.cachedBytes, pool.peakLiveBytes)
        let first = pool.misses
        step(pool)
        let second = pool.misses - first
        step(pool)
        let third = pool.misses - first - second
        XCTAssertLessThan(second, first, "the second step reuses blocks of the first")
        XCTAssertEqual(third, second, "from the second step on the pool is in a steady state")
        XCTAssertEqual(pool.cachedBytes, pool.peakLiveBytes)
        pool.drain()
    }

    func testAMissFreesCachedBlocksOnlyDownToTheHighWaterMark() {
        let pool = BufferPool()
        let size = 256 * kibibyte
        let a = pool.allocate(byteCount: size), b = pool.allocate(byteCount: size)
        pool.release(a, byteCount: size)
        pool.release(b, byteCount: size)
        XCTAssertEqual(pool.peakLiveBytes, 2 * size)
        XCTAssertEqual(pool.cachedBytes, 2 * size)
        // A new size: 128 KiB live + 512 KiB cached would pass the 512 KiB mark, so one cached block goes.
        let c = pool.allocate(byteCount: 128 * kibibyte)
        XCTAssertEqual(pool.evictedBytes, size)
        XCTAssertEqual(pool.cachedBytes, size)
        // The other is handed out again.
        let d = pool.allocate(byteCount: size)
        XCTAssertEqual(pool.hits, 1)
        XCTAssertEqual(pool.cachedBytes, 0)
        pool.release(c, byteCount: 128 * kibibyte)
        pool.release(d, byteCount: size)
        XCTAssertEqual(pool.liveBytes, 0)
        // Below the mark a miss frees nothing: 256 KiB cached + 64 KiB live is under 512 KiB.
        pool.drain()
        let e = pool.allocate(byteCount: size)
        pool.release(e, byteCount: size)
        let f = pool.allocate(byteCount: 64 * kibibyte)
        XCTAssertEqual(pool.evictedBytes, size)
        XCTAssertEqual(pool.cachedBytes, size)
        pool.release(f, byteCount: 64 * kibibyte)
        pool.drain()
    }

    /// Until a graph is recorded a miss may leave live plus cached bytes up to
    /// `inferenceSlackBytes` above the mark (a forward pass without a graph would otherwise
    /// evict its own cache every call); after, the next miss evicts back under the mark.
    func testBeforeAGraphIsRecordedTheCacheMayExceedTheMarkByTheSlack() {
        BufferPool.graphRecorded = false
        let pool = BufferPool()
        let size = 256 * kibibyte
        let a = pool.allocate(byteCount: size), b = pool.allocate(byteCount: size)
        pool.release(a, byteCount: size)
        pool.release(b, byteCount: size)
        // 128 KiB live + 512 KiB cached passes the 512 KiB mark, but not mark + slack: nothing goes.
        let c = pool.allocate(byteCount: 128 * kibibyte)
        XCTAssertEqual(pool.evictedBytes, 0)
        XCTAssertEqual(pool.cachedBytes, 2 * size)
        pool.release(c, byteCount: 128 * kibibyte)
        // A recorded op ends the slack: the next miss evicts down to the mark.
        let x = Tensor.randn([4], generator: &generator)
        x.requiresGrad = true
        _ = x * 2
        XCTAssertTrue(BufferPool.graphRecorded)
        let d = pool.allocate(byteCount: 192 * kibibyte)
        XCTAssertGreaterThan(pool.evictedBytes, 0)
        XCTAssertLessThanOrEqual(pool.liveBytes + pool.cachedBytes, pool.peakLiveBytes)
        pool.release(d, byteCount: 192 * kibibyte)
        pool.drain()
    }

    func testScratchMemoryGoesBackToThePool() {
        let scratch = ScratchMemory.floats(100_000, zeroed: true)
        XCTAssertEqual(scratch[0], 0)
        XCTAssertEqual(scratch[99_999], 0)
        XCTAssertEqual(Int(bitPattern: scratch) % 64, 0)
        ScratchMemory.release(scratch)
        // The same size again is the same block, from the cache (the shared pool's cached
        // total is no measure: other tests leave blocks a miss may evict).
        let hits = BufferPool.shared.hits
        let again = ScratchMemory.floats(100_000)
        XCTAssertEqual(BufferPool.shared.hits, hits + 1)
        XCTAssertEqual(again, scratch)
        ScratchMemory.release(again)
    }
}
