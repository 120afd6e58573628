import Foundation

/// What a recorded op saved for its backward rule.
///
/// Elementwise, reduction and view ops keep their rule in the one table below
/// (`Gradients.backward`). Ops with a dedicated backward kernel (convolution,
/// pooling, resizing, normalisation, attention) carry a context defined next
/// to their forward kernel; the table hands the gradient to it.
enum Operation {
    case identity
    case add(lhsShape: [Int], rhsShape: [Int])
    case subtract(lhsShape: [Int], rhsShape: [Int])
    case multiply(lhs: Tensor, rhs: Tensor)
    case divide(lhs: Tensor, rhs: Tensor)
    case affine(scale: Float)
    case power(input: Tensor, exponent: Float)
    case pointwise(PointwiseFunction, input: Tensor?, output: Tensor?)
    case clamp(input: Tensor, minimum: Float, maximum: Float)
    case select(mask: Tensor, lhsShape: [Int], rhsShape: [Int])
    case sum(inputShape: [Int], axes: [Int], keepDims: Bool)
    case mean(inputShape: [Int], axes: [Int], keepDims: Bool)
    case variance(input: Tensor, axes: [Int], keepDims: Bool, correction: Int)
    case extremum(input: Tensor, output: Tensor, axes: [Int], keepDims: Bool)
    case reshape(inputShape: [Int])
    case permute(permutation: [Int])
    case expand(inputShape: [Int])
    case slice(inputShape: [Int], axis: Int, start: Int, step: Int)
    case indexSelect(inputShape: [Int], axis: Int, indices: [Int])
    case gather(inputShape: [Int], axis: Int, index: Tensor)
    case concatenate(axis: Int, sizes: [Int])
    case pad(inputShape: [Int], padding: [[Int]])
    case matmul(lhs: Tensor, rhs: Tensor)
    case softmax(output: Tensor, axis: Int)
    case logSoftmax(output: Tensor, axis: Int)
    case embedding(indices: [Int], tableShape: [Int])
    /// An op whose backward kernel lives beside its forward kernel.
    case kernel(any BackwardContext)

    /// The op's name, for error messages and profiles (never formats the saved tensors).
    var name: String {
        switch self {
        case .kernel(let context): return context.name
        case .identity: return "identity"
        case .add: return "add"
        case .subtract: return "subtract"
        case .multiply: return "multiply"
        case .divide: return "divide"
        case .affine: return "affine"
        case .power: return "power"
        case .pointwise: return "pointwise"
        case .clamp: return "clamp"
        case .select: return "select"
        case .sum: return "sum"
        case .mean: return "mean"
        case .variance: return "variance"
        case .extremum: return "extremum"
        case .reshape: return "reshape"
        case .permute: return "permute"
        case .expand: return "expand"
        case .slice: return "slice"
        case .indexSelect: return "indexSelect"
        case .gather: return "gather"
        case .concatenate: return "concatenate"
        case .pad: return "pad"
        case .matmul: return "matmul"
        case .softmax: return "softmax"
        case .logSoftmax: return "logSoftmax"
        case .embedding: return "embedding"
        }
    }
}

/// The saved state and backward kernel of an op with a dedicated backward.
protocol BackwardContext {
    /// The op's name, for error messages.
    var name: String { get }
    /// Gradients for each input, in the order the inputs were recorded (`nil`
    /// where an input needs none).
    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?]
    /// The context with `transform` applied to its saved activations (`SavedTensorPrecision`).
    func mappingSavedActivations(_ transform: (Tensor) -> Tensor) -> any BackwardContext
}

/// The table of backward rules.
enum Gradients {
    /// Gradients of the inputs of one recorded op, given d loss / d output.
    /// Runs with recording off.
    static func backward(_ operation: Operation, gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        func needs(_ index: Int) -> Bool { inputs[index] != nil }
        switch operation {
        case .identity:
            return [gradient]

        case let .add(lhsShape, rhsShape):
            return [needs(0) ? gradient.summed(toShape: lhsShape) : nil,
                    needs(1) ? gradient.summed(toShape: rhsShape) : nil]

        case let .subtract(lhsShape, rhsShape):
            return [needs(0) ? gradient.summed(toShape: lhsShape) : nil,
                    needs(1) ? gradient.affine(scale: -1, shift: 0).summed(toShape: rhsShape) : nil]

        case let .multiply(lhs, rhs):
            // d(a·b) = b·g, a·g
            return [needs(0) ? (gradient * rhs).summed(toShape: lhs.shape) : nil,
                    needs(1) ? (gradient * lhs).summed(toShape: rhs.shape) : nil]

        case let .divide(lhs, rhs):
            // d(a/b) = g/b, −g·a/b²
            return [needs(0) ? (gradient / rhs).summed(toShape: lhs.shape) : nil,
                    needs(1) ? (-(gradient * lhs) / (rhs * rhs)).summed(toShape: rhs.shape) : nil]

        case let .affine(scale):
            return [gradient.affine(scale: scale, shift: 0)]

        case let .power(input, exponent):
            // d xᵖ = p·xᵖ⁻¹·g
            let derivative = exponent == 2 ? input.affine(scale: 2, shift: 0) : input.pow(exponent - 1).affine(scale: exponent, shift: 0)
            return [gradient * derivative]

        case let .pointwise(function, input, output):
            return [Tensor.pointwiseBackward(function, input: input, output: output, gradient: gradient)]

        case let .clamp(input, minimum, maximum):
            // Gradient passes where the input was inside the bounds (PyTorch: inclusive).
            let inside = Tensor.select(input.less(minimum), Tensor.zeros([]), Tensor.select(input.greater(maximum), Tensor.zeros([]), Tensor.ones([])))
            return [gradient * inside]

        case let .select(mask, lhsShape, rhsShape):
            let chosen = gradient * mask
            return [needs(0) ? chosen.summed(toShape: lhsShape) : nil,
                    needs(1) ? (gradient - chosen).summed(toShape: rhsShape) : nil]

        case let .sum(inputShape, axes, keepDims):
            return [gradient.reshapedView(Tensor.reducedShape(inputShape, axes: axes, keepDims: true)).broadcastCopy(to: inputShape, keepDims: keepDims)]

        case let .mean(inputShape, axes, keepDims):
            let reducedCount = axes.reduce(1) { $0 * inputShape[$1] }
            let spread = gradient.reshapedView(Tensor.reducedShape(inputShape, axes: axes, keepDims: true))
            return [spread.affine(scale: 1 / Float(reducedCount), shift: 0).broadcastCopy(to: inputShape, keepDims: keepDims)]

        case let .variance(input, axes, keepDims, correction):
            // d var = 2 (x − mean) / (n − correction) · g
            let reducedCount = axes.reduce(1) { $0 * input.shape[$1] }
            let centered = input - input.mean(axes: axes, keepDims: true)
            let spread = gradient.reshapedView(Tensor.reducedShape(input.shape, axes: axes, keepDims: true))
            return [(centered * spread).affine(scale: 2 / Float(Swift.max(reducedCount - correction, 0)), shift: 0)]

        case let .extremum(input, output, axes, _):
            // Shared equally among the elements equal to the extremum.
            let hits = Tensor.binaryKernel(.subtract, input, output).equal(0)
            let ties = Tensor.reduceKernel(hits, axes: axes, keepDims: true, kind: .sum)
            let spread = gradient.reshapedView(Tensor.reducedShape(input.shape, axes: axes, keepDims: true))
            return [hits * (spread / ties)]

        case let .reshape(inputShape):
            return [gradient.reshapedView(inputShape)]

        case let .permute(permutation):
            var inverse = [Int](repeating: 0, count: permutation.count)
            for (position, axis) in permutation.enumerated() { inverse[axis] = position }
            return [gradient.permutedView(inverse)]

        case let .expand(inputShape):
            return [gradient.summed(toShape: inputShape)]

        case let .slice(inputShape, axis, start, step):
            let result = Tensor.zeros(inputShape)
            var strides = result.strides
            strides[axis] *= step
            let window = Tensor(storage: result.storage, shape: gradient.shape, strides: strides, offset: start * result.strides[axis])
            Tensor.copyElements(from: gradient, into: window.denseTarget())
            return [result]

        case let .indexSelect(inputShape, axis, indices):
            let result = Tensor.zeros(inputShape)
            let source = gradient.contiguousData()
            let outer = inputShape[..<axis].reduce(1, *)
            let inner = inputShape[(axis + 1)...].reduce(1, *)
            let (x, out) = (source.floatPointer, result.floatPointer)
            for block in 0..<outer {
                for (position, index) in indices.enumerated() {
                    let target = out + (block * inputShape[axis] + index) * inner
                    let values = x + (block * indices.count + position) * inner
                    for element in 0..<inner { target[element] += values[element] }
                }
            }
            return [result]

        case let .gather(inputShape, axis, index):
            let result = Tensor.zeros(inputShape)
            let source = gradient.contiguousData()
            let indexStrides = Shape.contiguousStrides(index.shape)
            let (x, out, idx) = (source.floatPointer, result.floatPointer, index.floatPointer)
            for flat in 0..<index.count {
                var remainder = flat, position = 0
                for dimension in 0..<index.rank {
                    let coordinate = remainder / indexStrides[dimension]
                    remainder %= indexStrides[dimension]
                    position += (dimension == axis ? Int(idx[flat]) : coordinate) * result.strides[dimension]
                }
                out[position] += x[flat]
            }
            return [result]

        case let .concatenate(axis, sizes):
            var start = 0
            return sizes.map { size in
                defer { start += size }
                return gradient.sliceCopy(axis: axis, start: start, length: size)
            }

        case let .pad(inputShape, padding):
            var view = gradient
            for axis in 0..<inputShape.count where padding[axis][0] != 0 || padding[axis][1] != 0 {
                view = view.sliceView(axis: axis, start: padding[axis][0], length: inputShape[axis])
            }
            return [view.contiguousCopy()]

        case let .matmul(lhs, rhs):
            return Tensor.matmulBackward(lhs: lhs, rhs: rhs, gradient: gradient, needsLhs: needs(0), needsRhs: needs(1))

        case let .softmax(output, axis):
            // dx = y · (g − Σ g·y)
            let weighted = gradient * output
            return [output * (gradient - weighted.sum(axis: axis, keepDims: true))]

        case let .logSoftmax(output, axis):
            // dx = g − exp(y) · Σ g
            return [gradient - output.exp() * gradient.sum(axis: axis, keepDims: true)]

        case let .embedding(indices, tableShape):
            let result = Tensor.zeros(tableShape)
            let source = gradient.contiguousData()
            let width = tableShape[1]
            let (x, out) = (source.floatPointer, result.floatPointer)
            for (row, index) in indices.enumerated() {
                let target = out + index * width
                let values = x + row * width
                for column in 0..<width { target[column] += values[column] }
            }
            return [result]

        case let .kernel(context):
            return context.backward(gradient, inputs: inputs)
        }
    }
}

extension Tensor {
    /// Broadcasts a keep-dims reduced gradient back to the input shape (a fresh tensor).
    func broadcastCopy(to target: [Int], keepDims: Bool) -> Tensor {
        let result = Tensor(uninitializedShape: target)
        Tensor.copyElements(from: expandedView(target), into: result)
        return result
    }

    /// A view along one axis without recording (for backward rules).
    func sliceView(axis: Int, start: Int, length: Int) -> Tensor {
        var newShape = shape
        newShape[axis] = length
        return Tensor(storage: storage, shape: newShape, strides: strides, offset: offset + start * strides[axis])
    }

    /// A dense copy of a slice, in this tensor's memory order: a channels-last gradient of a
    /// channel concatenation gives channels-last pieces (row-major copies were transposing
    /// gathers, and every consumer then converted them back or added them to channels-last
    /// gradients element by element).
    func sliceCopy(axis: Int, start: Int, length: Int) -> Tensor {
        let view = sliceView(axis: axis, start: start, length: length)
        if rank == 4 && layout == .channelsLast && dataType == .float32 {
            return Tensor.copy(view, strides: Shape.channelsLastStrides(view.shape))
        }
        return view.contiguousCopy()
    }

    /// This view as a copy destination (it is written element by element).
    func denseTarget() -> Tensor { self }

    static func matmulBackward(lhs: Tensor, rhs: Tensor, gradient: Tensor, needsLhs: Bool, needsRhs: Bool) -> [Tensor?] {
        // d(A·B) = G·Bᵀ, Aᵀ·G, summed over broadcast batch dimensions.
        var lhsGradient: Tensor?
        var rhsGradient: Tensor?
        if needsLhs {
            lhsGradient = matmulKernel(gradient, rhs.transposedView()).summed(toShape: lhs.shape)
        }
        if needsRhs {
            if rhs.rank == 2 && lhs.rank > 2 {
                // Shared weight: one tall product over all batch rows.
                let k = lhs.shape[lhs.rank - 1], n = gradient.shape[gradient.rank - 1]
                let rows = lhs.count / k
                rhsGradient = matmulKernel(lhs.contiguousData().reshapedView([rows, k]).transposedView(), gradient.contiguousData().reshapedView([rows, n]))
            } else {
                rhsGradient = matmulKernel(lhs.transposedView(), gradient).summed(toShape: rhs.shape)
            }
        }
        return [lhsGradient, rhsGradient]
    }

    func transposedView() -> Tensor {
        var permutation = Array(0..<rank)
        permutation.swapAt(rank - 2, rank - 1)
        return permutedView(permutation)
    }
}
