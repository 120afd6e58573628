import Foundation

extension Tensor {
    /// `exp(x) / Σ exp(x)` along `axis`.
    public func softmax(axis: Int = -1) -> Tensor {
        let dimension = Shape.normalize(axis: axis, rank: rank, op: "softmax")
        let result = Tensor.softmaxKernel(self, axis: dimension, logarithm: false)
        return Tensor.record(result, .softmax(output: result.detach(), axis: dimension), inputs: [self])
    }

    /// `x − log Σ exp(x)` along `axis`.
    public func logSoftmax(axis: Int = -1) -> Tensor {
        let dimension = Shape.normalize(axis: axis, rank: rank, op: "logSoftmax")
        let result = Tensor.softmaxKernel(self, axis: dimension, logarithm: true)
        return Tensor.record(result, .logSoftmax(output: result.detach(), axis: dimension), inputs: [self])
    }

    static func softmaxKernel(_ input: Tensor, axis: Int, logarithm: Bool) -> Tensor {
        let lastAxis = input.rank - 1
        let moved = axis == lastAxis ? input.contiguousData() : input.permutedView(swapPermutation(input.rank, axis, lastAxis)).contiguousCopy()
        let length = moved.shape[lastAxis]
        let rows = length == 0 ? 0 : moved.count / length
        let output = Tensor(uninitializedShape: moved.shape)
        let (x, out) = (UnsafePointer(moved.floatPointer), output.floatPointer)
        Parallel.forEach(rows, grain: Swift.max(1, 8192 / Swift.max(length, 1))) { range in
            for row in range {
                softmaxRow(x + row * length, out + row * length, length, logarithm: logarithm)
            }
        }
        if axis == lastAxis { return output }
        return output.permutedView(swapPermutation(input.rank, axis, lastAxis)).contiguousCopy()
    }

    /// Softmax (or log-softmax) of one row, the max subtracted first for stability.
    @inline(__always)
    static func softmaxRow(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ length: Int, logarithm: Bool) {
        var largest = -Float.infinity
        for index in 0..<length where x[index] > largest { largest = x[index] }
        if largest == -.infinity { largest = 0 }
        var lanes = SIMD8<Float>(repeating: 0)
        var index = 0
        let shift = SIMD8<Float>(repeating: largest)
        while index + 8 <= length {
            let value = VectorMath.exp(UnsafeRawPointer(x + index).loadUnaligned(as: SIMD8<Float>.self) - shift)
            UnsafeMutableRawPointer(out + index).storeBytes(of: value, as: SIMD8<Float>.self)
            lanes += value
            index += 8
        }
        var total = lanes.sum()
        while index < length {
            let value = Foundation.exp(x[index] - largest)
            out[index] = value
            total += value
            index += 1
        }
        if logarithm {
            let logTotal = Foundation.log(total) + largest
            for index in 0..<length { out[index] = x[index] - logTotal }
        } else {
            let scale = 1 / total
            for index in 0..<length { out[index] *= scale }
        }
    }

    static func swapPermutation(_ rank: Int, _ first: Int, _ second: Int) -> [Int] {
        var permutation = Array(0..<rank)
        permutation.swapAt(first, second)
        return permutation
    }
}
