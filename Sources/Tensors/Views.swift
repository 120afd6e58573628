import Foundation

extension Tensor {
    // MARK: Shape views (no graph; used by kernels and backward rules)

    func reshapedView(_ newShape: [Int]) -> Tensor {
        // Row-major memory of any storage type is viewed as it is: a 16-bit weight reshaped (a 1×1
        // convolution's kernel as a matrix) stays the same storage, so caches keyed by it hold.
        // (Widening it here made a new float32 copy per call, which the bfloat16 path then cached for good.)
        if isContiguous {
            return Tensor(storage: storage, shape: newShape, strides: Shape.contiguousStrides(newShape), offset: offset)
        }
        let source = contiguousData()
        return Tensor(storage: source.storage, shape: newShape, strides: Shape.contiguousStrides(newShape), offset: source.offset)
    }

    func permutedView(_ permutation: [Int]) -> Tensor {
        Tensor(storage: storage, shape: permutation.map { shape[$0] }, strides: permutation.map { strides[$0] }, offset: offset)
    }

    // MARK: Differentiable views

    /// The same elements in a new shape; one size may be -1 (inferred).
    /// A view when the memory is row-major, else a copy.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var resolved = newShape
        let inferred = newShape.indices.filter { newShape[$0] == -1 }
        guard inferred.count <= 1, !newShape.contains(where: { $0 < -1 }) else {
            fatalError("reshape: invalid target shape \(newShape) for a tensor of shape \(shape)")
        }
        if let axis = inferred.first {
            let known = newShape.enumerated().filter { $0.offset != axis }.reduce(1) { $0 * $1.element }
            guard known > 0, count % known == 0 else { fatalError("reshape: cannot reshape \(shape) into \(newShape)") }
            resolved[axis] = count / known
        }
        guard Shape.count(resolved) == count else {
            fatalError("reshape: cannot reshape a tensor of shape \(shape) (\(count) elements) into \(newShape)")
        }
        if resolved == shape { return self }
        return Tensor.record(reshapedView(resolved), .reshape(inputShape: shape), inputs: [self])
    }

    public func reshaped(_ newShape: Int...) -> Tensor { reshaped(newShape) }

    /// Flattens dimensions `start...end` into one.
    public func flattened(from start: Int = 0, through end: Int = -1) -> Tensor {
        let first = Shape.normalize(axis: start, rank: rank, op: "flatten")
        let last = Shape.normalize(axis: end, rank: rank, op: "flatten")
        guard first <= last else { return self }
        let merged = shape[first...last].reduce(1, *)
        return reshaped(Array(shape[..<first]) + [merged] + Array(shape[(last + 1)...]))
    }

    /// Inserts a size-1 dimension at `axis`.
    public func unsqueezed(_ axis: Int) -> Tensor {
        let position = Shape.normalize(axis: axis, rank: rank + 1, op: "unsqueeze")
        var newShape = shape
        newShape.insert(1, at: position)
        var newStrides = strides
        newStrides.insert(position < rank ? strides[position] * shape[position] : 1, at: position)
        return Tensor.record(Tensor(storage: storage, shape: newShape, strides: newStrides, offset: offset), .reshape(inputShape: shape), inputs: [self])
    }

    /// Removes size-1 dimensions (only `axis` when given).
    public func squeezed(_ axis: Int? = nil) -> Tensor {
        let keep: [Int]
        if let axis {
            let position = Shape.normalize(axis: axis, rank: rank, op: "squeeze")
            keep = (0..<rank).filter { $0 != position || shape[$0] != 1 }
        } else {
            keep = (0..<rank).filter { shape[$0] != 1 }
        }
        return Tensor.record(Tensor(storage: storage, shape: keep.map { shape[$0] }, strides: keep.map { strides[$0] }, offset: offset), .reshape(inputShape: shape), inputs: [self])
    }

    /// Reorders dimensions (a view).
    public func permuted(_ permutation: [Int]) -> Tensor {
        guard permutation.count == rank, Set(permutation) == Set(0..<rank) else {
            fatalError("permute: \(permutation) is not a permutation of the \(rank) dimensions of shape \(shape)")
        }
        return Tensor.record(permutedView(permutation), .permute(permutation: permutation), inputs: [self])
    }

    public func permuted(_ permutation: Int...) -> Tensor { permuted(permutation) }

    /// Swaps two dimensions (a view); defaults to the last two.
    public func transposed(_ first: Int = -2, _ second: Int = -1) -> Tensor {
        var permutation = Array(0..<rank)
        permutation.swapAt(Shape.normalize(axis: first, rank: rank, op: "transpose"), Shape.normalize(axis: second, rank: rank, op: "transpose"))
        return permuted(permutation)
    }

    /// Elements `start ..< start + length` along `axis` (a view).
    public func narrowed(axis: Int, start: Int, length: Int) -> Tensor {
        sliced(axis: axis, start: start, end: start + length)
    }

    /// Elements `start ..< end` in steps of `step` along `axis` (a view).
    /// Negative `start`/`end` count from the end, as in Python.
    public func sliced(axis: Int, start: Int = 0, end: Int? = nil, step: Int = 1) -> Tensor {
        let dimension = Shape.normalize(axis: axis, rank: rank, op: "slice")
        let size = shape[dimension]
        let first = start < 0 ? start + size : start
        let last = end.map { $0 < 0 ? $0 + size : $0 } ?? size
        guard step > 0, first >= 0, last <= size, first <= last else {
            fatalError("slice: range \(start)..<\(end ?? size) step \(step) is out of bounds for axis \(dimension) of shape \(shape)")
        }
        var newShape = shape
        newShape[dimension] = (last - first + step - 1) / step
        var newStrides = strides
        newStrides[dimension] = strides[dimension] * step
        let view = Tensor(storage: storage, shape: newShape, strides: newStrides, offset: offset + first * strides[dimension])
        return Tensor.record(view, .slice(inputShape: shape, axis: dimension, start: first, step: step), inputs: [self])
    }

    /// Repeats size-1 dimensions to `newShape` without copying (a view). -1 keeps a size.
    public func expanded(_ newShape: [Int]) -> Tensor {
        guard newShape.count >= rank else { fatalError("expand: target \(newShape) has fewer dimensions than shape \(shape)") }
        var resolved = newShape
        let extra = newShape.count - rank
        for axis in 0..<rank where newShape[axis + extra] == -1 { resolved[axis + extra] = shape[axis] }
        for axis in 0..<rank where shape[axis] != 1 && shape[axis] != resolved[axis + extra] {
            fatalError("expand: cannot expand shape \(shape) to \(newShape)")
        }
        let view = Tensor(storage: storage, shape: resolved, strides: Shape.broadcastStrides(shape: shape, strides: strides, to: resolved), offset: offset)
        return Tensor.record(view, .expand(inputShape: shape), inputs: [self])
    }

    // MARK: Indexing

    /// The slices at `indices` along `axis`, in order (a copy).
    public func indexSelect(axis: Int, indices: [Int]) -> Tensor {
        let dimension = Shape.normalize(axis: axis, rank: rank, op: "indexSelect")
        for index in indices where index < 0 || index >= shape[dimension] {
            fatalError("indexSelect: index \(index) is out of bounds for axis \(dimension) of shape \(shape)")
        }
        let source = contiguousData()
        let outer = shape[..<dimension].reduce(1, *)
        let inner = shape[(dimension + 1)...].reduce(1, *)
        var newShape = shape
        newShape[dimension] = indices.count
        let result = Tensor(uninitializedShape: newShape)
        let (x, out) = (source.floatPointer, result.floatPointer)
        for block in 0..<outer {
            for (position, index) in indices.enumerated() {
                (out + (block * indices.count + position) * inner).update(from: x + (block * shape[dimension] + index) * inner, count: inner)
            }
        }
        return Tensor.record(result, .indexSelect(inputShape: shape, axis: dimension, indices: indices), inputs: [self])
    }

    /// `result[i][j][k] = self[i][index[i][j][k]][k]` for `axis` 1 (PyTorch's gather).
    /// `index` holds integer values stored as floats and has this tensor's rank.
    public func gather(axis: Int, index: Tensor) -> Tensor {
        let dimension = Shape.normalize(axis: axis, rank: rank, op: "gather")
        guard index.rank == rank else { fatalError("gather: index of shape \(index.shape) must have the rank of input shape \(shape)") }
        for axisIndex in 0..<rank where axisIndex != dimension && index.shape[axisIndex] > shape[axisIndex] {
            fatalError("gather: index shape \(index.shape) is larger than input shape \(shape) outside axis \(dimension)")
        }
        let indices = index.contiguousData()
        let result = Tensor(uninitializedShape: index.shape)
        let outStrides = Shape.contiguousStrides(index.shape)
        let (idx, out) = (indices.floatPointer, result.floatPointer)
        let source = self.dataType == .float32 ? self : contiguousCopy()
        let x = source.floatPointer
        for flat in 0..<index.count {
            var remainder = flat
            var position = 0
            for axisIndex in 0..<rank {
                let coordinate = remainder / outStrides[axisIndex]
                remainder %= outStrides[axisIndex]
                if axisIndex == dimension {
                    let chosen = Int(idx[flat])
                    guard chosen >= 0 && chosen < shape[dimension] else {
                        fatalError("gather: index \(chosen) is out of bounds for axis \(dimension) of shape \(shape)")
                    }
                    position += chosen * source.strides[axisIndex]
                } else {
                    position += coordinate * source.strides[axisIndex]
                }
            }
            out[flat] = x[position]
        }
        return Tensor.record(result, .gather(inputShape: shape, axis: dimension, index: indices), inputs: [self])
    }

    // MARK: Joining and splitting

    /// Joins tensors along an existing `axis`.
    public static func concatenate(_ tensors: [Tensor], axis: Int) -> Tensor {
        guard let first = tensors.first else { fatalError("concatenate: no tensors given") }
        let dimension = Shape.normalize(axis: axis, rank: first.rank, op: "concatenate")
        for tensor in tensors {
            let matches = tensor.rank == first.rank && (0..<first.rank).allSatisfy { $0 == dimension || tensor.shape[$0] == first.shape[$0] }
            if !matches {
                fatalError("concatenate: shapes \(tensors.map(\.shape)) do not match outside axis \(dimension)")
            }
        }
        let sizes = tensors.map { $0.shape[dimension] }
        var newShape = first.shape
        newShape[dimension] = sizes.reduce(0, +)
        if dimension == 1 && first.rank == 4 && tensors.allSatisfy({ $0.layout == .channelsLast && $0.dataType == .float32 }) {
            return record(concatenateChannelsLast(tensors, sizes: sizes, shape: newShape), .concatenate(axis: 1, sizes: sizes), inputs: tensors)
        }
        let outer = first.shape[..<dimension].reduce(1, *)
        let inner = first.shape[(dimension + 1)...].reduce(1, *)
        let result = Tensor(uninitializedShape: newShape)
        let out = result.floatPointer
        let total = newShape[dimension]
        var position = 0
        for (tensor, size) in zip(tensors, sizes) {
            // Keep the row-major copy alive while its memory is read.
            let data = tensor.contiguousData()
            let source = data.floatPointer
            let chunk = size * inner
            for block in 0..<outer {
                (out + block * total * inner + position * inner).update(from: source + block * chunk, count: chunk)
            }
            withExtendedLifetime(data) {}
            position += size
        }
        return record(result, .concatenate(axis: dimension, sizes: sizes), inputs: tensors)
    }

    /// Channel concatenation that keeps the channels-last layout (UNet skip connections).
    private static func concatenateChannelsLast(_ tensors: [Tensor], sizes: [Int], shape: [Int]) -> Tensor {
        let result = Tensor(uninitializedShape: shape, strides: Shape.channelsLastStrides(shape))
        let pixels = shape[0] * shape[2] * shape[3]
        let total = shape[1]
        let out = result.floatPointer
        var start = 0
        for (tensor, size) in zip(tensors, sizes) {
            let source = UnsafePointer(tensor.floatPointer)
            let offset = start
            Parallel.forEach(pixels, grain: Swift.max(1, 4096 / Swift.max(size, 1))) { range in
                for pixel in range {
                    (out + pixel * total + offset).update(from: source + pixel * size, count: size)
                }
            }
            withExtendedLifetime(tensor) {}
            start += size
        }
        return result
    }

    /// Joins tensors along a new `axis`.
    public static func stack(_ tensors: [Tensor], axis: Int = 0) -> Tensor {
        guard let first = tensors.first else { fatalError("stack: no tensors given") }
        for tensor in tensors where tensor.shape != first.shape {
            fatalError("stack: shapes \(tensors.map(\.shape)) differ")
        }
        return concatenate(tensors.map { $0.unsqueezed(axis) }, axis: axis)
    }

    /// Splits along `axis` into pieces of the given sizes (views).
    public func split(sizes: [Int], axis: Int) -> [Tensor] {
        let dimension = Shape.normalize(axis: axis, rank: rank, op: "split")
        guard sizes.reduce(0, +) == shape[dimension], !sizes.contains(where: { $0 < 0 }) else {
            fatalError("split: sizes \(sizes) do not add up to \(shape[dimension]) along axis \(dimension) of shape \(shape)")
        }
        var start = 0
        return sizes.map { size in
            defer { start += size }
            return narrowed(axis: dimension, start: start, length: size)
        }
    }

    /// Splits along `axis` into `count` nearly equal pieces (PyTorch's chunk).
    public func chunked(_ count: Int, axis: Int) -> [Tensor] {
        let dimension = Shape.normalize(axis: axis, rank: rank, op: "chunk")
        guard count > 0 else { fatalError("chunk: count must be positive, got \(count)") }
        let size = (shape[dimension] + count - 1) / count
        var sizes: [Int] = []
        var remaining = shape[dimension]
        while remaining > 0 { sizes.append(Swift.min(size, remaining)); remaining -= size }
        return split(sizes: sizes, axis: dimension)
    }

    /// Pads with a constant. `padding[i]` is `(before, after)` for dimension `i`
    /// counted from the last (PyTorch's `F.pad` order: last dimension first).
    public func padded(_ padding: [(before: Int, after: Int)], value: Float = 0) -> Tensor {
        guard padding.count <= rank else { fatalError("pad: \(padding.count) padding pairs for a tensor of rank \(rank)") }
        var full = [(before: Int, after: Int)](repeating: (0, 0), count: rank)
        for (index, pair) in padding.enumerated() {
            guard pair.before >= 0 && pair.after >= 0 else { fatalError("pad: negative padding \(pair) is not supported") }
            full[rank - 1 - index] = pair
        }
        let newShape = (0..<rank).map { shape[$0] + full[$0].before + full[$0].after }
        let result = Tensor.full(value, newShape)
        var interiorOffset = 0
        for axis in 0..<rank { interiorOffset += full[axis].before * result.strides[axis] }
        let interior = Tensor(storage: result.storage, shape: shape, strides: result.strides, offset: interiorOffset)
        let source = dataType == .float32 ? self : contiguousCopy()
        let loop = StridedLoop(shape: shape, operandStrides: [interior.strides, source.strides])
        let (x, out) = (UnsafePointer(source.floatPointer), interior.floatPointer)
        let sourceStride = loop.innerStrides[1]
        let targetStride = loop.innerStrides[0]
        loop.forEachRun(in: 0..<loop.runCount) { offsets, count in
            for index in 0..<count { out[offsets[0] + index * targetStride] = x[offsets[1] + index * sourceStride] }
        }
        return Tensor.record(result, .pad(inputShape: shape, padding: full.map { [$0.before, $0.after] }), inputs: [self])
    }
}
