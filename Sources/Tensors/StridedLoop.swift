/// Walks a shape over several operands with their own strides, in the memory
/// order of the first operand (the output), merging dimensions that are
/// contiguous in every operand. The body gets one innermost run at a time:
/// the starting element offset of each operand and the run length; inner
/// strides are in `innerStrides`.
struct StridedLoop {
    private(set) var shape: [Int]
    private(set) var strides: [[Int]]

    /// `operandStrides[0]` must describe a dense output.
    init(shape fullShape: [Int], operandStrides: [[Int]]) {
        if fullShape.contains(0) {
            shape = [0]
            strides = operandStrides.map { _ in [0] }
            return
        }
        // Drop size-1 dimensions; order by the output's strides, largest first.
        var axes = (0..<fullShape.count).filter { fullShape[$0] != 1 }
        let reference = operandStrides[0]
        axes.sort { reference[$0] > reference[$1] }
        var mergedShape: [Int] = []
        var mergedStrides: [[Int]] = Array(repeating: [], count: operandStrides.count)
        for axis in axes {
            if let last = mergedShape.last {
                let canMerge = operandStrides.indices.allSatisfy { operand in
                    mergedStrides[operand].last! == operandStrides[operand][axis] * fullShape[axis]
                }
                if canMerge {
                    mergedShape[mergedShape.count - 1] = last * fullShape[axis]
                    for operand in operandStrides.indices {
                        mergedStrides[operand][mergedStrides[operand].count - 1] = operandStrides[operand][axis]
                    }
                    continue
                }
            }
            mergedShape.append(fullShape[axis])
            for operand in operandStrides.indices { mergedStrides[operand].append(operandStrides[operand][axis]) }
        }
        if mergedShape.isEmpty {
            mergedShape = [1]
            for operand in operandStrides.indices { mergedStrides[operand] = [0] }
        }
        shape = mergedShape
        strides = mergedStrides
    }

    var innerCount: Int { shape[shape.count - 1] }
    var innerStrides: [Int] { strides.map { $0[$0.count - 1] } }
    var runCount: Int { innerCount == 0 ? 0 : Shape.count(shape) / innerCount }

    /// Calls `body(offsets, runLength)` for each run in `runs`, with offsets
    /// relative to each operand's base.
    func forEachRun(in runs: Range<Int>, _ body: (UnsafeMutablePointer<Int>, Int) -> Void) {
        let operandCount = strides.count
        let outerRank = shape.count - 1
        withUnsafeTemporaryAllocation(of: Int.self, capacity: Swift.max(outerRank, 1) + operandCount) { scratch in
            let counter = scratch.baseAddress!
            let offsets = counter + Swift.max(outerRank, 1)
            // Decompose the first run index into a multi-index.
            var remainder = runs.lowerBound
            for axis in stride(from: outerRank - 1, through: 0, by: -1) {
                counter[axis] = remainder % shape[axis]
                remainder /= shape[axis]
            }
            for operand in 0..<operandCount {
                var position = 0
                for axis in 0..<outerRank { position += counter[axis] * strides[operand][axis] }
                offsets[operand] = position
            }
            for _ in runs {
                body(offsets, innerCount)
                // Advance the multi-index by one run.
                var axis = outerRank - 1
                while axis >= 0 {
                    counter[axis] += 1
                    for operand in 0..<operandCount { offsets[operand] += strides[operand][axis] }
                    if counter[axis] < shape[axis] { break }
                    for operand in 0..<operandCount { offsets[operand] -= strides[operand][axis] * shape[axis] }
                    counter[axis] = 0
                    axis -= 1
                }
            }
        }
    }

    /// Runs all runs, split over the worker threads when the work is large. Operands that are
    /// dense in the same layout merge into one run (a residual add, a gradient accumulation), and
    /// a few runs cannot be shared out evenly, so then each run is cut into pieces instead: a
    /// piece is a run of its own, starting `start · innerStride` further into every operand.
    func forEachRunInParallel(_ body: (UnsafeMutablePointer<Int>, Int) -> Void) {
        let total = Shape.count(shape)
        if total < StridedLoop.parallelElements {
            forEachRun(in: 0..<runCount, body)
            return
        }
        let pieces = StridedLoop.piecesPerRun(runCount: runCount, runLength: innerCount, threads: Parallel.threadCount)
        if pieces == 1 {
            let grain = Swift.max(1, 16384 / Swift.max(innerCount, 1))
            Parallel.forEach(runCount, grain: grain) { range in forEachRun(in: range, body) }
            return
        }
        let inner = innerStrides, operands = strides.count, length = innerCount
        Parallel.forEach(runCount * pieces) { tasks in
            withUnsafeTemporaryAllocation(of: Int.self, capacity: operands) { shifted in
                for task in tasks {
                    let (run, piece) = task.quotientAndRemainder(dividingBy: pieces)
                    let start = length * piece / pieces, end = length * (piece + 1) / pieces
                    forEachRun(in: run..<(run + 1)) { offsets, _ in
                        for operand in 0..<operands { shifted[operand] = offsets[operand] + start * inner[operand] }
                        body(shifted.baseAddress!, end - start)
                    }
                }
            }
        }
    }

    /// How many pieces `forEachRunInParallel` cuts each run into: 1 when there are enough runs to
    /// share out (four per thread), else enough for four tasks per thread, each at least 4,096 long.
    static func piecesPerRun(runCount: Int, runLength: Int, threads: Int) -> Int {
        guard runCount > 0, runCount < 4 * threads else { return 1 }
        return Swift.min((4 * threads + runCount - 1) / runCount, Swift.max(1, runLength / 4096))
    }

    /// Elements from which `forEachRunInParallel` uses the workers.
    static let parallelElements = 32768
}
