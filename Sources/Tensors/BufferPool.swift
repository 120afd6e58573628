import CSystem
import Foundation

/// Recycles large tensor buffers.
///
/// A training step allocates and frees the same activation sizes every step.
/// Handing them back to the system and asking again costs page faults (the
/// kernel zeroes every page) and lets glibc's heap fragment, so the process
/// grows step after step. The pool keeps freed blocks of 64 KiB and more, by
/// size rounded up to 4 KiB, and hands them out again; memory then stays flat
/// after the first step. When a size is missing, as much cached memory of other
/// sizes is freed as the new block takes, so the pool never adds to the peak
/// footprint by more than what the next step will reuse. It holds at most
/// `capacityBytes` of free blocks (`DIFFUSE_POOL_MB`, default 2048).
public final class BufferPool: @unchecked Sendable {
    public static let shared = BufferPool()

    /// Smallest block the pool keeps.
    static let minimumPooledBytes = 64 * 1024
    private static let granularity = 4096

    private var freeBlocks: [Int: [UnsafeMutableRawPointer]] = [:]
    private var freeBytes = 0
    private let lock = NSLock()
    /// Most bytes of free blocks kept.
    public var capacityBytes: Int

    init() {
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

    /// The size actually reserved for a request.
    @inline(__always)
    static func blockSize(for byteCount: Int) -> Int {
        byteCount < minimumPooledBytes ? byteCount : (byteCount + granularity - 1) / granularity * granularity
    }

    func allocate(byteCount: Int) -> UnsafeMutableRawPointer {
        let size = BufferPool.blockSize(for: byteCount)
        if size >= BufferPool.minimumPooledBytes {
            lock.lock()
            if var blocks = freeBlocks[size], let block = blocks.popLast() {
                freeBlocks[size] = blocks.isEmpty ? nil : blocks
                freeBytes -= size
                lock.unlock()
                return block
            }
            // A miss: give back at least as much cached memory of other sizes as
            // this block takes, so the footprint stays live memory plus one
            // step's worth of cache instead of growing with every new size.
            var evicted: [(UnsafeMutableRawPointer)] = []
            var evictedBytes = 0
            while evictedBytes < size, let (blockSize, blocks) = freeBlocks.first(where: { _ in true }) {
                var remaining = blocks
                while evictedBytes < size, let block = remaining.popLast() {
                    evicted.append(block)
                    evictedBytes += blockSize
                }
                freeBlocks[blockSize] = remaining.isEmpty ? nil : remaining
            }
            freeBytes -= evictedBytes
            lock.unlock()
            for block in evicted { block.deallocate() }
        }
        return UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
    }

    func release(_ block: UnsafeMutableRawPointer, byteCount: Int) {
        let size = BufferPool.blockSize(for: byteCount)
        if size >= BufferPool.minimumPooledBytes {
            lock.lock()
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
