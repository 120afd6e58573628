import Foundation

/// An n-dimensional array of numbers with reverse-mode automatic
/// differentiation.
///
/// A tensor is a view (`shape`, `strides`, `offset`) of a reference-counted
/// `Storage`. Views such as `reshaped`, `permuted` and `narrowed` share memory;
/// ops write new tensors. The public layout is PyTorch's: images are
/// `[batch, channels, height, width]`. Internally a 4-d tensor may be stored
/// channels-last (strides `[H·W·C, 1, W·C, C]`), which is how the convolution
/// kernels prefer it; `layout` tells which, and `contiguous()` returns the
/// plain row-major copy.
public final class Tensor {
    /// Size of each dimension.
    public let shape: [Int]
    /// Step in elements between neighbours along each dimension.
    public let strides: [Int]
    /// Index of the first element in `storage`.
    public let offset: Int
    /// The memory this tensor views (replaced only by ``replaceStorage(with:)``).
    public internal(set) var storage: Storage

    /// When true, ops on this tensor record the graph needed for `backward()`.
    /// Only set it on leaves (parameters, or an input you want d loss / d input for).
    public var requiresGrad: Bool {
        didSet {
            if requiresGrad && !isLeaf {
                fatalError("requiresGrad: can only be set on a leaf tensor (shape \(shape)); call detach() first")
            }
        }
    }

    /// The accumulated gradient of a leaf after `backward()`.
    public var grad: Tensor?

    /// The op that produced this tensor, if it was recorded for autograd.
    var gradientNode: GradientNode?

    init(storage: Storage, shape: [Int], strides: [Int], offset: Int = 0) {
        self.storage = storage
        self.shape = shape
        self.strides = strides
        self.offset = offset
        self.requiresGrad = false
    }

    /// A new row-major tensor over fresh storage (uninitialised).
    init(uninitializedShape shape: [Int], dataType: DataType = .float32) {
        Shape.validate(shape, op: "Tensor")
        self.storage = Storage(count: Shape.count(shape), dataType: dataType)
        self.shape = shape
        self.strides = Shape.contiguousStrides(shape)
        self.offset = 0
        self.requiresGrad = false
    }

    /// A new tensor with the given strides (dense, uninitialised).
    init(uninitializedShape shape: [Int], strides: [Int]) {
        self.storage = Storage(count: Shape.count(shape))
        self.shape = shape
        self.strides = strides
        self.offset = 0
        self.requiresGrad = false
    }

    /// A row-major tensor over existing storage (any storage type), e.g. bytes
    /// read from a checkpoint. The storage must hold exactly the shape's elements.
    public convenience init(storage: Storage, shape: [Int]) {
        Shape.validate(shape, op: "Tensor.init(storage:)")
        guard storage.count == Shape.count(shape) else {
            fatalError("Tensor.init(storage:): storage of \(storage.count) elements does not fit shape \(shape)")
        }
        self.init(storage: storage, shape: shape, strides: Shape.contiguousStrides(shape), offset: 0)
    }

    /// A tensor holding `values` in row-major order.
    public convenience init(_ values: [Float], shape: [Int]) {
        Shape.validate(shape, op: "Tensor.init")
        guard values.count == Shape.count(shape) else {
            fatalError("Tensor.init: \(values.count) values do not fill shape \(shape) (\(Shape.count(shape)) elements)")
        }
        self.init(uninitializedShape: shape)
        values.withUnsafeBufferPointer { buffer in
            if let base = buffer.baseAddress { storage.floats.update(from: base, count: values.count) }
        }
    }

    /// A one-dimensional tensor.
    public convenience init(_ values: [Float]) {
        self.init(values, shape: [values.count])
    }

    /// A zero-dimensional tensor holding one number.
    public convenience init(scalar value: Float) {
        self.init([value], shape: [])
    }

    /// A float32 tensor whose memory is not written (its values are whatever the memory
    /// held): for parameters about to be loaded, so building a large model touches no pages.
    /// The memory is mapped outside the buffer pool (`Storage.outsidePool`), so placeholders
    /// that loading replaces (16-bit or mapped weights) never raise the pool's high-water mark.
    public static func uninitialized(_ shape: [Int]) -> Tensor {
        Shape.validate(shape, op: "uninitialized")
        guard let storage = Storage.outsidePool(count: Shape.count(shape)) else { return Tensor(uninitializedShape: shape) }
        return Tensor(storage: storage, shape: shape)
    }

    /// A tensor of zeros.
    public static func zeros(_ shape: [Int]) -> Tensor {
        Shape.validate(shape, op: "zeros")
        let result = Tensor(uninitializedShape: shape)
        memset(result.storage.bytes, 0, result.count * 4)
        return result
    }

    /// A tensor of ones.
    public static func ones(_ shape: [Int]) -> Tensor { full(1, shape) }

    /// A tensor filled with `value`.
    public static func full(_ value: Float, _ shape: [Int]) -> Tensor {
        Shape.validate(shape, op: "full")
        let result = Tensor(uninitializedShape: shape)
        result.storage.floats.update(repeating: value, count: result.count)
        return result
    }

    /// `[start, start + step, …]` below `end`.
    public static func arange(_ start: Float = 0, _ end: Float, step: Float = 1) -> Tensor {
        guard step != 0 else { fatalError("arange: step must not be zero") }
        let count = Swift.max(0, Int(((end - start) / step).rounded(.up)))
        return Tensor((0..<count).map { start + Float($0) * step })
    }

    /// Zeros with this tensor's shape.
    public func zerosLike() -> Tensor { Tensor.zeros(shape) }

    // MARK: - Facts

    /// Number of dimensions.
    public var rank: Int { shape.count }
    /// Number of elements.
    public var count: Int { Shape.count(shape) }
    /// The storage type.
    public var dataType: DataType { storage.dataType }
    /// True when no op recorded this tensor (a parameter, an input or a constant).
    public var isLeaf: Bool { gradientNode == nil }

    /// True for the plain row-major layout.
    public var isContiguous: Bool { Shape.isContiguous(shape: shape, strides: strides) }

    /// True when the elements fill `count` consecutive storage slots in some
    /// dimension order (row-major, channels-last, a transpose…), so elementwise
    /// kernels can run over memory directly.
    public var isDense: Bool { Shape.isDense(shape: shape, strides: strides) }

    /// The memory layout of this tensor.
    public var layout: TensorLayout {
        if isContiguous { return .contiguous }
        if rank == 4 && strides == Shape.channelsLastStrides(shape) { return .channelsLast }
        return .strided
    }

    /// Size of dimension `axis` (negative counts from the end).
    public func size(_ axis: Int) -> Int { shape[Shape.normalize(axis: axis, rank: rank, op: "size")] }

    // MARK: - Reading values

    /// Pointer to the first element of a float32 tensor's memory.
    @inline(__always)
    public var floatPointer: UnsafeMutablePointer<Float> {
        storage.floats + offset
    }

    /// The values in row-major order.
    public func toArray() -> [Float] {
        let source = contiguousData()
        return Array(UnsafeBufferPointer(start: source.floatPointer, count: count))
    }

    /// The value of a one-element tensor.
    public var item: Float {
        guard count == 1 else { fatalError("item: tensor of shape \(shape) has \(count) elements, not 1") }
        return toArray()[0]
    }

    /// The value at a multi-index.
    public subscript(indices: Int...) -> Float {
        guard indices.count == rank else { fatalError("subscript: \(indices.count) indices for shape \(shape)") }
        var position = offset
        for (axis, index) in indices.enumerated() {
            guard index >= 0 && index < shape[axis] else { fatalError("subscript: index \(indices) out of bounds for shape \(shape)") }
            position += index * strides[axis]
        }
        switch dataType {
        case .float32: return storage.floats[position]
        case .float16: return HalfPrecision.float(fromFloat16: storage.halfWords[position])
        case .bfloat16: return HalfPrecision.float(fromBFloat16: storage.halfWords[position])
        }
    }

    // MARK: - Graph

    /// The same values, cut from the autograd graph.
    public func detach() -> Tensor {
        Tensor(storage: storage, shape: shape, strides: strides, offset: offset)
    }

    /// Builds an op result and records its backward rule when gradients are on
    /// and any input needs them.
    static func record(_ result: Tensor, _ operation: @autoclosure () -> Operation, inputs: [Tensor]) -> Tensor {
        guard GradientMode.isEnabled, inputs.contains(where: { $0.requiresGrad || $0.gradientNode != nil }) else {
            return result
        }
        let edges: [GradientEdge?] = inputs.map { input in
            if let node = input.gradientNode { return .node(node) }
            return input.requiresGrad ? .leaf(input) : nil
        }
        let recorded = SavedTensorPrecision.dataType == .float32
            ? operation() : operation().mappingSavedActivations(SavedTensorPrecision.compress)
        result.gradientNode = GradientNode(operation: recorded, edges: edges, outputShape: result.shape)
        if !BufferPool.graphRecorded { BufferPool.graphRecorded = true }
        return result
    }

    /// True when this tensor takes part in a recorded graph.
    var needsGradient: Bool { requiresGrad || gradientNode != nil }
}

/// How a tensor's elements are laid out in memory.
public enum TensorLayout: Sendable, Equatable {
    /// Row-major, last dimension fastest (PyTorch's default).
    case contiguous
    /// `[N, C, H, W]` stored as `[N, H, W, C]` (PyTorch's `channels_last`).
    case channelsLast
    /// Any other view.
    case strided
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let values = toArray()
        let shown = values.prefix(8).map { String(format: "%.4f", $0) }.joined(separator: ", ")
        return "Tensor(shape: \(shape), [\(shown)\(values.count > 8 ? ", …" : "")])"
    }
}
