@testable import Tensors
import XCTest

/// The pool's rule: live plus cached bytes never exceed the most ever live, and the
/// cache fills up to that mark, so a repeated step reuses what the previous one freed.
final class BufferPoolTests: XCTestCase {
    private let kibibyte = 1024
    private var generator = RandomGenerator(seed: 3)
    private var graphRecorded = false

    // The rules below are training's (the mark; most tests set no slack and no larger-block fits
    // to test it alone); whether this process recorded a graph yet
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

    /// A pool without larger-block fits that has had two blocks of `size` live at once and
    /// cached both (a high-water mark of 2 × `size`).
    private func poolCachingTwoBlocks(of size: Int, trainingSlackBytes: Int = 0) -> BufferPool {
        let pool = BufferPool(trainingSlackBytes: trainingSlackBytes, fitRatio: 1)
        let a = pool.allocate(byteCount: size), b = pool.allocate(byteCount: size)
        pool.release(a, byteCount: size)
        pool.release(b, byteCount: size)
        return pool
    }

    func testTheCacheFillsUpToTheHighWaterMarkAndServesTheNextSteps() {
        let pool = BufferPool(trainingSlackBytes: 0, fitRatio: 1)
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
        let size = 256 * kibibyte
        let pool = poolCachingTwoBlocks(of: size, trainingSlackBytes: 0)
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
        let size = 256 * kibibyte
        let pool = poolCachingTwoBlocks(of: size, trainingSlackBytes: 0)
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

    func testAMissTakesTheSmallestCachedBlockOfUpToTwiceItsSize() {
        let pool = BufferPool(trainingSlackBytes: 0, fitRatio: 2)
        let (large, medium) = (256 * kibibyte, 192 * kibibyte)
        let a = pool.allocate(byteCount: large), b = pool.allocate(byteCount: medium)
        pool.release(a, byteCount: large)
        pool.release(b, byteCount: medium)
        // 160 KiB: both cached blocks are at most twice as large; the smaller one is taken, nothing is evicted.
        let c = pool.allocate(byteCount: 160 * kibibyte)
        XCTAssertEqual(c, b)
        XCTAssertEqual(pool.fits, 1)
        XCTAssertEqual(pool.misses, 2, "no miss beyond the two first blocks")
        XCTAssertEqual(pool.evictedBytes, 0)
        XCTAssertEqual(pool.liveBytes, medium, "the block counts at its own size")
        XCTAssertEqual(pool.requestedLiveBytes, 160 * kibibyte, "what memory tests measure counts the request")
        XCTAssertEqual(pool.measuredPeakBytes, large + medium, "the two first blocks were live together")
        // 100 KiB: 256 KiB is more than twice as large, so a miss.
        let d = pool.allocate(byteCount: 100 * kibibyte)
        XCTAssertEqual(pool.misses, 3)
        // Given back, the block returns to its own size class and serves that size again.
        pool.release(c, byteCount: 160 * kibibyte)
        XCTAssertEqual(pool.liveBytes, BufferPool.blockSize(for: 100 * kibibyte))
        let e = pool.allocate(byteCount: medium)
        XCTAssertEqual(e, b)
        XCTAssertEqual(pool.hits, 1)
        pool.release(d, byteCount: 100 * kibibyte)
        pool.release(e, byteCount: medium)
        XCTAssertEqual(pool.liveBytes, 0)
        XCTAssertEqual(pool.requestedLiveBytes, 0)
        pool.drain()
    }

    /// Memory tests read `measuredPeakBytes`: a request served from a larger cached block counts
    /// at its own size there, so what they measure does not depend on what earlier tests left cached.
    func testTheMeasuredPeakCountsRequestsNotTheBlocksServingThem() {
        let pool = BufferPool(trainingSlackBytes: 0, fitRatio: 2)
        let large = 256 * kibibyte, small = 136 * kibibyte
        let cached = pool.allocate(byteCount: large)
        pool.release(cached, byteCount: large)
        pool.resetMeasuredPeak()
        XCTAssertEqual(pool.measuredPeakBytes, 0)
        let block = pool.allocate(byteCount: small)
        XCTAssertEqual(block, cached, "served from the cached 256 KiB block")
        XCTAssertEqual(pool.fits, 1)
        XCTAssertEqual(pool.liveBytes, large)
        XCTAssertEqual(pool.measuredPeakBytes, small)
        pool.release(block, byteCount: small)
        XCTAssertEqual(pool.requestedLiveBytes, 0)
        XCTAssertEqual(pool.liveBytes, 0)
        pool.drain()
    }

    /// A step whose backward pass asks for sizes its forward pass did not (gradients and kernel
    /// scratch beside the activations): under the mark alone every step evicts one pass's blocks
    /// for the other's and misses again; taking a larger cached block ends the misses.
    func testForwardAndBackwardSizesStopEvictingEachOther() {
        func misses(fitRatio: Int) -> Int {
            let pool = BufferPool(trainingSlackBytes: 0, fitRatio: fitRatio)
            let forward = [400, 300, 200].map { $0 * kibibyte }, backward = [350, 250, 150].map { $0 * kibibyte }
            func step() {
                let activations = forward.map { (pool.allocate(byteCount: $0), $0) }
                for ((block, size), gradientSize) in zip(activations.reversed(), backward.reversed()) {
                    pool.release(block, byteCount: size)
                    let gradient = pool.allocate(byteCount: gradientSize)
                    pool.release(gradient, byteCount: gradientSize)
                    XCTAssertLessThanOrEqual(pool.liveBytes + pool.cachedBytes, pool.peakLiveBytes)
                }
            }
            for _ in 0..<3 { step() }
            let before = pool.misses
            for _ in 0..<3 { step() }
            defer { pool.drain() }
            return pool.misses - before
        }
        XCTAssertGreaterThan(misses(fitRatio: 1), 0, "the mark alone: the passes evict each other every step")
        XCTAssertEqual(misses(fitRatio: 2), 0, "with larger-block fits: no miss from the second step on")
    }

    func testATrainingPoolMayCacheItsSlackAboveTheMark() {
        let size = 256 * kibibyte
        let pool = poolCachingTwoBlocks(of: size, trainingSlackBytes: 256 * kibibyte)
        // 128 KiB live + 512 KiB cached is above the 512 KiB mark but within the slack: nothing goes.
        let c = pool.allocate(byteCount: 128 * kibibyte)
        XCTAssertEqual(pool.evictedBytes, 0)
        // 384 KiB more live would pass mark + slack: cached blocks go down to it.
        let d = pool.allocate(byteCount: 384 * kibibyte)
        XCTAssertGreaterThan(pool.evictedBytes, 0)
        XCTAssertLessThanOrEqual(pool.liveBytes + pool.cachedBytes, pool.peakLiveBytes + 256 * kibibyte)
        pool.release(c, byteCount: 128 * kibibyte)
        pool.release(d, byteCount: 384 * kibibyte)
        pool.drain()
    }

    func testScratchMemoryGoesBackToThePool() {
        let scratch = ScratchMemory.floats(100_000, zeroed: true)
        XCTAssertEqual(scratch[0], 0)
        XCTAssertEqual(scratch[99_999], 0)
        XCTAssertEqual(Int(bitPattern: scratch) % 64, 0)
        ScratchMemory.release(scratch)
        // The same size again is the same block, from the cache (the shared pool's cached
        // total is no measure: other tests leave blocks a miss may evict). In a process that
        // recorded a graph the first request may have taken a larger cached block (a fit), which
        // then serves the second one as a fit again.
        let served = BufferPool.shared.hits + BufferPool.shared.fits
        let again = ScratchMemory.floats(100_000)
        XCTAssertEqual(BufferPool.shared.hits + BufferPool.shared.fits, served + 1, "served from the cache")
        XCTAssertEqual(again, scratch)
        ScratchMemory.release(again)
    }
}
