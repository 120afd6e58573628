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

    /// Runs all runs, split over the worker threads when the work is large.
    func forEachRunInParallel(_ body: (UnsafeMutablePointer<Int>, Int) -> Void) {
        let total = Shape.count(shape)
        let grain = Swift.max(1, 16384 / Swift.max(innerCount, 1))
        if total < 32768 {
            forEachRun(in: 0..<runCount, body)
        } else {
            Parallel.forEach(runCount, grain: grain) { range in forEachRun(in: range, body) }
        }
    }
}
