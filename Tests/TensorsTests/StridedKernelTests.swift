@testable import Tensors
import TestSupport
import XCTest

/// The broadcasting/strided elementwise path against the obvious per-element
/// loop over multi-indices.
final class StridedKernelTests: XCTestCase {
    /// Reads element `index` (row-major over `shape`) of `tensor` broadcast to `shape`.
    private func element(_ tensor: Tensor, broadcastTo shape: [Int], flatIndex: Int) -> Float {
        var remainder = flatIndex
        var coordinates = [Int](repeating: 0, count: shape.count)
        for axis in stride(from: shape.count - 1, through: 0, by: -1) {
            coordinates[axis] = remainder % shape[axis]
            remainder /= shape[axis]
        }
        let extra = shape.count - tensor.rank
        let own = (0..<tensor.rank).map { tensor.shape[$0] == 1 ? 0 : coordinates[$0 + extra] }
        var position = tensor.offset
        for axis in 0..<tensor.rank { position += own[axis] * tensor.strides[axis] }
        return tensor.storage.floats[position]
    }

    func testBinaryOpsOnViewsMatchThePerElementLoop() {
        var generator = RandomGenerator(seed: 99)
        let big = Tensor.randn([4, 5, 6, 7], generator: &generator)
        let cases: [(Tensor, Tensor)] = [
            (big, big.permuted(0, 2, 1, 3).contiguous().permuted(0, 2, 1, 3)),
            (big.permuted(3, 1, 2, 0), Tensor.randn([7, 1, 6, 1], generator: &generator)),
            (big.sliced(axis: 3, start: 1, end: 7, step: 2), Tensor.randn([6, 1], generator: &generator)),
            (big.withLayout(.channelsLast), Tensor.randn([5, 1, 1], generator: &generator)),
            (Tensor.randn([1, 5, 1, 7], generator: &generator), big.transposed(1, 2).transposed(0, 3).transposed(0, 3).transposed(1, 2)),
            (Tensor(scalar: 2), big.narrowed(axis: 1, start: 2, length: 3)),
        ]
        for (lhs, rhs) in cases {
            for (name, operation, reference) in [
                ("add", { (a: Tensor, b: Tensor) in a + b }, { (a: Float, b: Float) in a + b }),
                ("mul", { (a: Tensor, b: Tensor) in a * b }, { (a: Float, b: Float) in a * b }),
                ("div", { (a: Tensor, b: Tensor) in a / b }, { (a: Float, b: Float) in a / b }),
            ] as [(String, (Tensor, Tensor) -> Tensor, (Float, Float) -> Float)] {
                let result = operation(lhs, rhs)
                let values = result.toArray()
                for index in 0..<result.count {
                    let expected = reference(element(lhs, broadcastTo: result.shape, flatIndex: index), element(rhs, broadcastTo: result.shape, flatIndex: index))
                    if values[index] != expected {
                        XCTFail("\(name) \(lhs.shape)/\(lhs.strides) with \(rhs.shape)/\(rhs.strides): element \(index) is \(values[index]), expected \(expected)")
                        break
                    }
                }
            }
        }
    }

    /// Operands dense in one layout merge into a single run, and a few long runs cannot be shared
    /// out; `forEachRunInParallel` cuts such runs into pieces. Every piece must start at its own
    /// place in each operand (a broadcast one included, whose inner stride is 0).
    func testLongRunsCutIntoPiecesMatchThePerElementLoop() {
        XCTAssertEqual(StridedLoop.piecesPerRun(runCount: 1, runLength: 131_072, threads: 2), 8)
        XCTAssertEqual(StridedLoop.piecesPerRun(runCount: 3, runLength: 20_000, threads: 2), 3)
        XCTAssertEqual(StridedLoop.piecesPerRun(runCount: 8, runLength: 20_000, threads: 2), 1)
        var generator = RandomGenerator(seed: 17)
        let image = Tensor.randn([4, 64, 12, 11], generator: &generator).withLayout(.channelsLast)
        let wide = Tensor.randn([3, 20_011], generator: &generator)
        let cases: [(Tensor, Tensor)] = [
            (image, Tensor.randn([4, 64, 12, 11], generator: &generator).withLayout(.channelsLast)),
            (Tensor.randn([33_331], generator: &generator), Tensor.randn([33_331], generator: &generator)),
            (wide, Tensor.randn([3, 1], generator: &generator)),
            (Tensor.randn([3, 1], generator: &generator), wide),
            (Tensor.randn([3, 20_050], generator: &generator).narrowed(axis: 1, start: 39, length: 20_011), wide),
        ]
        for (lhs, rhs) in cases {
            let result = lhs - rhs
            let values = result.toArray()
            for index in 0..<result.count {
                let expected = element(lhs, broadcastTo: result.shape, flatIndex: index) - element(rhs, broadcastTo: result.shape, flatIndex: index)
                if values[index] != expected {
                    XCTFail("\(lhs.shape)/\(lhs.strides) − \(rhs.shape)/\(rhs.strides): element \(index) is \(values[index]), expected \(expected)")
                    break
                }
            }
        }
        // A copy of a view with three long runs takes the same cut.
        let view = Tensor.randn([3, 20_050], generator: &generator).narrowed(axis: 1, start: 39, length: 20_011)
        let copy = view.contiguous().toArray()
        for index in 0..<copy.count where copy[index] != element(view, broadcastTo: view.shape, flatIndex: index) {
            XCTFail("copy: element \(index) is \(copy[index])")
            break
        }
    }

    func testReductionsOverEveryAxisSetMatchTheLoop() {
        var generator = RandomGenerator(seed: 5)
        let x = Tensor.randn([3, 4, 5, 2], generator: &generator)
        let values = x.toArray()
        let axisSets: [[Int]] = [[0], [1], [2], [3], [0, 1], [1, 3], [0, 2], [0, 1, 2, 3], [2, 3], [0, 3]]
        for axes in axisSets {
            let result = x.sum(axes: axes, keepDims: true)
            var expected = [Double](repeating: 0, count: result.count)
            let resultStrides = Shape.contiguousStrides(result.shape)
            for index in 0..<x.count {
                var remainder = index, target = 0
                for axis in stride(from: 3, through: 0, by: -1) {
                    let coordinate = remainder % x.shape[axis]
                    remainder /= x.shape[axis]
                    if !axes.contains(axis) { target += coordinate * resultStrides[axis] }
                }
                expected[target] += Double(values[index])
            }
            assertClose(result.toArray(), expected.map { Float($0) }, relative: 1e-5, absolute: 1e-5, "sum over \(axes)")
        }
    }
}
