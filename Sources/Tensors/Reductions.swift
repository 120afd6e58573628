import Foundation

/// How a reduction combines values.
enum ReductionKind { case sum, maximum, minimum }

extension Tensor {
    /// The shape after reducing `axes` (sorted, normalised).
    static func reducedShape(_ shape: [Int], axes: [Int], keepDims: Bool) -> [Int] {
        if keepDims { return shape.enumerated().map { axes.contains($0.offset) ? 1 : $0.element } }
        return shape.enumerated().filter { !axes.contains($0.offset) }.map(\.element)
    }

    /// Reduces `axes` of this tensor with `kind`, no graph. Returns the
    /// keep-dims shaped result reshaped as asked.
    static func reduceKernel(_ input: Tensor, axes: [Int], keepDims: Bool, kind: ReductionKind) -> Tensor {
        let outputShape = reducedShape(input.shape, axes: axes, keepDims: keepDims)
        if axes.isEmpty { return input.contiguousCopy().reshapedView(outputShape) }
        var source = input.contiguousData()
        var outer = 1, reduced = 1, inner = 1
        let isBlock = axes.last! - axes.first! + 1 == axes.count
        if isBlock {
            for axis in 0..<axes.first! { outer *= input.shape[axis] }
            for axis in axes { reduced *= input.shape[axis] }
            for axis in (axes.last! + 1)..<input.rank { inner *= input.shape[axis] }
        } else {
            // Move the reduced axes last, then reduce rows.
            let kept = (0..<input.rank).filter { !axes.contains($0) }
            source = input.permutedView(kept + axes).contiguousCopy()
            for axis in kept { outer *= input.shape[axis] }
            for axis in axes { reduced *= input.shape[axis] }
        }
        let result = Tensor(uninitializedShape: outputShape)
        let (x, out) = (UnsafePointer(source.floatPointer), result.floatPointer)
        if reduced == 0 {
            result.floatPointer.update(repeating: kind == .sum ? 0 : (kind == .maximum ? -.infinity : .infinity), count: result.count)
            return result
        }
        if inner == 1 {
            Parallel.forEach(outer, grain: Swift.max(1, 16384 / reduced)) { range in
                for row in range { out[row] = reduceRow(x + row * reduced, reduced, kind) }
            }
        } else {
            let split = outer >= Parallel.threadCount || inner < 64
            let work = { (outerRange: Range<Int>, innerRange: Range<Int>) in
                for block in outerRange {
                    let destination = out + block * inner
                    let base = x + block * reduced * inner
                    for column in innerRange { destination[column] = base[column] }
                    for step in 1..<reduced {
                        let row = base + step * inner
                        switch kind {
                        case .sum: for column in innerRange { destination[column] += row[column] }
                        case .maximum: for column in innerRange { destination[column] = Swift.max(destination[column], row[column]) }
                        case .minimum: for column in innerRange { destination[column] = Swift.min(destination[column], row[column]) }
                        }
                    }
                }
            }
            if split {
                Parallel.forEach(outer, grain: Swift.max(1, 16384 / (reduced * inner))) { range in work(range, 0..<inner) }
            } else {
                Parallel.forEach(inner, grain: 64) { range in work(0..<outer, range) }
            }
        }
        return result
    }

    @inline(__always)
    static func reduceRow(_ row: UnsafePointer<Float>, _ count: Int, _ kind: ReductionKind) -> Float {
        switch kind {
        case .sum:
            var lanes = SIMD8<Float>(repeating: 0)
            var index = 0
            while index + 8 <= count {
                lanes += UnsafeRawPointer(row + index).loadUnaligned(as: SIMD8<Float>.self)
                index += 8
            }
            var total = lanes.sum()
            while index < count { total += row[index]; index += 1 }
            return total
        case .maximum:
            var best = row[0]
            for index in 1..<Swift.max(count, 1) where row[index] > best || row[index].isNaN { best = row[index] }
            return best
        case .minimum:
            var best = row[0]
            for index in 1..<Swift.max(count, 1) where row[index] < best || row[index].isNaN { best = row[index] }
            return best
        }
    }

    /// Sum over `axes` (all when nil).
    public func sum(axes: [Int]? = nil, keepDims: Bool = false) -> Tensor {
        let normalized = Shape.normalize(axes: axes, rank: rank, op: "sum")
        let result = Tensor.reduceKernel(self, axes: normalized, keepDims: keepDims, kind: .sum)
        return Tensor.record(result, .sum(inputShape: shape, axes: normalized, keepDims: keepDims), inputs: [self])
    }

    /// Sum over one axis.
    public func sum(axis: Int, keepDims: Bool = false) -> Tensor { sum(axes: [axis], keepDims: keepDims) }

    /// Mean over `axes` (all when nil).
    public func mean(axes: [Int]? = nil, keepDims: Bool = false) -> Tensor {
        let normalized = Shape.normalize(axes: axes, rank: rank, op: "mean")
        let reducedCount = normalized.reduce(1) { $0 * shape[$1] }
        let total = Tensor.reduceKernel(self, axes: normalized, keepDims: keepDims, kind: .sum)
        let scale = 1 / Float(reducedCount)
        let pointer = total.floatPointer
        for index in 0..<total.count { pointer[index] *= scale }
        return Tensor.record(total, .mean(inputShape: shape, axes: normalized, keepDims: keepDims), inputs: [self])
    }

    /// Mean over one axis.
    public func mean(axis: Int, keepDims: Bool = false) -> Tensor { mean(axes: [axis], keepDims: keepDims) }

    /// Variance over `axes` with Bessel's `correction` (PyTorch's default is 1).
    public func variance(axes: [Int]? = nil, correction: Int = 1, keepDims: Bool = false) -> Tensor {
        let normalized = Shape.normalize(axes: axes, rank: rank, op: "variance")
        let reducedCount = normalized.reduce(1) { $0 * shape[$1] }
        let result: Tensor = noGrad {
            let average = mean(axes: normalized, keepDims: true)
            let centered = Tensor.binaryKernel(.subtract, self, average)
            let squares = Tensor.binaryKernel(.multiply, centered, centered)
            return Tensor.reduceKernel(squares, axes: normalized, keepDims: keepDims, kind: .sum)
                .affine(scale: 1 / Float(Swift.max(reducedCount - correction, 0)), shift: 0)
        }
        return Tensor.record(result, .variance(input: detach(), axes: normalized, keepDims: keepDims, correction: correction), inputs: [self])
    }

    /// Largest value over `axes` (all when nil). The gradient is shared equally among ties.
    public func max(axes: [Int]? = nil, keepDims: Bool = false) -> Tensor { extremum(axes: axes, keepDims: keepDims, kind: .maximum) }

    /// Smallest value over `axes` (all when nil).
    public func min(axes: [Int]? = nil, keepDims: Bool = false) -> Tensor { extremum(axes: axes, keepDims: keepDims, kind: .minimum) }

    public func max(axis: Int, keepDims: Bool = false) -> Tensor { max(axes: [axis], keepDims: keepDims) }
    public func min(axis: Int, keepDims: Bool = false) -> Tensor { min(axes: [axis], keepDims: keepDims) }

    private func extremum(axes: [Int]?, keepDims: Bool, kind: ReductionKind) -> Tensor {
        let normalized = Shape.normalize(axes: axes, rank: rank, op: kind == .maximum ? "max" : "min")
        if normalized.contains(where: { shape[$0] == 0 }) { fatalError("\(kind == .maximum ? "max" : "min"): cannot reduce an empty dimension of shape \(shape)") }
        let result = Tensor.reduceKernel(self, axes: normalized, keepDims: keepDims, kind: kind)
        let kept = Tensor.reduceKernel(self, axes: normalized, keepDims: true, kind: kind)
        return Tensor.record(result, .extremum(input: detach(), output: kept, axes: normalized, keepDims: keepDims), inputs: [self])
    }

    /// Index of the largest value along `axis` (first on ties), as floats; with
    /// `axis` nil, over the flattened tensor.
    public func argmax(axis: Int? = nil, keepDims: Bool = false) -> Tensor {
        guard let axis else {
            let values = toArray()
            guard !values.isEmpty else { fatalError("argmax: empty tensor of shape \(shape)") }
            var best = 0
            for index in values.indices where values[index] > values[best] { best = index }
            return Tensor([Float(best)], shape: keepDims ? Array(repeating: 1, count: rank) : [])
        }
        let dimension = Shape.normalize(axis: axis, rank: rank, op: "argmax")
        let moved = permutedView((0..<rank).filter { $0 != dimension } + [dimension]).contiguousData()
        let length = shape[dimension]
        guard length > 0 else { fatalError("argmax: empty dimension \(dimension) of shape \(shape)") }
        let rows = count / length
        let result = Tensor(uninitializedShape: Tensor.reducedShape(shape, axes: [dimension], keepDims: keepDims))
        let (x, out) = (moved.floatPointer, result.floatPointer)
        for row in 0..<rows {
            let base = x + row * length
            var best = 0
            for index in 1..<length where base[index] > base[best] { best = index }
            out[row] = Float(best)
        }
        return result
    }

    /// Sums a broadcast gradient back down to `target` (the inverse of broadcasting).
    func summed(toShape target: [Int]) -> Tensor {
        if shape == target { return self }
        let extra = rank - target.count
        var axes = Array(0..<extra)
        for axis in 0..<target.count where target[axis] == 1 && shape[axis + extra] != 1 { axes.append(axis + extra) }
        let reduced = Tensor.reduceKernel(self, axes: axes, keepDims: true, kind: .sum)
        return reduced.reshapedView(target)
    }
}
