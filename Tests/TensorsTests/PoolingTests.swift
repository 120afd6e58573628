import Tensors
import TestSupport
import XCTest

final class PoolingTests: XCTestCase {
    private func random(_ shape: [Int], seed: UInt64) -> Tensor {
        var generator = RandomGenerator(seed: seed)
        return Tensor.randn(shape, generator: &generator)
    }

    /// Distinct values at least 0.1 apart, so a finite-difference step never changes a maximum.
    private func distinct(_ shape: [Int], seed: UInt64) -> Tensor {
        var generator = RandomGenerator(seed: seed)
        var values = (0..<Shape.count(shape)).map { Float($0) * 0.1 - 1 }
        values.shuffle(using: &generator)
        return Tensor(values, shape: shape)
    }

    /// 1×1×4×4: [[3 1 4 1] [5 9 2 6] [5 3 5 8] [9 7 9 3]].
    private let square = Tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3], shape: [1, 1, 4, 4])
    /// 1×1×2×3: [[1 2 3] [4 5 6]].
    private let small = Tensor([1, 2, 3, 4, 5, 6], shape: [1, 1, 2, 3])
    /// 1×1×5×7: (0 ..< 35)^1.5 / 10.
    private var ramp: Tensor { Tensor((0..<35).map { Float(Foundation.pow(Double($0), 1.5) / 10) }, shape: [1, 1, 5, 7]) }

    /// Runs `body` on the tensor as given and stored channels-last (with a few copies
    /// along the channel axis, so the channel loop is exercised).
    private func forEachLayout(_ tensor: Tensor, _ body: (Tensor, String) -> Void) {
        body(tensor, "contiguous")
        body(tensor.withLayout(.channelsLast), "channels-last")
        let widened = Tensor.concatenate([tensor, tensor, tensor], axis: 1).withLayout(.channelsLast)
        body(widened.narrowed(axis: 1, start: 1, length: 1), "narrowed channels-last")
    }

    // MARK: Values against hand-worked (and PyTorch-checked) results

    func testMaxPoolValues() {
        forEachLayout(square) { x, label in
            assertClose(x.maxPool2d(kernelSize: 2), Tensor([9, 6, 9, 9], shape: [1, 1, 2, 2]), label)
            assertClose(x.maxPool2d(kernelSize: 3, stride: 2, padding: 1), Tensor([9, 9, 9, 9], shape: [1, 1, 2, 2]), label)
            assertClose(x.maxPool2d(kernelSize: 2, stride: 1), Tensor([9, 9, 6, 9, 9, 8, 9, 9, 9], shape: [1, 1, 3, 3]), label)
        }
    }

    func testMaxPoolGradientGoesToFirstMaximum() {
        // Every window's maximum is the 9 at (1, 1), which comes first in scan order.
        let x = square.detach()
        x.requiresGrad = true
        x.maxPool2d(kernelSize: 3, stride: 2, padding: 1).backward(Tensor([1, 2, 3, 4], shape: [1, 1, 2, 2]))
        var expected = [Float](repeating: 0, count: 16)
        expected[5] = 10
        assertClose(x.grad!, Tensor(expected, shape: [1, 1, 4, 4]))
    }

    func testMaxPoolPropagatesNaN() {
        let x = Tensor([1, .nan, 3, 2], shape: [1, 1, 2, 2])
        XCTAssertTrue(x.maxPool2d(kernelSize: 2).item.isNaN)
    }

    func testAvgPoolValues() {
        forEachLayout(square) { x, label in
            assertClose(x.avgPool2d(kernelSize: 2), Tensor([4.5, 3.25, 6, 6.25], shape: [1, 1, 2, 2]), label)
            // Padding counts in the divisor: the corner window is (3 + 1 + 5 + 9) / 9.
            assertClose(x.avgPool2d(kernelSize: 3, stride: 2, padding: 1),
                        Tensor([2, 23 / 9, 38 / 9, 52 / 9], shape: [1, 1, 2, 2]), label)
            assertClose(x.avgPool2d(kernelSize: 3, stride: 1, padding: 1), Tensor([
                2, 2.6666667, 2.5555556, 1.4444444, 2.8888888, 4.111111, 4.3333335, 2.8888888,
                4.2222223, 6, 5.7777777, 3.6666667, 2.6666667, 4.2222223, 3.8888888, 2.7777777,
            ], shape: [1, 1, 4, 4]), label)
        }
    }

    func testAvgPoolGradient() {
        let x = square.detach()
        x.requiresGrad = true
        x.avgPool2d(kernelSize: 3, stride: 2, padding: 1).backward(Tensor([1, 2, 3, 4], shape: [1, 1, 2, 2]))
        assertClose(x.grad!, Tensor([1, 3, 2, 2, 4, 10, 6, 6, 3, 7, 4, 4, 3, 7, 4, 4].map { $0 / 9 }, shape: [1, 1, 4, 4]))
    }

    func testUpsampleNearestValues() {
        forEachLayout(small) { x, label in
            assertClose(x.upsampleNearest(scaleFactor: 2), Tensor([
                1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3,
                4, 4, 5, 5, 6, 6, 4, 4, 5, 5, 6, 6,
            ], shape: [1, 1, 4, 6]), label)
            let tripled = x.upsampleNearest(scaleFactor: 3)
            XCTAssertEqual(tripled.shape, [1, 1, 6, 9])
            XCTAssertEqual(tripled[0, 0, 2, 5], 2)
            XCTAssertEqual(tripled[0, 0, 3, 6], 6)
            assertClose(x.upsampleNearest(scaleFactor: 1), x, label)
        }
    }

    func testUpsampleNearestGradientSumsEachBlock() {
        let x = small.detach()
        x.requiresGrad = true
        x.upsampleNearest(scaleFactor: 2).backward(Tensor((0..<24).map { Float($0) }, shape: [1, 1, 4, 6]))
        // Block (0, 0) holds 0, 1, 6, 7.
        assertClose(x.grad!, Tensor([14, 22, 30, 62, 70, 78], shape: [1, 1, 2, 3]))
    }

    func testResizedBilinearValues() {
        forEachLayout(small) { x, label in
            // Upsizing, half-pixel centres: rows sample at 0, 0.25, 0.75, 1 (clamped), columns at 0, 0.4, 1, 1.6, 2.
            assertClose(x.resizedBilinear(height: 4, width: 5), Tensor([
                1, 1.4, 2, 2.6, 3, 1.75, 2.15, 2.75, 3.35, 3.75,
                3.25, 3.65, 4.25, 4.85, 5.25, 4, 4.4, 5, 5.6, 6,
            ], shape: [1, 1, 4, 5]), relative: 1e-6, label)
            // Corners aligned: rows at 0, 1/3, 2/3, 1; columns at 0, 0.5, 1, 1.5, 2.
            assertClose(x.resizedBilinear(height: 4, width: 5, alignCorners: true), Tensor([
                1, 1.5, 2, 2.5, 3, 2, 2.5, 3, 3.5, 4, 3, 3.5, 4, 4.5, 5, 4, 4.5, 5, 5.5, 6,
            ], shape: [1, 1, 4, 5]), relative: 1e-6, label)
        }
        forEachLayout(ramp) { x, label in
            // Downsizing (values from PyTorch 2.13).
            assertClose(x.resizedBilinear(height: 2, width: 3), Tensor([
                1.6110439, 2.5016122, 3.5590785, 11.402823, 13.133181, 14.947742,
            ], shape: [1, 1, 2, 3]), relative: 1e-6, label)
            assertClose(x.resizedBilinear(height: 2, width: 3, alignCorners: true), Tensor([
                0, 0.5196152, 1.4696939, 14.816208, 17.260069, 19.825237,
            ], shape: [1, 1, 2, 3]), relative: 1e-6, label)
            assertClose(x.resizedBilinear(height: 3, width: 10), Tensor([
                0.6173419, 0.72930646, 0.8878258, 1.0751793, 1.2913233, 1.5226269, 1.7685074, 2.0356047, 2.3160386, 2.5422013,
                5.2383204, 5.5524554, 5.957106, 6.3704734, 6.7960315, 7.228895, 7.6690106, 8.120619, 8.579972, 8.944272,
                13.085275, 13.5064, 14.046031, 14.592239, 15.147771, 15.70895, 16.27575, 16.851545, 17.433466, 17.893362,
            ], shape: [1, 1, 3, 10]), relative: 1e-6, label)
            assertClose(x.resizedBilinear(height: 1, width: 1), Tensor([7.0092797], shape: [1, 1, 1, 1]), relative: 1e-6, label)
            assertClose(x.resizedBilinear(height: 1, width: 1, alignCorners: true), Tensor([0], shape: [1, 1, 1, 1]), label)
            assertClose(x.resizedBilinear(height: 5, width: 7), x, label)
        }
    }

    func testResizedBilinearGradients() {
        let x = small.detach()
        x.requiresGrad = true
        x.resizedBilinear(height: 4, width: 5).backward(Tensor((0..<20).map { Float($0) }, shape: [1, 1, 4, 5]))
        assertClose(x.grad!, Tensor([11.2, 18.45, 21.6, 39.2, 49.95, 49.6], shape: [1, 1, 2, 3]), relative: 1e-5)
        let y = ramp.detach()
        y.requiresGrad = true
        y.resizedBilinear(height: 2, width: 3).backward(Tensor([0, 1, 2, 3, 4, 5], shape: [1, 1, 2, 3]))
        assertClose(y.grad!, Tensor([
            0, 0, 0, 0.25, 0, 0.3333335, 0.1666665, 0, 0, 0, 0.75, 0, 1.0000005, 0.4999995,
            0, 0, 0, 0, 0, 0, 0, 0.75, 1.5, 0, 3, 0, 2.5000012, 1.2499988,
            0.25, 0.5, 0, 1, 0, 0.8333337, 0.41666627,
        ], shape: [1, 1, 5, 7]), relative: 1e-5, absolute: 1e-5)
    }

    // MARK: Against simple references on random data, every layout

    private func referencePool(_ x: Tensor, kernel: Int, stride: Int, padding: Int, maximum: Bool) -> Tensor {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let oh = (h + 2 * padding - kernel) / stride + 1, ow = (w + 2 * padding - kernel) / stride + 1
        var out = [Float]()
        for item in 0..<n {
            for channel in 0..<c {
                for outY in 0..<oh {
                    for outX in 0..<ow {
                        var best = -Float.infinity, total = 0.0
                        for ky in 0..<kernel {
                            for kx in 0..<kernel {
                                let y = outY * stride - padding + ky, xx = outX * stride - padding + kx
                                guard y >= 0, y < h, xx >= 0, xx < w else { continue }
                                let value = x[item, channel, y, xx]
                                best = Swift.max(best, value)
                                total += Double(value)
                            }
                        }
                        out.append(maximum ? best : Float(total / Double(kernel * kernel)))
                    }
                }
            }
        }
        return Tensor(out, shape: [n, c, oh, ow])
    }

    func testPoolingMatchesReferenceInEveryLayout() {
        let shapes = [[2, 3, 9, 11], [1, 20, 7, 6], [3, 1, 8, 8], [4, 17, 5, 9]]
        for (index, shape) in shapes.enumerated() {
            let x = random(shape, seed: UInt64(index))
            let permuted = x.permuted(0, 2, 3, 1).contiguous().permuted(0, 3, 1, 2)  // channels-last memory via a view
            let strided = Tensor.concatenate([x, x], axis: 3).narrowed(axis: 3, start: shape[3], length: shape[3])
            for (kernel, stride, padding) in [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0), (3, 3, 0)] {
                let maxExpected = referencePool(x, kernel: kernel, stride: stride, padding: padding, maximum: true)
                let averageExpected = referencePool(x, kernel: kernel, stride: stride, padding: padding, maximum: false)
                for (input, label) in [(x, "contiguous"), (x.withLayout(.channelsLast), "channels-last"), (permuted, "permuted view"), (strided, "strided")] {
                    let pooled = input.maxPool2d(kernelSize: kernel, stride: stride, padding: padding)
                    assertClose(pooled, maxExpected, "max \(shape) \(kernel) \(stride) \(padding) \(label)")
                    assertClose(input.avgPool2d(kernelSize: kernel, stride: stride, padding: padding), averageExpected,
                                relative: 1e-5, absolute: 1e-5, "avg \(shape) \(kernel) \(stride) \(padding) \(label)")
                    if input.layout == .channelsLast {
                        XCTAssertEqual(pooled.strides, Shape.channelsLastStrides(pooled.shape), "channels-last in, channels-last out")
                    }
                }
            }
            for (input, label) in [(x, "contiguous"), (x.withLayout(.channelsLast), "channels-last"), (strided, "strided")] {
                let upsampled = input.upsampleNearest(scaleFactor: 3)
                XCTAssertEqual(upsampled[shape[0] - 1, shape[1] - 1, 3 * shape[2] - 1, 3 * shape[3] - 2], x[shape[0] - 1, shape[1] - 1, shape[2] - 1, shape[3] - 1], label)
                XCTAssertEqual(upsampled[0, 0, 5, 4], x[0, 0, 1, 1], label)
                let resized = input.resizedBilinear(height: 13, width: 4)
                assertClose(resized, x.resizedBilinear(height: 13, width: 4), label)
            }
        }
    }

    // MARK: Finite differences

    func testGradientsByFiniteDifferences() {
        let x = distinct([2, 3, 7, 6], seed: 1)
        for channelsLast in [false, true] {
            func prepare(_ tensor: Tensor) -> Tensor { channelsLast ? tensor.withLayout(.channelsLast) : tensor }
            GradientCheck.check([x]) { xs in prepare(xs[0]).maxPool2d(kernelSize: 2) }
            GradientCheck.check([x]) { xs in prepare(xs[0]).maxPool2d(kernelSize: 3, stride: 2, padding: 1) }
            GradientCheck.check([x]) { xs in prepare(xs[0]).avgPool2d(kernelSize: 3, stride: 2, padding: 1) }
            GradientCheck.check([x]) { xs in prepare(xs[0]).avgPool2d(kernelSize: 2, stride: 1) }
            GradientCheck.check([x]) { xs in prepare(xs[0]).upsampleNearest(scaleFactor: 2) }
            GradientCheck.check([x]) { xs in prepare(xs[0]).upsampleNearest(scaleFactor: 3) }
            for align in [false, true] {
                GradientCheck.check([x]) { xs in prepare(xs[0]).resizedBilinear(height: 11, width: 13, alignCorners: align) }
                GradientCheck.check([x]) { xs in prepare(xs[0]).resizedBilinear(height: 3, width: 4, alignCorners: align) }
                GradientCheck.check([x]) { xs in prepare(xs[0]).resizedBilinear(height: 9, width: 2, alignCorners: align) }
            }
        }
    }

    func testBackwardInBothLayoutsAgrees() {
        // Large enough to spread over the workers, with batch 1 (split over channel blocks).
        for shape in [[1, 32, 12, 10], [3, 5, 12, 10]] {
            let x = distinct(shape, seed: 2)
            let upstreamShapes: [[Int]] = [
                [shape[0], shape[1], 6, 5], [shape[0], shape[1], 6, 5], [shape[0], shape[1], 24, 20], [shape[0], shape[1], 7, 15],
            ]
            let ops: [(Tensor) -> Tensor] = [
                { $0.maxPool2d(kernelSize: 3, stride: 2, padding: 1) },
                { $0.avgPool2d(kernelSize: 2) },
                { $0.upsampleNearest(scaleFactor: 2) },
                { $0.resizedBilinear(height: 7, width: 15) },
            ]
            for (index, op) in ops.enumerated() {
                let upstream = random(upstreamShapes[index], seed: UInt64(10 + index))
                var gradients: [Tensor] = []
                for layout in [TensorLayout.contiguous, .channelsLast] {
                    let leaf = x.withLayout(layout).detach()
                    leaf.requiresGrad = true
                    op(leaf).backward(upstream.withLayout(layout == .contiguous ? .channelsLast : .contiguous))
                    gradients.append(leaf.grad!)
                }
                assertClose(gradients[0], gradients[1], relative: 1e-5, absolute: 1e-6, "op \(index) \(shape)")
            }
        }
    }
}
