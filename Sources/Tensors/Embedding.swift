import Foundation

extension Tensor {
    /// Rows of the `[count, width]` table `self` at `indices`, shaped `indexShape + [width]`.
    public func embedding(indices: [Int], indexShape: [Int]? = nil) -> Tensor {
        guard rank == 2 else { fatalError("embedding: the table must be 2-d, got shape \(shape)") }
        let shapeOfIndices = indexShape ?? [indices.count]
        guard Shape.count(shapeOfIndices) == indices.count else {
            fatalError("embedding: index shape \(shapeOfIndices) does not hold \(indices.count) indices")
        }
        let (rows, width) = (shape[0], shape[1])
        let table = contiguousData()
        let result = Tensor(uninitializedShape: shapeOfIndices + [width])
        let (source, out) = (table.floatPointer, result.floatPointer)
        for (position, index) in indices.enumerated() {
            guard index >= 0 && index < rows else { fatalError("embedding: index \(index) is out of range for a table of \(rows) rows") }
            (out + position * width).update(from: source + index * width, count: width)
        }
        return Tensor.record(result, .embedding(indices: indices, tableShape: shape), inputs: [self])
    }
}
