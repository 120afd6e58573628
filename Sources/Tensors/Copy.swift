import Foundation

extension Tensor {
    /// A fresh row-major float32 copy, outside the graph.
    public func contiguousCopy() -> Tensor {
        let result = Tensor(uninitializedShape: shape)
        Tensor.copyElements(from: self, into: result)
        return result
    }

    /// Row-major float32 memory to read (self if it already is), outside the graph.
    public func contiguousData() -> Tensor {
        (isContiguous && dataType == .float32) ? self : contiguousCopy()
    }

    /// Dense float32 memory to read in any dimension order (self if it already is).
    func denseData() -> Tensor {
        (isDense && dataType == .float32) ? self : contiguousCopy()
    }

    /// The row-major version of this tensor (self if already row-major float32).
    /// Differentiable.
    public func contiguous() -> Tensor {
        if isContiguous && dataType == .float32 { return self }
        return Tensor.record(contiguousCopy(), .identity, inputs: [self])
    }

    /// `tensor` as dense float32 with exactly `strides`: itself when it already is, else a copy
    /// (not recorded: for kernels and backward rules that need a given memory order).
    static func withStrides(_ tensor: Tensor, _ strides: [Int]) -> Tensor {
        if tensor.dataType == .float32 && tensor.strides == strides && tensor.isDense { return tensor }
        return copy(tensor, strides: strides)
    }

    /// A new dense float32 copy of `tensor` with `strides` (not recorded).
    static func copy(_ tensor: Tensor, strides: [Int]) -> Tensor {
        let copy = Tensor(uninitializedShape: tensor.shape, strides: strides)
        copyElements(from: tensor, into: copy)
        return copy
    }

    /// This tensor stored in `layout` (`.contiguous` or `.channelsLast`).
    /// Differentiable; returns self when already so stored.
    public func withLayout(_ target: TensorLayout) -> Tensor {
        switch target {
        case .contiguous, .strided:
            return contiguous()
        case .channelsLast:
            guard rank == 4 else { fatalError("withLayout(.channelsLast): needs a 4-d tensor, got shape \(shape)") }
            if layout == .channelsLast && dataType == .float32 { return self }
            let result = Tensor(uninitializedShape: shape, strides: Shape.channelsLastStrides(shape))
            Tensor.copyElements(from: self, into: result)
            return Tensor.record(result, .identity, inputs: [self])
        }
    }

    /// A copy stored as `dataType`. Converting to half precision rounds; converting
    /// back is exact. Differentiable (the gradient passes through as float32).
    public func converted(to target: DataType) -> Tensor {
        if target == dataType { return self }
        let source = isContiguous ? self : (dataType == .float32 ? contiguousCopy() : self.convertedToFloat32Copy())
        let result = Tensor(uninitializedShape: shape, dataType: target)
        switch (source.dataType, target) {
        case (.float32, .float16), (.float32, .bfloat16):
            HalfPrecision.encode(source.floatPointer, into: result.storage.halfWords, count: count, as: target)
        case (.float16, .float32), (.bfloat16, .float32):
            HalfPrecision.decode(source.storage.halfWords + source.offset, into: result.storage.floats, count: count, as: source.dataType)
        case (.float32, .float32):
            // A strided half-precision tensor, already converted above.
            return Tensor.record(source, .identity, inputs: [self])
        default:
            let floats = source.convertedToFloat32Copy()
            HalfPrecision.encode(floats.floatPointer, into: result.storage.halfWords, count: count, as: target)
        }
        return Tensor.record(result, .identity, inputs: [self])
    }

    private func convertedToFloat32Copy() -> Tensor {
        let result = Tensor(uninitializedShape: shape)
        Tensor.copyElements(from: self, into: result)
        return result
    }

    /// Copies `source`'s elements into `destination` (same shape, any strides,
    /// `destination` float32 and not overlapping itself).
    static func copyElements(from source: Tensor, into destination: Tensor) {
        precondition(source.shape == destination.shape)
        if source.dataType == .float32 && source.isDense && source.strides == destination.strides {
            destination.floatPointer.update(from: source.floatPointer, count: source.count)
            return
        }
        if source.dataType != .float32 && source.isDense && source.strides == destination.strides {
            // 16-bit weights widened for their layer: the vector decoder, split over the workers.
            HalfPrecision.decode(source.storage.halfWords + source.offset, into: destination.floatPointer, count: source.count, as: source.dataType)
            return
        }
        let loop = StridedLoop(shape: source.shape, operandStrides: [destination.strides, source.strides])
        let output = destination.floatPointer
        let sourceStride = loop.innerStrides[1]
        let targetStride = loop.innerStrides[0]
        switch source.dataType {
        case .float32:
            let input = UnsafePointer(source.floatPointer)
            loop.forEachRunInParallel { offsets, count in
                let out = output + offsets[0]
                let inp = input + offsets[1]
                if sourceStride == 1 && targetStride == 1 {
                    out.update(from: inp, count: count)
                } else {
                    for index in 0..<count { out[index * targetStride] = inp[index * sourceStride] }
                }
            }
        case .float16, .bfloat16:
            let words = UnsafePointer(source.storage.halfWords + source.offset)
            let isBFloat = source.dataType == .bfloat16
            loop.forEachRunInParallel { offsets, count in
                let out = output + offsets[0]
                let inp = words + offsets[1]
                for index in 0..<count {
                    let bits = inp[index * sourceStride]
                    out[index * targetStride] = isBFloat ? HalfPrecision.float(fromBFloat16: bits) : HalfPrecision.float(fromFloat16: bits)
                }
            }
        }
    }
}
