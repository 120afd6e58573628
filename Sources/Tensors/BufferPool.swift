import CDiffuseSystem
import Foundation

/// Recycles large tensor buffers.
///
/// A training step allocates and frees the same activation sizes every step.
/// Handing them back to the system and asking again costs page faults (the
/// kernel zeroes every page) and lets glibc's heap fragment, so the process
/// grows step after step. The pool keeps freed blocks of 64 KiB and more, by
/// size class (`blockSize(for:)`), and hands them out again; memory then stays
/// flat after the first step.
///
/// Live plus cached bytes never exceed the most bytes ever live at once (the
/// high-water mark) plus a slack (see below): a miss frees
/// cached blocks of other sizes only as far as it must to stay under that mark,
/// largest cached size first. So the pool raises the process's peak by at most
/// the slack (`trainingSlackBytes` once a graph is recorded, `inferenceSlackBytes`
/// before), yet keeps what the next step will ask for.
/// (The earlier rule freed as much cached memory as each miss took, so live plus
/// cached memory never grew past what it was when the cache first ran dry: a few
/// MB cached at the end of a course-UNet training step, 920 misses and 2.2 GB of
/// fresh, page-faulting memory per step; now about 160 misses and 0.8 GB.)
/// It holds at most `capacityBytes` of free blocks (`DIFFUSE_POOL_MB`, default 2048).
///
/// A forward pass and its backward pass ask for different sizes (activations, then gradients and
/// kernel scratch), so under that mark each pass's misses evicted the other pass's blocks: the
/// small text-to-image UNet's training step at batch 32 (Zen 3) missed 430 times and faulted
/// 270 MB of fresh pages per step, a third of its CPU time in the kernel. Two rules stop the churn:
/// in training, a miss takes the smallest cached block up to twice its size before it evicts
/// anything (`fitRatio`; the block keeps its own size class and counts at its full size), and a
/// training process may cache `trainingSlackBytes` above the mark (`DIFFUSE_POOL_TRAINING_SLACK_MB`,
/// default 64). Its `make bench` ratio went from 0.90 to 0.49 (Zen 3), its faults from 84,000 to a
/// few hundred per step.
public final class BufferPool: @unchecked Sendable {
    public static let shared = BufferPool()

    /// Smallest block the pool keeps.
    static let minimumPooledBytes = 64 * 1024
    private static let granularity = 4096

    private var freeBlocks: [Int: [UnsafeMutableRawPointer]] = [:]
    private var freeBytes = 0
    /// Bytes of pooled sizes handed out and not yet given back, and their most ever.
    private(set) var liveBytes = 0, peakLiveBytes = 0
    /// Bytes of pooled sizes handed out and not yet given back, each at its request's size class
    /// (a request served from a larger cached block counts at its own size here, at the block's
    /// in `liveBytes`): what the code asked for, independent of the cache's state.
    private(set) var requestedLiveBytes = 0
    /// The most `requestedLiveBytes` at once since `resetMeasuredPeak()` (for memory tests:
    /// tensors and `ScratchMemory` of 64 KiB and more, whatever blocks the cache served them from).
    private(set) var measuredPeakBytes = 0
    /// Starts a new `measuredPeakBytes` from the bytes requested and live now.
    func resetMeasuredPeak() {
        lock.lock(); defer { lock.unlock() }
        measuredPeakBytes = requestedLiveBytes
    }
    /// Requests of pooled sizes served from the cache, and those that were not.
    public private(set) var hits = 0, misses = 0
    /// Bytes of cached blocks freed to make room on a miss.
    public private(set) var evictedBytes = 0
    /// Requests of pooled sizes served from a larger cached block (see `fitRatio`).
    public private(set) var fits = 0
    /// The size class of each block handed out for a smaller request, by address.
    private var oversized: [UnsafeMutableRawPointer: Int] = [:]
    /// A miss takes a cached block of up to this many times its size class before evicting
    /// (1: only its own size class).
    let fitRatio: Int
    /// How far live plus cached bytes may exceed the high-water mark once a graph is recorded.
    let trainingSlackBytes: Int
    private let lock = NSLock()
    /// Most bytes of free blocks kept.
    public var capacityBytes: Int
    /// How far live plus cached bytes may exceed the high-water mark in a process that has not
    /// recorded a graph (inference, sampling). A forward pass without a graph holds little at
    /// once, so its high-water mark leaves almost no room for the cache: each course-UNet
    /// forward at batch 64 missed 74 times and replaced 234 MB of cached blocks by fresh,
    /// page-faulting ones (about a tenth of its time); with 128 MB of slack it misses none.
    /// Once a graph is recorded (training) the smaller `trainingSlackBytes` holds instead (this
    /// slack during training's own graph-free parts, the noise and the optimizer update, raised
    /// a step's peak by 120 MB).
    static let inferenceSlackBytes = 128 * 1024 * 1024
    /// Bytes of the slack already held by another cache of reused memory (`WeightWidening`'s
    /// block): the pool's own slack is what remains, so the two together stay within it.
    nonisolated(unsafe) static var slackHeldElsewhere = 0
    /// Set by the first recorded op (`Tensor.record`); from then on the slack is `trainingSlackBytes`
    /// and a miss may take a larger cached block.
    nonisolated(unsafe) static var graphRecorded = false

    /// A pool with the environment's capacity; `trainingSlackBytes` defaults to
    /// `DIFFUSE_POOL_TRAINING_SLACK_MB` (64 MB when unset).
    init(trainingSlackBytes: Int? = nil, fitRatio: Int = 2) {
        self.trainingSlackBytes = trainingSlackBytes
            ?? (ProcessInfo.processInfo.environment["DIFFUSE_POOL_TRAINING_SLACK_MB"].flatMap(Int.init) ?? 64) << 20
        self.fitRatio = Swift.max(1, fitRatio)
        #if os(Linux)
        // A fixed mmap threshold: kernel scratch buffers of 128 KiB and more are
        // mapped and unmapped, so memory freed by one step is returned to the
        // system instead of lingering in (and fragmenting) glibc's heaps, whose
        // threshold otherwise grows with every large free.
        mallopt(M_MMAP_THRESHOLD, 128 * 1024)
        #endif
        let megabytes = ProcessInfo.processInfo.environment["DIFFUSE_POOL_MB"].flatMap(Int.init) ?? 2048
        capacityBytes = Swift.max(0, megabytes) * 1024 * 1024
    }

    /// Size classes per doubling: a request is rounded up to the next multiple of 1/16 of its
    /// power of two (at least 4 KiB), so that requests of nearby sizes share cached blocks.
    static let classesPerOctave = 16

    /// The size actually reserved for a request: its size class. Rounding up costs no resident
    /// memory by itself (pages past what a user touches are never faulted in) and lets a
    /// forward pass, whose many sizes each appear once, find its blocks again: without it a
    /// course-UNet forward at batch 64 missed 74 times and replaced 234 MB of cached blocks
    /// by freshly faulted ones every call.
    @inline(__always)
    static func blockSize(for byteCount: Int) -> Int {
        guard byteCount >= minimumPooledBytes else { return byteCount }
        let octave = 1 << (Int.bitWidth - 1 - byteCount.leadingZeroBitCount)
        let step = Swift.max(granularity, octave / classesPerOctave)
        return (byteCount + step - 1) / step * step
    }

    func allocate(byteCount: Int) -> UnsafeMutableRawPointer {
        let size = BufferPool.blockSize(for: byteCount)
        if size >= BufferPool.minimumPooledBytes {
            lock.lock()
            requestedLiveBytes += size
            measuredPeakBytes = Swift.max(measuredPeakBytes, requestedLiveBytes)
            if let block = popCached(size: size) {
                countLive(size)
                hits += 1
                lock.unlock()
                return block
            }
            // The smallest cached block of up to `fitRatio` times the size: pages that are already
            // resident, where a fresh block would fault every page in.
            // Training only: a process without a graph has its inference slack instead, and the
            // blocks' unused tails raised the Stable Diffusion UNet's inference peak by 78 MB.
            if BufferPool.graphRecorded, let larger = freeBlocks.keys.filter({ $0 > size && $0 <= size * fitRatio }).min(),
               let block = popCached(size: larger) {
                countLive(larger)
                oversized[block] = larger
                fits += 1
                lock.unlock()
                return block
            }
            countLive(size)
            misses += 1
            // A miss: free cached blocks of other sizes, largest first, until live
            // plus cached memory is back under the high-water mark.
            var evicted: [UnsafeMutableRawPointer] = []
            let slack = BufferPool.graphRecorded ? trainingSlackBytes : Swift.max(0, BufferPool.inferenceSlackBytes - BufferPool.slackHeldElsewhere)
            var excess = liveBytes + freeBytes - peakLiveBytes - slack
            while excess > 0, let largest = freeBlocks.keys.max() {
                var remaining = freeBlocks[largest]!
                while excess > 0, let block = remaining.popLast() {
                    evicted.append(block)
                    excess -= largest
                    freeBytes -= largest
                    evictedBytes += largest
                }
                freeBlocks[largest] = remaining.isEmpty ? nil : remaining
            }
            lock.unlock()
            for block in evicted { block.deallocate() }
        }
        return UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
    }

    /// A cached block of exactly `size` bytes, taken out of the cache (call with the lock held).
    private func popCached(size: Int) -> UnsafeMutableRawPointer? {
        guard var blocks = freeBlocks[size], let block = blocks.popLast() else { return nil }
        freeBlocks[size] = blocks.isEmpty ? nil : blocks
        freeBytes -= size
        return block
    }

    /// Counts a block of `size` bytes as handed out (call with the lock held).
    private func countLive(_ size: Int) {
        liveBytes += size
        peakLiveBytes = Swift.max(peakLiveBytes, liveBytes)
    }

    func release(_ block: UnsafeMutableRawPointer, byteCount: Int) {
        var size = BufferPool.blockSize(for: byteCount)
        if size >= BufferPool.minimumPooledBytes {
            lock.lock()
            requestedLiveBytes -= size
            if let larger = oversized.removeValue(forKey: block) { size = larger }
            liveBytes -= size
            if freeBytes + size <= capacityBytes {
                freeBlocks[size, default: []].append(block)
                freeBytes += size
                lock.unlock()
                return
            }
            lock.unlock()
        }
        block.deallocate()
    }

    /// Bytes held in free blocks.
    public var cachedBytes: Int {
        lock.lock(); defer { lock.unlock() }
        return freeBytes
    }

    /// Returns every free block to the system.
    public func drain() {
        lock.lock()
        let blocks = freeBlocks
        freeBlocks = [:]
        freeBytes = 0
        lock.unlock()
        for (_, list) in blocks { for block in list { block.deallocate() } }
    }
}

/// Scratch memory for kernels (Winograd tiles, im2col columns, packed GEMM panels),
/// recycled through `BufferPool.shared` like tensor buffers.
///
/// A training step asks for the same scratch sizes every step; fresh blocks of
/// 128 KiB and more are mapped by the system each time, and every page of them
/// faults and is zeroed on first touch (about 5% of the course UNet's step).
/// A block's size sits in a 64-byte header before the floats, so `release`
/// needs only the pointer.
enum ScratchMemory {
    static let headerBytes = 64

    /// `count` floats, 64-byte aligned, zeroed when asked.
    static func floats(_ count: Int, zeroed: Bool = false) -> UnsafeMutablePointer<Float> {
        let capacity = Swift.max(count, 1)
        let byteCount = capacity * MemoryLayout<Float>.stride + headerBytes
        let block = BufferPool.shared.allocate(byteCount: byteCount)
        block.storeBytes(of: byteCount, as: Int.self)
        let pointer = (block + headerBytes).bindMemory(to: Float.self, capacity: capacity)
        if zeroed { pointer.initialize(repeating: 0, count: count) }
        return pointer
    }

    /// Gives back a block from `floats`.
    static func release(_ pointer: UnsafeMutablePointer<Float>) {
        let block = UnsafeMutableRawPointer(pointer) - headerBytes
        BufferPool.shared.release(block, byteCount: block.load(as: Int.self))
    }
}
