import Foundation
@testable import Tensors
import TensorsAVX512
import XCTest

/// The register-tiled products behind the Winograd convolutions and skinny GEMMs, on both
/// instruction sets, against a float64 product: AVX2 tiles (6×16, 4×16, 4×8) always, the AVX-512
/// tiles (8×32, 4×32) only where the CPU has AVX-512 (the output says which ran).
final class MicroKernelTests: XCTestCase {
    override func tearDown() {
        KernelSet.current = KernelSet.best
    }

    func testBothInstructionSetsMatchTheReference() {
        let sets = [KernelSet.avx2, .avx512].filter(KernelSet.isSupported)
        print("MicroKernelTests: \(CPUFeatures.modelName) (\(CPUFeatures.summary)); checking \(sets.map(\.rawValue).joined(separator: " and "))"
              + (sets.count == 1 ? " (no AVX-512 on this CPU: the AVX-512 kernels were not run)" : ""))
        var generator = RandomGenerator(seed: 9)
        // rows (multiple of 4), columns (multiple of 8), depth, A transposed in memory?
        for (rows, columns, depth, depthMajor) in [(4, 8, 3, false), (12, 40, 17, false), (20, 96, 64, true), (8, 32, 1, false), (28, 72, 33, true), (12, 64, 130, false)] {
            let a = Tensor.randn([rows * depth], generator: &generator).toArray()
            let b = Tensor.randn([depth * columns], generator: &generator).toArray()
            let start = Tensor.randn([rows * columns], generator: &generator).toArray()
            let (aRowStride, aDepthStride) = depthMajor ? (1, rows) : (depth, 1)
            for accumulate in [false, true] {
                var expected = [Double](repeating: 0, count: rows * columns)
                for row in 0..<rows {
                    for column in 0..<columns {
                        var sum = accumulate ? Double(start[row * columns + column]) : 0
                        for index in 0..<depth {
                            sum += Double(a[row * aRowStride + index * aDepthStride]) * Double(b[index * columns + column])
                        }
                        expected[row * columns + column] = sum
                    }
                }
                for set in sets {
                    KernelSet.current = set
                    var c = start
                    a.withUnsafeBufferPointer { a in
                        b.withUnsafeBufferPointer { b in
                            c.withUnsafeMutableBufferPointer { c in
                                MicroKernels.multiply(rows: rows, columns: columns, depth: depth, a: a.baseAddress!, aRowStride: aRowStride,
                                                      aDepthStride: aDepthStride, b: b.baseAddress!, bRowStride: columns,
                                                      c: c.baseAddress!, cRowStride: columns, accumulate: accumulate)
                            }
                        }
                    }
                    let error = zip(c, expected).map { abs(Double($0) - $1) }.max() ?? 0
                    XCTAssertLessThan(error, 1e-4 * Double(depth).squareRoot(), "\(set) \(rows)×\(columns)×\(depth) accumulate \(accumulate)")
                }
            }
        }
    }

    /// The small transpose (8×8 register blocks, edges one by one) and the row helpers against plain loops,
    /// at sizes with and without edges on either side (a 3×3 kernel's 9 taps, channel counts not a multiple of 8).
    func testSmallTransposeAndRowHelpers() {
        for (rows, columns) in [(1, 1), (3, 9), (8, 9), (9, 8), (16, 16), (17, 9), (9, 17), (64, 9), (9, 130)] {
            let source = (0..<(rows * columns)).map { Float($0) * 0.5 - 3 }
            var target = [Float](repeating: .nan, count: rows * columns)
            source.withUnsafeBufferPointer { source in
                target.withUnsafeMutableBufferPointer { target in
                    MicroKernels.transpose(source.baseAddress!, rows: rows, columns: columns, into: target.baseAddress!)
                }
            }
            for row in 0..<rows {
                for column in 0..<columns {
                    XCTAssertEqual(target[column * rows + row], source[row * columns + column], "\(rows)×\(columns) at (\(row), \(column))")
                }
            }
        }
        for count in [1, 7, 8, 9, 16, 23] {
            let source = (0..<count).map { Float($0) + 0.25 }
            var copied = [Float](repeating: .nan, count: count), summed = (0..<count).map { Float($0) * 2 }
            source.withUnsafeBufferPointer { source in
                copied.withUnsafeMutableBufferPointer { MicroKernels.copyRow(source.baseAddress!, into: $0.baseAddress!, count: count) }
                summed.withUnsafeMutableBufferPointer { MicroKernels.addRow(source.baseAddress!, into: $0.baseAddress!, count: count) }
            }
            XCTAssertEqual(copied, source, "copyRow of \(count)")
            XCTAssertEqual(summed, (0..<count).map { Float($0) * 3 + 0.25 }, "addRow of \(count)")
        }
    }
}
