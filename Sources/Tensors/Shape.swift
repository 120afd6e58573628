/// Shape and stride arithmetic, with the error messages that name the op.
public enum Shape {
    /// Number of elements of a shape.
    @inline(__always)
    public static func count(_ shape: [Int]) -> Int {
        var result = 1
        for size in shape { result *= size }
        return result
    }

    /// Stops with a message if any size is negative.
    public static func validate(_ shape: [Int], op: String) {
        if shape.contains(where: { $0 < 0 }) {
            fatalError("\(op): negative dimension in shape \(shape)")
        }
    }

    /// Row-major strides.
    public static func contiguousStrides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var step = 1
        for axis in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[axis] = step
            step *= Swift.max(shape[axis], 1)
        }
        return strides
    }

    /// Channels-last strides for an `[N, C, H, W]` shape.
    public static func channelsLastStrides(_ shape: [Int]) -> [Int] {
        precondition(shape.count == 4)
        let (channels, height, width) = (shape[1], shape[2], shape[3])
        return [height * width * channels, 1, width * channels, channels]
    }

    /// True when `strides` are row-major for `shape` (size-1 dimensions may have any stride).
    public static func isContiguous(shape: [Int], strides: [Int]) -> Bool {
        if shape.contains(0) { return true }
        var expected = 1
        for axis in stride(from: shape.count - 1, through: 0, by: -1) where shape[axis] != 1 {
            if strides[axis] != expected { return false }
            expected *= shape[axis]
        }
        return true
    }

    /// True when the view covers exactly `count` consecutive elements.
    public static func isDense(shape: [Int], strides: [Int]) -> Bool {
        if shape.contains(0) { return true }
        let axes = (0..<shape.count).filter { shape[$0] != 1 }.sorted { strides[$0] < strides[$1] }
        var expected = 1
        for axis in axes {
            if strides[axis] != expected { return false }
            expected *= shape[axis]
        }
        return true
    }

    /// Maps a possibly negative axis into `0..<rank`.
    public static func normalize(axis: Int, rank: Int, op: String) -> Int {
        let normalized = axis < 0 ? axis + rank : axis
        guard normalized >= 0 && normalized < Swift.max(rank, 1) else {
            fatalError("\(op): axis \(axis) is out of range for a tensor of rank \(rank)")
        }
        return normalized
    }

    /// Normalised, sorted, de-duplicated axes; `nil` means all axes.
    public static func normalize(axes: [Int]?, rank: Int, op: String) -> [Int] {
        guard let axes else { return Array(0..<rank) }
        let normalized = Set(axes.map { normalize(axis: $0, rank: rank, op: op) })
        return normalized.sorted()
    }

    /// The broadcast shape of two shapes (NumPy rules), or a stop naming the op.
    public static func broadcast(_ lhs: [Int], _ rhs: [Int], op: String) -> [Int] {
        let rank = Swift.max(lhs.count, rhs.count)
        var result = [Int](repeating: 1, count: rank)
        for index in 0..<rank {
            let left = index < rank - lhs.count ? 1 : lhs[index - (rank - lhs.count)]
            let right = index < rank - rhs.count ? 1 : rhs[index - (rank - rhs.count)]
            if left == right || right == 1 { result[index] = left }
            else if left == 1 { result[index] = right }
            else { fatalError("\(op): shapes \(lhs) and \(rhs) cannot be broadcast together") }
        }
        return result
    }

    /// Strides that read a tensor of `shape`/`strides` as if expanded to `target`
    /// (zero stride on broadcast dimensions).
    public static func broadcastStrides(shape: [Int], strides: [Int], to target: [Int]) -> [Int] {
        let extra = target.count - shape.count
        var result = [Int](repeating: 0, count: target.count)
        for axis in 0..<shape.count where shape[axis] != 1 || target[axis + extra] == 1 {
            result[axis + extra] = shape[axis] == 1 ? 0 : strides[axis]
        }
        return result
    }
}
