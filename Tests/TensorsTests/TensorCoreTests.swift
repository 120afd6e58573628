@testable import Tensors
import TestSupport
import XCTest

final class TensorCoreTests: XCTestCase {
    func testRandomGeneratorIsReproducibleAndDocumented() {
        var first = RandomGenerator(seed: 42)
        var second = RandomGenerator(seed: 42)
        let a = Tensor.randn([1000], generator: &first)
        let b = Tensor.randn([1000], generator: &second)
        XCTAssertEqual(a.toArray(), b.toArray())
        // Fixed values pin the algorithm (xoshiro256** seeded by SplitMix64):
        // any change to it breaks every saved seed, so it must fail here.
        var pinned = RandomGenerator(seed: 0)
        XCTAssertEqual(pinned.next(), 11091344671253066420)
        var uniform = RandomGenerator(seed: 1)
        let values = (0..<3).map { _ in uniform.uniform() }
        // Values checked against an independent Python implementation of the same algorithm.
        XCTAssertEqual(values, [0.7029218, 0.5204366, 0.5741057])
        // Moments of the normal and uniform draws.
        let normals = a.toArray()
        let mean = normals.reduce(0, +) / Float(normals.count)
        let variance = normals.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(normals.count)
        XCTAssertEqual(mean, 0, accuracy: 0.1)
        XCTAssertEqual(variance, 1, accuracy: 0.1)
        var integers = RandomGenerator(seed: 3)
        let draws = Tensor.randint(2, 5, [500], generator: &integers).toArray()
        XCTAssertEqual(Set(draws), [2, 3, 4])
    }

    func testGeneratorStateRoundTrip() {
        var generator = RandomGenerator(seed: 9)
        _ = generator.normal()
        let saved = generator.state
        let expected = (0..<5).map { _ in generator.normal() }
        var restored = RandomGenerator(seed: 0)
        restored.state = saved
        XCTAssertEqual((0..<5).map { _ in restored.normal() }, expected)
    }

    func testHalfPrecisionStorage() {
        let values: [Float] = [0, 1, -2.5, 65504, 1e-4, 3.14159, -1e-8]
        let x = Tensor(values, shape: [7])
        let half = x.converted(to: .float16)
        XCTAssertEqual(half.dataType, .float16)
        XCTAssertEqual(half.converted(to: .float32).toArray(), values.map { Float(Float16($0)) })
        let brain = x.converted(to: .bfloat16)
        let back = brain.converted(to: .float32).toArray()
        XCTAssertEqual(back[1], 1)
        XCTAssertEqual(back[2], -2.5)
        XCTAssertEqual(back[5], 3.140625) // 8 bits of mantissa, round to nearest even
        // Ops read half tensors as float32.
        XCTAssertEqual((half + Tensor([1, 1, 1, 1, 1, 1, 1])).toArray()[1], 2)
        XCTAssertEqual(HalfPrecision.bfloat16Bits(1.00390625), 0x3F80) // a tie rounds to even
        XCTAssertEqual(HalfPrecision.bfloat16Bits(1.01171875), 0x3F82)
        // The vector encoder (eight at a time) equals the scalar rounding, edge values included.
        var generator = RandomGenerator(seed: 12)
        var edge: [Float] = [1.00390625, 1.01171875, -1.00390625, .infinity, -.infinity, .nan, -.nan, 0, -0.0,
                             .greatestFiniteMagnitude, .leastNonzeroMagnitude, Float(bitPattern: 0x7F7F_FFFF), Float(bitPattern: 0x3F80_8000)]
        edge += Tensor.randn([1003], generator: &generator).toArray().map { $0 * 1000 }
        var encoded = [UInt16](repeating: 0, count: edge.count)
        HalfPrecision.encode(edge, into: &encoded, count: edge.count, as: .bfloat16)
        XCTAssertEqual(encoded, edge.map(HalfPrecision.bfloat16Bits))
        // The vector decoders (eight at a time, split over the workers when large) equal the scalar
        // widening on every 16-bit pattern (NaNs compared by bits), twice over to cross the split.
        let words = (0..<(2 << 16) + 5).map { UInt16(truncatingIfNeeded: $0) }
        for type in [DataType.float16, .bfloat16] {
            var decoded = [Float](repeating: 0, count: words.count)
            HalfPrecision.decode(words, into: &decoded, count: words.count, as: type)
            let scalar = words.map { type == .float16 ? HalfPrecision.float(fromFloat16: $0) : HalfPrecision.float(fromBFloat16: $0) }
            XCTAssertEqual(decoded.map(\.bitPattern), scalar.map(\.bitPattern), "\(type)")
        }
    }

    func testViewsShareMemoryAndLayouts() {
        let x = Tensor((0..<24).map(Float.init), shape: [2, 3, 4])
        let transposed = x.transposed(0, 2)
        XCTAssertEqual(transposed.shape, [4, 3, 2])
        XCTAssertFalse(transposed.isContiguous)
        XCTAssertTrue(transposed.isDense)
        XCTAssertTrue(transposed.storage === x.storage)
        XCTAssertEqual(transposed[3, 2, 1], x[1, 2, 3])
        XCTAssertEqual(x.sliced(axis: 2, start: 1, end: 4, step: 2).toArray(), [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23])
        XCTAssertEqual(x.sliced(axis: 1, start: -1).toArray(), [8, 9, 10, 11, 20, 21, 22, 23])
        let image = Tensor((0..<24).map(Float.init), shape: [1, 2, 3, 4])
        let channelsLast = image.withLayout(.channelsLast)
        XCTAssertEqual(channelsLast.layout, .channelsLast)
        XCTAssertEqual(channelsLast.toArray(), image.toArray())
        XCTAssertEqual(channelsLast.contiguous().layout, .contiguous)
        // Elementwise ops keep channels-last.
        XCTAssertEqual((channelsLast + 1).layout, .channelsLast)
        XCTAssertEqual((channelsLast * Tensor([1, 2]).reshaped([1, 2, 1, 1])).layout, .channelsLast)
        XCTAssertEqual((channelsLast * Tensor([1, 2]).reshaped([1, 2, 1, 1])).toArray(), (image * Tensor([1, 2]).reshaped([1, 2, 1, 1])).toArray())
    }

    func testJoinSplitPadExpand() {
        let a = Tensor([1, 2, 3, 4], shape: [2, 2])
        let b = Tensor([5, 6], shape: [2, 1])
        XCTAssertEqual(Tensor.concatenate([a, b], axis: 1).toArray(), [1, 2, 5, 3, 4, 6])
        XCTAssertEqual(Tensor.stack([a, a], axis: 0).shape, [2, 2, 2])
        let pieces = Tensor((0..<10).map(Float.init)).chunked(3, axis: 0)
        XCTAssertEqual(pieces.map(\.shape), [[4], [4], [2]])
        XCTAssertEqual(pieces[2].toArray(), [8, 9])
        XCTAssertEqual(a.padded([(1, 0)]).toArray(), [0, 1, 2, 0, 3, 4])
        XCTAssertEqual(b.expanded([2, 3]).toArray(), [5, 5, 5, 6, 6, 6])
        XCTAssertEqual(a.indexSelect(axis: 0, indices: [1, 1, 0]).toArray(), [3, 4, 3, 4, 1, 2])
        XCTAssertEqual(a.gather(axis: 1, index: Tensor([1, 0], shape: [2, 1])).toArray(), [2, 3])
    }

    func testChannelConcatenationKeepsChannelsLast() {
        var generator = RandomGenerator(seed: 4)
        let a = Tensor.randn([2, 3, 4, 5], generator: &generator), b = Tensor.randn([2, 2, 4, 5], generator: &generator)
        let joined = Tensor.concatenate([a.withLayout(.channelsLast), b.withLayout(.channelsLast)], axis: 1)
        XCTAssertEqual(joined.layout, .channelsLast)
        XCTAssertEqual(joined.toArray(), Tensor.concatenate([a, b], axis: 1).toArray())
        GradientCheck.check([a, b]) { x in Tensor.concatenate([x[0].withLayout(.channelsLast), x[1].withLayout(.channelsLast)], axis: 1) }
    }

    func testReductionValues() {
        let x = Tensor([1, 5, 3, 4, 2, 6], shape: [2, 3])
        XCTAssertEqual(x.sum(axis: 0).toArray(), [5, 7, 9])
        XCTAssertEqual(x.sum(axis: 1, keepDims: true).shape, [2, 1])
        XCTAssertEqual(x.mean().item, 3.5)
        XCTAssertEqual(x.max(axis: 1).toArray(), [5, 6])
        XCTAssertEqual(x.min(axis: 0).toArray(), [1, 2, 3])
        XCTAssertEqual(x.argmax(axis: 1).toArray(), [1, 2])
        XCTAssertEqual(x.argmax().item, 5)
        XCTAssertEqual(x.variance(axes: [1]).toArray(), [4, 4])
        XCTAssertEqual(x.variance(axes: [1], correction: 0).toArray()[0], 8.0 / 3.0, accuracy: 1e-6)
    }

    func testVectorExpMatchesReference() {
        var generator = RandomGenerator(seed: 5)
        let x = Tensor.rand([4099], low: -80, high: 80, generator: &generator)
        let fast = x.exp().toArray()
        let inputs = x.toArray()
        for index in inputs.indices {
            let expected = Foundation.exp(inputs[index])
            XCTAssertEqual(fast[index], expected, accuracy: expected * 3e-7, "exp(\(inputs[index]))")
        }
        XCTAssertEqual(Tensor([100, -100, 0]).exp().toArray(), [.infinity, 0, 1])
        for function in PointwiseFunction.allCases {
            let y = function == .asin ? Tensor.rand([1000], low: -0.99, high: 0.99, generator: &generator)
                : Tensor.rand([1000], low: 0.1, high: 4, generator: &generator)
            let values = y.apply(function).toArray()
            for (index, value) in y.toArray().enumerated() {
                let expected = referenceValue(function, value)
                XCTAssertEqual(values[index], expected, accuracy: 2e-6 * Swift.max(1, Swift.abs(expected)), "\(function)(\(value))")
            }
        }
    }

    private func referenceValue(_ function: PointwiseFunction, _ x: Float) -> Float {
        let value = Double(x)
        switch function {
        case .exp: return Float(Foundation.exp(value))
        case .log: return Float(Foundation.log(value))
        case .sqrt: return Float(value.squareRoot())
        case .rsqrt: return Float(1 / value.squareRoot())
        case .abs: return Swift.abs(x)
        case .sin: return Float(Foundation.sin(value))
        case .cos: return Float(Foundation.cos(value))
        case .tanh: return Float(Foundation.tanh(value))
        case .sigmoid: return Float(1 / (1 + Foundation.exp(-value)))
        case .relu: return Swift.max(x, 0)
        case .silu: return Float(value / (1 + Foundation.exp(-value)))
        case .geluExact: return Float(0.5 * value * (1 + Foundation.erf(value / 2.0.squareRoot())))
        case .geluTanh: return Float(0.5 * value * (1 + Foundation.tanh((2 / Double.pi).squareRoot() * (value + 0.044715 * value * value * value))))
        case .quickGelu: return Float(value / (1 + Foundation.exp(-1.702 * value)))
        case .asin: return Float(Foundation.asin(value))
        }
    }

    func testFastGemmMatchesReference() {
        var generator = RandomGenerator(seed: 11)
        for (m, n, k) in [(1, 1, 1), (17, 33, 9), (130, 70, 64), (64, 300, 5), (7, 2100, 300), (700, 40, 520)] {
            for (transposeA, transposeB) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = Tensor.randn([m * k], generator: &generator)
                let b = Tensor.randn([k * n], generator: &generator)
                let initial = Tensor.randn([m * n], generator: &generator)
                let reference = initial.contiguousCopy()
                let beta: Float = m % 2 == 0 ? 0.5 : 0
                func arguments(_ output: Tensor) -> GemmArguments {
                    GemmArguments(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: 1.5,
                                  a: a.floatPointer, lda: transposeA ? m : k, b: b.floatPointer, ldb: transposeB ? k : n,
                                  beta: beta, c: output.floatPointer, ldc: n)
                }
                Gemm.reference(arguments(reference))
                for (name, runner) in [("blas", Gemm.parallel), ("packed", Gemm.packed), ("packed-serial", Gemm.packedSerial)] as [(String, (GemmArguments) -> Void)] {
                    let output = initial.contiguousCopy()
                    runner(arguments(output))
                    assertClose(output, reference, relative: 1e-4, absolute: 1e-4, "\(name) gemm \(m)x\(n)x\(k) \(transposeA) \(transposeB)")
                }
            }
        }
    }

    /// The small-operand kernels (Linear layers on every pixel, their weight gradients, 1×1
    /// convolutions) against the reference: overwritten and accumulated C, a padded C, the
    /// last rows past a multiple of four, on the workers and on one thread.
    func testSkinnyGemmMatchesReference() {
        var generator = RandomGenerator(seed: 12)
        // (m, n, k, transposeA, transposeB)
        let shapes = [(1001, 64, 64, false, true), (1003, 24, 7, false, false), (389, 8, 100, false, true), (10, 16, 3, false, false),
                      (64, 64, 2050, true, false), (12, 40, 300, true, false), (4, 8, 1, true, false), (500, 128, 128, false, false)]
        for (m, n, k, transposeA, transposeB) in shapes {
            for beta: Float in [0, 1] {
                let ldc = n + 8
                let a = Tensor.randn([m * k], generator: &generator)
                let b = Tensor.randn([k * n], generator: &generator)
                let initial = Tensor.randn([m * ldc], generator: &generator)
                let reference = initial.contiguousCopy()
                func arguments(_ output: Tensor) -> GemmArguments {
                    GemmArguments(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k,
                                  a: a.floatPointer, lda: transposeA ? m : k, b: b.floatPointer, ldb: transposeB ? k : n,
                                  beta: beta, c: output.floatPointer, ldc: ldc)
                }
                Gemm.reference(arguments(reference))
                XCTAssertTrue(SkinnyGemm.suits(arguments(reference)), "\(m)x\(n)x\(k)")
                for parallel in [true, false] {
                    let output = initial.contiguousCopy()
                    SkinnyGemm.run(arguments(output), parallel: parallel)
                    assertClose(output, reference, relative: 1e-4, absolute: 1e-4, "skinny \(m)x\(n)x\(k) \(transposeA) \(transposeB) β \(beta) parallel \(parallel)")
                }
            }
        }
        // What it leaves to BLAS.
        let a = Tensor.zeros([64]), c = Tensor.zeros([64])
        func suits(transposeA: Bool = false, transposeB: Bool = false, m: Int, n: Int, k: Int, alpha: Float = 1, beta: Float = 0) -> Bool {
            SkinnyGemm.suits(GemmArguments(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha,
                                           a: a.floatPointer, lda: 1, b: a.floatPointer, ldb: 1, beta: beta, c: c.floatPointer, ldc: 1))
        }
        XCTAssertFalse(suits(m: 1000, n: 64, k: 64, alpha: 0.5))
        XCTAssertFalse(suits(m: 1000, n: 64, k: 64, beta: 0.5))
        XCTAssertFalse(suits(m: 1000, n: 60, k: 64))
        XCTAssertFalse(suits(m: 1000, n: 256, k: 256))
        XCTAssertFalse(suits(transposeA: true, m: 256, n: 256, k: 1000))
        XCTAssertFalse(suits(transposeA: true, transposeB: true, m: 64, n: 64, k: 1000))
        XCTAssertFalse(suits(transposeA: true, m: 62, n: 64, k: 1000))
        XCTAssertFalse(suits(transposeB: true, m: 1000, n: 64, k: 64), "a Bᵀ with padded rows (ldb 1 ≠ k here)")
    }

    func testEmptyTensors() {
        let empty = Tensor.zeros([2, 0, 3])
        XCTAssertEqual(empty.toArray(), [])
        XCTAssertEqual(empty.converted(to: .float16).converted(to: .float32).shape, [2, 0, 3])
        XCTAssertEqual(empty.transposed(0, 2).contiguous().shape, [3, 0, 2])
        XCTAssertEqual((empty + 1).count, 0)
        XCTAssertEqual(empty.sum(axes: [1]).toArray(), [0, 0, 0, 0, 0, 0])
        let half = Tensor((0..<6).map(Float.init), shape: [2, 3]).converted(to: .float16)
        XCTAssertEqual(half.transposed().converted(to: .float32).toArray(), [0, 3, 1, 4, 2, 5])
        XCTAssertEqual(half.transposed().converted(to: .bfloat16).converted(to: .float32).toArray(), [0, 3, 1, 4, 2, 5])
    }

    func testStorageIsFreed() {
        let before = Storage.allocatedBytes
        do {
            let x = Tensor.ones([1024, 1024])
            XCTAssertGreaterThanOrEqual(Storage.allocatedBytes - before, 4 * 1024 * 1024)
            _ = x
        }
        XCTAssertLessThan(Storage.allocatedBytes - before, 4 * 1024 * 1024)
    }
}
