import Foundation

/// Binary elementwise functions with broadcasting.
enum BinaryFunction: String {
    case add, subtract, multiply, divide, maximum, minimum

    @inline(__always)
    func apply(_ lhs: Float, _ rhs: Float) -> Float {
        switch self {
        case .add: return lhs + rhs
        case .subtract: return lhs - rhs
        case .multiply: return lhs * rhs
        case .divide: return lhs / rhs
        case .maximum: return Swift.max(lhs, rhs)
        case .minimum: return Swift.min(lhs, rhs)
        }
    }
}

protocol BinaryFunctor { static func apply(_ lhs: Float, _ rhs: Float) -> Float }
enum AddFunctor: BinaryFunctor { @inline(__always) static func apply(_ a: Float, _ b: Float) -> Float { a + b } }
enum SubtractFunctor: BinaryFunctor { @inline(__always) static func apply(_ a: Float, _ b: Float) -> Float { a - b } }
enum MultiplyFunctor: BinaryFunctor { @inline(__always) static func apply(_ a: Float, _ b: Float) -> Float { a * b } }
enum DivideFunctor: BinaryFunctor { @inline(__always) static func apply(_ a: Float, _ b: Float) -> Float { a / b } }
enum MaximumFunctor: BinaryFunctor { @inline(__always) static func apply(_ a: Float, _ b: Float) -> Float { Swift.max(a, b) } }
enum MinimumFunctor: BinaryFunctor { @inline(__always) static func apply(_ a: Float, _ b: Float) -> Float { Swift.min(a, b) } }

@inline(__always)
private func binaryRun<F: BinaryFunctor>(_: F.Type, _ out: UnsafeMutablePointer<Float>, _ lhs: UnsafePointer<Float>, _ lhsStride: Int, _ rhs: UnsafePointer<Float>, _ rhsStride: Int, _ count: Int) {
    if lhsStride == 1 && rhsStride == 1 {
        for index in 0..<count { out[index] = F.apply(lhs[index], rhs[index]) }
    } else if lhsStride == 1 && rhsStride == 0 {
        let value = rhs[0]
        for index in 0..<count { out[index] = F.apply(lhs[index], value) }
    } else if lhsStride == 0 && rhsStride == 1 {
        let value = lhs[0]
        for index in 0..<count { out[index] = F.apply(value, rhs[index]) }
    } else {
        for index in 0..<count { out[index] = F.apply(lhs[index * lhsStride], rhs[index * rhsStride]) }
    }
}

/// One run of `function` (strides 0 or 1 take the vectorisable loops), dispatched to its functor.
@inline(__always)
private func binaryRun(_ function: BinaryFunction, _ out: UnsafeMutablePointer<Float>, _ lhs: UnsafePointer<Float>, _ lhsStride: Int,
                       _ rhs: UnsafePointer<Float>, _ rhsStride: Int, _ count: Int) {
    switch function {
    case .add: binaryRun(AddFunctor.self, out, lhs, lhsStride, rhs, rhsStride, count)
    case .subtract: binaryRun(SubtractFunctor.self, out, lhs, lhsStride, rhs, rhsStride, count)
    case .multiply: binaryRun(MultiplyFunctor.self, out, lhs, lhsStride, rhs, rhsStride, count)
    case .divide: binaryRun(DivideFunctor.self, out, lhs, lhsStride, rhs, rhsStride, count)
    case .maximum: binaryRun(MaximumFunctor.self, out, lhs, lhsStride, rhs, rhsStride, count)
    case .minimum: binaryRun(MinimumFunctor.self, out, lhs, lhsStride, rhs, rhsStride, count)
    }
}

extension Tensor {
    /// Applies a binary function with broadcasting, no graph.
    static func binaryKernel(_ function: BinaryFunction, _ lhs: Tensor, _ rhs: Tensor) -> Tensor {
        let outputShape = Shape.broadcast(lhs.shape, rhs.shape, op: function.rawValue)
        let left = lhs.dataType == .float32 ? lhs : lhs.contiguousCopy()
        let right = rhs.dataType == .float32 ? rhs : rhs.contiguousCopy()
        // Keep the layout of a full-size dense operand (channels-last stays channels-last).
        let outputStrides: [Int]
        if left.shape == outputShape && left.isDense { outputStrides = left.strides }
        else if right.shape == outputShape && right.isDense { outputStrides = right.strides }
        else { outputStrides = Shape.contiguousStrides(outputShape) }
        let result = Tensor(uninitializedShape: outputShape, strides: outputStrides)
        if let rows = rowBroadcast(left, right, outputShape: outputShape, outputStrides: outputStrides) {
            rowBroadcastKernel(function, result.floatPointer, left.floatPointer, right.floatPointer, rows)
            return result
        }
        let loop = StridedLoop(shape: outputShape, operandStrides: [
            outputStrides,
            Shape.broadcastStrides(shape: left.shape, strides: left.strides, to: outputShape),
            Shape.broadcastStrides(shape: right.shape, strides: right.strides, to: outputShape),
        ])
        let inner = loop.innerStrides
        let (lhsStride, rhsStride) = (inner[1], inner[2])
        let output = result.floatPointer
        let lhsBase = UnsafePointer(left.floatPointer)
        let rhsBase = UnsafePointer(right.floatPointer)
        loop.forEachRunInParallel { offsets, count in
            let out = output + offsets[0]
            let a = lhsBase + offsets[1]
            let b = rhsBase + offsets[2]
            binaryRun(function, out, a, lhsStride, b, rhsStride, count)
        }
        return result
    }

    /// A full-size dense `left` combined with a `right` that is one vector per memory row: the
    /// bias of a Linear layer (`[N, C] + [C]`, row-major) or a per-sample channel vector over a
    /// channels-last image (`[B, C, H, W] + [B, C, 1, 1]`, the time embedding of a ResNet block).
    /// The general strided loop pays its bookkeeping per run of C values; these rows need none.
    struct RowBroadcast {
        /// Memory rows of `width` values; rows `g·rowsPerGroup ..< (g + 1)·rowsPerGroup` use the
        /// vector at `right + g·groupStride`.
        let rows: Int, width: Int, rowsPerGroup: Int, groupStride: Int
    }

    static func rowBroadcast(_ left: Tensor, _ right: Tensor, outputShape: [Int], outputStrides: [Int]) -> RowBroadcast? {
        guard left.shape == outputShape, left.strides == outputStrides, left.isDense, left.count > 0 else { return nil }
        let rightStrides = Shape.broadcastStrides(shape: right.shape, strides: right.strides, to: outputShape)
        let rank = outputShape.count
        if left.isContiguous, rank >= 1, rightStrides[rank - 1] == 1 || outputShape[rank - 1] == 1,
           rightStrides.dropLast().allSatisfy({ $0 == 0 }) {
            let width = outputShape[rank - 1]
            return RowBroadcast(rows: left.count / width, width: width, rowsPerGroup: left.count / width, groupStride: 0)
        }
        if rank == 4, left.layout == .channelsLast,
           rightStrides[1] == 1, rightStrides[2] == 0, rightStrides[3] == 0 {
            let (width, pixels) = (outputShape[1], outputShape[2] * outputShape[3])
            return RowBroadcast(rows: outputShape[0] * pixels, width: width, rowsPerGroup: pixels, groupStride: rightStrides[0])
        }
        return nil
    }

    static func rowBroadcastKernel(_ function: BinaryFunction, _ out: UnsafeMutablePointer<Float>, _ lhs: UnsafeMutablePointer<Float>,
                                   _ rhs: UnsafeMutablePointer<Float>, _ plan: RowBroadcast) {
        let (width, rowsPerGroup, groupStride) = (plan.width, plan.rowsPerGroup, plan.groupStride)
        Parallel.forEach(plan.rows, grain: Swift.max(1, 16384 / Swift.max(width, 1))) { range in
            for row in range {
                binaryRun(function, out + row * width, UnsafePointer(lhs + row * width), 1,
                          UnsafePointer(rhs + (row / rowsPerGroup) * groupStride), 1, width)
            }
        }
    }

    /// Elementwise maximum with broadcasting (no gradient).
    public func maximum(_ other: Tensor) -> Tensor { noGrad { Tensor.binaryKernel(.maximum, self, other) } }
    /// Elementwise minimum with broadcasting (no gradient).
    public func minimum(_ other: Tensor) -> Tensor { noGrad { Tensor.binaryKernel(.minimum, self, other) } }

    // MARK: Arithmetic operators

    public static func + (lhs: Tensor, rhs: Tensor) -> Tensor {
        record(binaryKernel(.add, lhs, rhs), .add(lhsShape: lhs.shape, rhsShape: rhs.shape), inputs: [lhs, rhs])
    }

    public static func - (lhs: Tensor, rhs: Tensor) -> Tensor {
        record(binaryKernel(.subtract, lhs, rhs), .subtract(lhsShape: lhs.shape, rhsShape: rhs.shape), inputs: [lhs, rhs])
    }

    public static func * (lhs: Tensor, rhs: Tensor) -> Tensor {
        record(binaryKernel(.multiply, lhs, rhs), .multiply(lhs: lhs.detach(), rhs: rhs.detach()), inputs: [lhs, rhs])
    }

    public static func / (lhs: Tensor, rhs: Tensor) -> Tensor {
        record(binaryKernel(.divide, lhs, rhs), .divide(lhs: lhs.detach(), rhs: rhs.detach()), inputs: [lhs, rhs])
    }

    public static prefix func - (tensor: Tensor) -> Tensor { tensor.affine(scale: -1, shift: 0) }

    public static func + (lhs: Tensor, rhs: Float) -> Tensor { lhs.affine(scale: 1, shift: rhs) }
    public static func + (lhs: Float, rhs: Tensor) -> Tensor { rhs.affine(scale: 1, shift: lhs) }
    public static func - (lhs: Tensor, rhs: Float) -> Tensor { lhs.affine(scale: 1, shift: -rhs) }
    public static func - (lhs: Float, rhs: Tensor) -> Tensor { rhs.affine(scale: -1, shift: lhs) }
    public static func * (lhs: Tensor, rhs: Float) -> Tensor { lhs.affine(scale: rhs, shift: 0) }
    public static func * (lhs: Float, rhs: Tensor) -> Tensor { rhs.affine(scale: lhs, shift: 0) }
    public static func / (lhs: Tensor, rhs: Float) -> Tensor { lhs.affine(scale: 1 / rhs, shift: 0) }
    public static func / (lhs: Float, rhs: Tensor) -> Tensor { Tensor.full(lhs, []) / rhs }

    /// `scale · self + shift`, elementwise.
    public func affine(scale: Float, shift: Float) -> Tensor {
        let input = denseData()
        let result = Tensor(uninitializedShape: shape, strides: input.strides)
        let source = UnsafePointer(input.floatPointer)
        let output = result.floatPointer
        Parallel.forEach(count, grain: 65536) { range in
            for index in range { output[index] = scale * source[index] + shift }
        }
        return Tensor.record(result, .affine(scale: scale), inputs: [self])
    }

    /// `self` raised to a constant power.
    public func pow(_ exponent: Float) -> Tensor {
        let input = denseData()
        let result = Tensor(uninitializedShape: shape, strides: input.strides)
        let source = UnsafePointer(input.floatPointer)
        let output = result.floatPointer
        Parallel.forEach(count, grain: 16384) { range in
            if exponent == 2 {
                for index in range { output[index] = source[index] * source[index] }
            } else {
                for index in range { output[index] = Foundation.pow(source[index], exponent) }
            }
        }
        return Tensor.record(result, .power(input: detach(), exponent: exponent), inputs: [self])
    }

    /// `self` clamped into `[minimum, maximum]` (either bound may be omitted).
    public func clamped(min minimum: Float? = nil, max maximum: Float? = nil) -> Tensor {
        if let minimum, let maximum, minimum > maximum {
            fatalError("clamp: minimum \(minimum) is greater than maximum \(maximum)")
        }
        let input = denseData()
        let result = Tensor(uninitializedShape: shape, strides: input.strides)
        let source = UnsafePointer(input.floatPointer)
        let output = result.floatPointer
        let low = minimum ?? -Float.infinity
        let high = maximum ?? Float.infinity
        Parallel.forEach(count, grain: 65536) { range in
            for index in range { output[index] = Swift.min(Swift.max(source[index], low), high) }
        }
        return Tensor.record(result, .clamp(input: detach(), minimum: low, maximum: high), inputs: [self])
    }

    /// Elementwise choice: `lhs` where `condition` is non-zero, else `rhs`. All
    /// three broadcast together. Differentiable in `lhs` and `rhs`.
    public static func select(_ condition: Tensor, _ lhs: Tensor, _ rhs: Tensor) -> Tensor {
        let shape = Shape.broadcast(Shape.broadcast(condition.shape, lhs.shape, op: "where"), rhs.shape, op: "where")
        let mask = noGrad { Tensor.binaryKernel(.add, condition.notEqual(0), Tensor.zeros(shape)) }
        // result = mask·lhs + (1 − mask)·rhs, computed without losing infinities on the unchosen side.
        let left = noGrad { Tensor.binaryKernel(.add, lhs, Tensor.zeros(shape)) }.contiguousData()
        let right = noGrad { Tensor.binaryKernel(.add, rhs, Tensor.zeros(shape)) }.contiguousData()
        let chooser = mask.contiguousData()
        let result = Tensor(uninitializedShape: shape)
        let (m, a, b, out) = (chooser.floatPointer, left.floatPointer, right.floatPointer, result.floatPointer)
        for index in 0..<result.count { out[index] = m[index] != 0 ? a[index] : b[index] }
        return record(result, .select(mask: chooser, lhsShape: lhs.shape, rhsShape: rhs.shape), inputs: [lhs, rhs])
    }

    // MARK: Comparisons (masks of 0 and 1, no gradient)

    private func compare(_ name: String, _ other: Float, _ test: (Float, Float) -> Bool) -> Tensor {
        let input = contiguousData()
        let result = Tensor(uninitializedShape: shape)
        let (source, output) = (input.floatPointer, result.floatPointer)
        for index in 0..<count { output[index] = test(source[index], other) ? 1 : 0 }
        return result
    }

    public func greater(_ value: Float) -> Tensor { compare("greater", value, >) }
    public func less(_ value: Float) -> Tensor { compare("less", value, <) }
    public func equal(_ value: Float) -> Tensor { compare("equal", value, ==) }
    public func notEqual(_ value: Float) -> Tensor { compare("notEqual", value, !=) }
}
