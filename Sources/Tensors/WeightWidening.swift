import Foundation

/// Where a layer's 16-bit weight is widened to float32 for its float32 product: one block of
/// memory, kept and reused layer after layer, instead of a fresh buffer-pool block per layer.
///
/// A Stable Diffusion UNet with 16-bit weights widens 3.3 GB of weights per forward pass, in
/// some 700 sizes up to 118 MB. From the buffer pool each size is its own class: either the
/// pool caches them all (1.7 GB resident) or, held to its high-water mark, it evicts and
/// faults them in again on every call. Here the block grows to the largest weight and stays:
/// its pages are faulted once. A second weight wanted while the block is leased (a graph that
/// keeps its widened weight for the backward pass, two threads at once) gets ordinary memory.
/// The block counts against the buffer pool's inference slack (`BufferPool.slackHeldElsewhere`),
/// so the two caches together stay within it: Stable Diffusion 1.5's UNet with bfloat16
/// weights peaked at 2,589 MB resident with the pool alone, 2,101 MB with the block beside the
/// pool's full slack, and less with the shared slack (figures in Benchmarks/RESULTS.md).
enum WeightWidening {
    /// The block, and whether a storage over it is alive.
    private nonisolated(unsafe) static var block: AnonymousMapping?
    private nonisolated(unsafe) static var leased = false
    private static let lock = NSLock()

    /// `weight` (16-bit, row-major) widened to float32 in the block when it is free, else in a
    /// buffer-pool block (as `contiguousData`).
    static func widen(_ weight: Tensor) -> Tensor {
        let byteCount = weight.count * MemoryLayout<Float>.stride
        lock.lock()
        guard !leased else {
            lock.unlock()
            return weight.contiguousCopy()
        }
        if block == nil || block!.byteCount < byteCount {
            block = nil
            block = AnonymousMapping(byteCount: byteCount)
            BufferPool.slackHeldElsewhere = block?.byteCount ?? 0
        }
        guard let mapping = block else {
            lock.unlock()
            return weight.contiguousCopy()
        }
        leased = true
        lock.unlock()
        let lease = Lease(mapping)
        let result = Tensor(storage: Storage(borrowing: mapping.bytes, count: weight.count, dataType: .float32, owner: lease), shape: weight.shape)
        Tensor.copyElements(from: weight, into: result)
        return result
    }

    /// Holds the block for one storage; gives it back when that storage goes.
    final class Lease: ProcessOwnedMemory {
        let mapping: AnonymousMapping
        init(_ mapping: AnonymousMapping) { self.mapping = mapping }
        deinit {
            WeightWidening.lock.lock()
            WeightWidening.leased = false
            WeightWidening.lock.unlock()
        }
    }
}

extension Tensor {
    /// A layer's weight (or bias) as float32 row-major data for a float32 kernel: itself when it
    /// is, a 16-bit one widened in `WeightWidening`'s reused block (while a recorded graph keeps
    /// it, later layers widen into ordinary memory).
    func layerWeightData() -> Tensor {
        if dataType != .float32 && isContiguous { return WeightWidening.widen(self) }
        return contiguousData()
    }
}
