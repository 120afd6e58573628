import Foundation

/// Mixed-precision training on the CPU: the arithmetic stays float32, but the
/// activations ops save for their backward pass can be stored in half
/// precision (`float16` or `bfloat16`) while the graph waits for `backward()`,
/// halving the memory a training step holds.
///
/// While `dataType` is a 16-bit type, every op recorded for autograd stores
/// the activations its backward rule reads (a convolution's input, a
/// normalisation's input, a pointwise op's input or output, both factors of a
/// product, a matrix product's left operand) as a 16-bit copy; the float32
/// original is then freed as soon as the forward pass is done with it. The
/// backward rule gets a float32 copy back. Parameters and tensors under
/// `minimumCount` elements are never converted.
///
/// ```swift
/// SavedTensorPrecision.dataType = .bfloat16
/// let loss = model(x).mseLoss(target)   // saved activations are bfloat16
/// loss.backward()                       // gradients computed in float32
/// ```
public enum SavedTensorPrecision {
    /// The storage type of saved activations (`float32`: no conversion).
    public nonisolated(unsafe) static var dataType = DataType.float32
    /// Smaller tensors stay float32 (conversion would cost more than it saves).
    public nonisolated(unsafe) static var minimumCount = 4096

    /// Runs `body` with `dataType` set, then restores the previous value.
    public static func with<Result>(_ dataType: DataType, _ body: () throws -> Result) rethrows -> Result {
        let previous = self.dataType
        self.dataType = dataType
        defer { self.dataType = previous }
        return try body()
    }

    /// Conversions made by the last `compress` calls, keyed by source storage:
    /// a tensor saved by several ops is converted once.
    private nonisolated(unsafe) static var recent: [ObjectIdentifier: (source: WeakStorage, compressed: WeakStorage, strides: [Int])] = [:]
    private static let lock = NSLock()

    private final class WeakStorage {
        weak var storage: Storage?
        init(_ storage: Storage) { self.storage = storage }
    }

    /// The 16-bit copy of a saved float32 activation (same shape and strides), or the tensor itself.
    static func compress(_ tensor: Tensor) -> Tensor {
        let target = dataType
        guard target != .float32, tensor.dataType == .float32, !tensor.requiresGrad, tensor.count >= minimumCount,
              tensor.offset == 0, tensor.storage.count == tensor.count, tensor.isDense else { return tensor }
        let key = ObjectIdentifier(tensor.storage)
        lock.lock()
        if let entry = recent[key], entry.source.storage === tensor.storage, entry.strides == tensor.strides,
           let compressed = entry.compressed.storage, compressed.dataType == target {
            lock.unlock()
            return Tensor(storage: compressed, shape: tensor.shape, strides: tensor.strides, offset: 0)
        }
        lock.unlock()
        let storage = Storage(count: tensor.count, dataType: target)
        let (source, destination) = (tensor.storage.floats, storage.halfWords)
        Parallel.forEach(tensor.count, grain: 1 << 16) { range in
            HalfPrecision.encode(source + range.lowerBound, into: destination + range.lowerBound, count: range.count, as: target)
        }
        lock.lock()
        if recent.count > 4096 { recent = recent.filter { $0.value.source.storage != nil && $0.value.compressed.storage != nil } }
        recent[key] = (WeakStorage(tensor.storage), WeakStorage(storage), tensor.strides)
        lock.unlock()
        return Tensor(storage: storage, shape: tensor.shape, strides: tensor.strides, offset: 0)
    }

    /// The float32 copy of a tensor `compress` converted (same shape and strides), or the tensor itself.
    static func decompress(_ tensor: Tensor) -> Tensor {
        guard tensor.dataType != .float32, tensor.offset == 0, tensor.storage.count == tensor.count else { return tensor }
        let storage = Storage(count: tensor.count)
        let (source, destination, type) = (tensor.storage.halfWords, storage.floats, tensor.dataType)
        Parallel.forEach(tensor.count, grain: 1 << 16) { range in
            HalfPrecision.decode(source + range.lowerBound, into: destination + range.lowerBound, count: range.count, as: type)
        }
        return Tensor(storage: storage, shape: tensor.shape, strides: tensor.strides, offset: 0)
    }
}

extension Operation {
    /// The operation with `transform` applied to the activations it saved (see `SavedTensorPrecision`).
    func mappingSavedActivations(_ transform: (Tensor) -> Tensor) -> Operation {
        switch self {
        case let .multiply(lhs, rhs): return .multiply(lhs: transform(lhs), rhs: transform(rhs))
        case let .divide(lhs, rhs): return .divide(lhs: transform(lhs), rhs: transform(rhs))
        case let .power(input, exponent): return .power(input: transform(input), exponent: exponent)
        case let .pointwise(function, input, output): return .pointwise(function, input: input.map(transform), output: output.map(transform))
        case let .clamp(input, minimum, maximum): return .clamp(input: transform(input), minimum: minimum, maximum: maximum)
        case let .variance(input, axes, keepDims, correction):
            return .variance(input: transform(input), axes: axes, keepDims: keepDims, correction: correction)
        case let .matmul(lhs, rhs): return .matmul(lhs: transform(lhs), rhs: rhs)
        case let .softmax(output, axis): return .softmax(output: transform(output), axis: axis)
        case let .logSoftmax(output, axis): return .logSoftmax(output: transform(output), axis: axis)
        case let .kernel(context): return .kernel(context.mappingSavedActivations(transform))
        default: return self
        }
    }
}

extension BackwardContext {
    /// By default a kernel's saved state is kept as it is.
    func mappingSavedActivations(_ transform: (Tensor) -> Tensor) -> any BackwardContext { self }
}
