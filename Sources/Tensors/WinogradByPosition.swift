import Foundation

/// The loop order of a Winograd pass.
enum WinogradSchedule: Equatable {
    /// Blocks of a few tiles, each transformed, multiplied at every position and
    /// transformed back while it is in cache, the blocks spread over the workers.
    /// Every block reads all the transformed weights, which suits narrow layers
    /// (their transformed weights stay in cache) on large images.
    case tileBlocks
    /// Chunks of many tiles: the chunk is transformed, then multiplied one position
    /// at a time (the positions spread over the workers), so every transformed weight
    /// is read once per chunk. Suits wide layers on small images, whose transformed
    /// weights (up to 19 MB at 512 → 256 channels) would be streamed from memory
    /// by every block of a few tiles.
    case positions
}

extension Winograd {
    /// Runs `body(group, reader)` on consecutive groups of the chunk's `count` tiles,
    /// claimed by the workers, each worker with a reader of its own.
    static func forEachTileGroup(_ count: Int, input: UnsafePointer<Float>, inputIsChannelsLast: Bool, plan: WinogradPlan,
                                 _ body: (_ group: Range<Int>, _ reader: inout WinogradReader) -> Void) {
        let size = Swift.max(4, Swift.min(16, count / (4 * Parallel.threadCount) / 4 * 4))
        Convolution.forEachBlock((count + size - 1) / size) { next in
            var reader = WinogradReader(input: input, channelsLast: inputIsChannelsLast, plan: plan)
            defer { reader.deallocate() }
            while let group = next() {
                body((group * size)..<Swift.min(count, (group + 1) * size), &reader)
            }
        }
    }

    /// Runs `body(position)` for every position of `plan`, claimed by the workers.
    static func forEachPosition(_ plan: WinogradPlan, _ body: (Int) -> Void) {
        Convolution.forEachBlock(plan.positions) { next in
            while let position = next() { body(position) }
        }
    }

    /// `convolve` with the `positions` schedule: `plan.blockTiles` is the chunk.
    static func convolveByPosition(input: UnsafePointer<Float>, inputIsChannelsLast: Bool, plan: WinogradPlan, transformedWeight: UnsafePointer<Float>,
                                   bias: UnsafePointer<Float>?, output: UnsafeMutablePointer<Float>) {
        let inPlane = plan.inPlane
        let transformed = ScratchMemory.floats(plan.positions * inPlane)
        let products = ScratchMemory.floats(plan.positions * plan.outPlane)
        defer { ScratchMemory.release(transformed); ScratchMemory.release(products) }
        var first = 0
        while first < plan.tileCount {
            let count = Swift.min(plan.blockTiles, plan.tileCount - first)
            let chunkFirst = first
            forEachTileGroup(count, input: input, inputIsChannelsLast: inputIsChannelsLast, plan: plan) { group, reader in
                transformInput(&reader, plan: plan, first: chunkFirst + group.lowerBound, count: group.count,
                               into: transformed + group.lowerBound * plan.inStride)
            }
            // The micro-kernels take rows in fours: zero the chunk's last few rows past its tiles.
            let rows = (count + 3) / 4 * 4
            if rows > count {
                for position in 0..<plan.positions {
                    (transformed + position * inPlane + count * plan.inStride).initialize(repeating: 0, count: (rows - count) * plan.inStride)
                }
            }
            forEachPosition(plan) { position in
                multiply(at: position, rows: rows, plan: plan, transformed: transformed, weight: transformedWeight, products: products)
            }
            forEachTileGroup(count, input: input, inputIsChannelsLast: true, plan: plan) { group, _ in
                transformOutput(products + group.lowerBound * plan.outStride, plan: plan, first: chunkFirst + group.lowerBound,
                                count: group.count, bias: bias, into: output)
            }
            first += count
        }
    }

    /// `weightGradient` with the `positions` schedule: `plan.blockTiles` is the chunk, and
    /// each position's sums accumulate in place (no per-worker partial sums).
    static func weightGradientByPosition(input: UnsafePointer<Float>, inputIsChannelsLast: Bool, gradient: UnsafePointer<Float>, plan: WinogradPlan) -> Tensor {
        // The first chunk writes the sums, so they need no zeroing (unless there are no tiles).
        let total = ScratchMemory.floats(plan.positions * plan.weightPlane, zeroed: plan.tileCount == 0)
        let transformed = ScratchMemory.floats(plan.positions * plan.inPlane)
        let upstream = ScratchMemory.floats(plan.positions * plan.outPlane)
        defer { ScratchMemory.release(total); ScratchMemory.release(transformed); ScratchMemory.release(upstream) }
        var first = 0
        while first < plan.tileCount {
            let count = Swift.min(plan.blockTiles, plan.tileCount - first)
            let chunkFirst = first
            forEachTileGroup(count, input: input, inputIsChannelsLast: inputIsChannelsLast, plan: plan) { group, reader in
                let tile = chunkFirst + group.lowerBound
                transformInput(&reader, plan: plan, first: tile, count: group.count, into: transformed + group.lowerBound * plan.inStride)
                transformGradient(gradient, plan: plan, first: tile, count: group.count, into: upstream + group.lowerBound * plan.outStride)
            }
            forEachPosition(plan) { position in
                accumulateWeightGradient(at: position, tiles: count, plan: plan, transformed: transformed, upstream: upstream, into: total,
                                         accumulating: chunkFirst > 0)
            }
            first += count
        }
        return weightFromTransformed([total], plan: plan)
    }
}
