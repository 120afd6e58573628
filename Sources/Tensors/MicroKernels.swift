import Foundation
import TensorsAVX512

// MARK: - Register-blocked matrix product

/// A small matrix-product kernel for the Winograd blocks, where the inner
/// dimension is a channel count (or a block of tiles) and OpenBLAS spends more
/// time packing than multiplying. 6×16 and 4×16 register tiles (12 and 8 accumulators).
enum MicroKernels {
    typealias Vector = SIMD8<Float>

    @inline(__always)
    static func load(_ pointer: UnsafePointer<Float>) -> Vector {
        UnsafeRawPointer(pointer).loadUnaligned(as: Vector.self)
    }

    @inline(__always)
    static func load(_ pointer: UnsafeMutablePointer<Float>) -> Vector {
        UnsafeRawPointer(pointer).loadUnaligned(as: Vector.self)
    }

    /// The first `count` lanes from memory, the rest zero.
    @inline(__always)
    static func load(_ pointer: UnsafePointer<Float>, count: Int) -> Vector {
        if count == 8 { return load(pointer) }
        var result = Vector()
        for lane in 0..<count { result[lane] = pointer[lane] }
        return result
    }

    @inline(__always)
    static func store(_ value: Vector, _ pointer: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(pointer).storeBytes(of: value, as: Vector.self)
    }

    /// Stores the first `count` lanes.
    @inline(__always)
    static func store(_ value: Vector, _ pointer: UnsafeMutablePointer<Float>, count: Int) {
        if count == 8 { store(value, pointer); return }
        for lane in 0..<count { pointer[lane] = value[lane] }
    }

    /// The 8×8 block whose rows start at `source`, `source + sourceStride`, … written transposed: its
    /// columns to `target`, `target + targetStride`, ….
    @inline(__always)
    static func transposeBlock(from source: UnsafePointer<Float>, stride sourceStride: Int,
                               to target: UnsafeMutablePointer<Float>, stride targetStride: Int) {
        var block = (load(source), load(source + sourceStride), load(source + 2 * sourceStride), load(source + 3 * sourceStride),
                     load(source + 4 * sourceStride), load(source + 5 * sourceStride), load(source + 6 * sourceStride),
                     load(source + 7 * sourceStride))
        transpose(&block)
        store(block.0, target); store(block.1, target + targetStride)
        store(block.2, target + 2 * targetStride); store(block.3, target + 3 * targetStride)
        store(block.4, target + 4 * targetStride); store(block.5, target + 5 * targetStride)
        store(block.6, target + 6 * targetStride); store(block.7, target + 7 * targetStride)
    }

    /// The row-major `rows × columns` matrix at `source` written transposed (`columns × rows`) to
    /// `target`: 8×8 blocks through registers, the edges one by one. For small matrices in cache
    /// (a kernel's `[C][taps]` and back).
    static func transpose(_ source: UnsafePointer<Float>, rows: Int, columns: Int, into target: UnsafeMutablePointer<Float>) {
        var row = 0
        while row + 8 <= rows {
            var column = 0
            while column + 8 <= columns {
                transposeBlock(from: source + row * columns + column, stride: columns, to: target + column * rows + row, stride: rows)
                column += 8
            }
            for rest in column..<columns {
                for lane in 0..<8 { target[rest * rows + row + lane] = source[(row + lane) * columns + rest] }
            }
            row += 8
        }
        for rest in row..<rows {
            for column in 0..<columns { target[column * rows + rest] = source[rest * columns + column] }
        }
    }

    /// `target[0..<count] = source[0..<count]`, a vector at a time (`update(from:)` is a call per row).
    @inline(__always)
    static func copyRow(_ source: UnsafePointer<Float>, into target: UnsafeMutablePointer<Float>, count: Int) {
        var index = 0
        while index + 8 <= count {
            store(load(source + index), target + index)
            index += 8
        }
        while index < count { target[index] = source[index]; index += 1 }
    }

    /// `target[0..<count] += source[0..<count]`, a vector at a time.
    @inline(__always)
    static func addRow(_ source: UnsafePointer<Float>, into target: UnsafeMutablePointer<Float>, count: Int) {
        var index = 0
        while index + 8 <= count {
            store(load(target + index) + load(source + index), target + index)
            index += 8
        }
        while index < count { target[index] += source[index]; index += 1 }
    }

    /// Transposes the 8×8 block whose rows are `block`: three rounds of "even lanes,
    /// then odd lanes" of each row pair.
    @inline(__always)
    static func transpose(_ block: inout (Vector, Vector, Vector, Vector, Vector, Vector, Vector, Vector)) {
        @inline(__always) func unzip(_ a: Vector, _ b: Vector) -> (Vector, Vector) {
            let joined = SIMD16(lowHalf: a, highHalf: b)
            return (joined.evenHalf, joined.oddHalf)
        }
        for _ in 0..<3 {
            let (a0, a4) = unzip(block.0, block.1), (a1, a5) = unzip(block.2, block.3)
            let (a2, a6) = unzip(block.4, block.5), (a3, a7) = unzip(block.6, block.7)
            block = (a0, a1, a2, a3, a4, a5, a6, a7)
        }
    }

    /// `C (+)= A · B` with `rows` a multiple of 4 and `columns` a multiple of 8
    /// (6-row tiles where the remaining rows allow, then 4-row tiles).
    /// `A[i][k]` is `a[i · aRowStride + k · aDepthStride]`; B and C are row-major.
    /// On AVX-512 CPUs the columns in multiples of 32 go to `AVX512MicroKernels` (8×32 tiles)
    /// and the rest stay here, for depths where the wider tiles measured faster (Zen 4, Winograd
    /// forward, 2 threads, AVX-512 against AVX2: 32 input channels 7.1 against 10.4 ms, 128: 10.6
    /// against 11.5 ms, 320: 29.9 against 36.0 ms; but 64: 10.7 against 7.9 ms and 16.6 against 12.8 ms).
    static func multiply(rows: Int, columns: Int, depth: Int,
                         a: UnsafePointer<Float>, aRowStride: Int, aDepthStride: Int,
                         b: UnsafePointer<Float>, bRowStride: Int,
                         c: UnsafeMutablePointer<Float>, cRowStride: Int, accumulate: Bool) {
        var column = 0
        if KernelSet.current == .avx512 && columns >= 32 && (depth <= 32 || depth >= 128) {
            column = columns / 32 * 32
            AVX512MicroKernels.multiply(rows: rows, columns: column, depth: depth, a: a, aRowStride: aRowStride, aDepthStride: aDepthStride,
                                        b: b, bRowStride: bRowStride, c: c, cRowStride: cRowStride, accumulate: accumulate)
        }
        while column < columns {
            let wide = column + 16 <= columns
            var row = 0
            while wide && row + 6 <= rows && rows - row != 8 {
                kernel6x16(depth: depth, a: a + row * aRowStride, aRowStride: aRowStride, aDepthStride: aDepthStride,
                           b: b + column, bRowStride: bRowStride, c: c + row * cRowStride + column, cRowStride: cRowStride, accumulate: accumulate)
                row += 6
            }
            while row < rows {
                if wide {
                    kernel4x16(depth: depth, a: a + row * aRowStride, aRowStride: aRowStride, aDepthStride: aDepthStride,
                               b: b + column, bRowStride: bRowStride, c: c + row * cRowStride + column, cRowStride: cRowStride, accumulate: accumulate)
                } else {
                    kernel4x8(depth: depth, a: a + row * aRowStride, aRowStride: aRowStride, aDepthStride: aDepthStride,
                              b: b + column, bRowStride: bRowStride, c: c + row * cRowStride + column, cRowStride: cRowStride, accumulate: accumulate)
                }
                row += 4
            }
            column += wide ? 16 : 8
        }
    }

    @inline(never)
    static func kernel4x16(depth: Int, a: UnsafePointer<Float>, aRowStride: Int, aDepthStride: Int,
                           b: UnsafePointer<Float>, bRowStride: Int,
                           c: UnsafeMutablePointer<Float>, cRowStride: Int, accumulate: Bool) {
        var c00 = Vector(), c01 = Vector(), c10 = Vector(), c11 = Vector()
        var c20 = Vector(), c21 = Vector(), c30 = Vector(), c31 = Vector()
        var ap = a, bp = b
        let r1 = aRowStride, r2 = aRowStride &* 2, r3 = aRowStride &* 3
        for _ in 0..<depth {
            let b0 = load(bp), b1 = load(bp + 8)
            let a0 = Vector(repeating: ap[0]), a1 = Vector(repeating: ap[r1])
            let a2 = Vector(repeating: ap[r2]), a3 = Vector(repeating: ap[r3])
            c00.addProduct(a0, b0); c01.addProduct(a0, b1)
            c10.addProduct(a1, b0); c11.addProduct(a1, b1)
            c20.addProduct(a2, b0); c21.addProduct(a2, b1)
            c30.addProduct(a3, b0); c31.addProduct(a3, b1)
            ap += aDepthStride
            bp += bRowStride
        }
        let (s1, s2, s3) = (cRowStride, cRowStride &* 2, cRowStride &* 3)
        if accumulate {
            c00 += load(c); c01 += load(c + 8)
            c10 += load(c + s1); c11 += load(c + s1 + 8)
            c20 += load(c + s2); c21 += load(c + s2 + 8)
            c30 += load(c + s3); c31 += load(c + s3 + 8)
        }
        store(c00, c); store(c01, c + 8)
        store(c10, c + s1); store(c11, c + s1 + 8)
        store(c20, c + s2); store(c21, c + s2 + 8)
        store(c30, c + s3); store(c31, c + s3 + 8)
    }

    @inline(never)
    static func kernel6x16(depth: Int, a: UnsafePointer<Float>, aRowStride: Int, aDepthStride: Int,
                           b: UnsafePointer<Float>, bRowStride: Int,
                           c: UnsafeMutablePointer<Float>, cRowStride: Int, accumulate: Bool) {
        var c00 = Vector(), c01 = Vector(), c10 = Vector(), c11 = Vector(), c20 = Vector(), c21 = Vector()
        var c30 = Vector(), c31 = Vector(), c40 = Vector(), c41 = Vector(), c50 = Vector(), c51 = Vector()
        var ap = a, bp = b
        let r1 = aRowStride, r2 = aRowStride &* 2, r3 = aRowStride &* 3, r4 = aRowStride &* 4, r5 = aRowStride &* 5
        for _ in 0..<depth {
            let b0 = load(bp), b1 = load(bp + 8)
            var s = Vector(repeating: ap[0]); c00.addProduct(s, b0); c01.addProduct(s, b1)
            s = Vector(repeating: ap[r1]); c10.addProduct(s, b0); c11.addProduct(s, b1)
            s = Vector(repeating: ap[r2]); c20.addProduct(s, b0); c21.addProduct(s, b1)
            s = Vector(repeating: ap[r3]); c30.addProduct(s, b0); c31.addProduct(s, b1)
            s = Vector(repeating: ap[r4]); c40.addProduct(s, b0); c41.addProduct(s, b1)
            s = Vector(repeating: ap[r5]); c50.addProduct(s, b0); c51.addProduct(s, b1)
            ap += aDepthStride
            bp += bRowStride
        }
        let (s1, s2, s3, s4, s5) = (cRowStride, cRowStride &* 2, cRowStride &* 3, cRowStride &* 4, cRowStride &* 5)
        if accumulate {
            c00 += load(c); c01 += load(c + 8)
            c10 += load(c + s1); c11 += load(c + s1 + 8)
            c20 += load(c + s2); c21 += load(c + s2 + 8)
            c30 += load(c + s3); c31 += load(c + s3 + 8)
            c40 += load(c + s4); c41 += load(c + s4 + 8)
            c50 += load(c + s5); c51 += load(c + s5 + 8)
        }
        store(c00, c); store(c01, c + 8)
        store(c10, c + s1); store(c11, c + s1 + 8)
        store(c20, c + s2); store(c21, c + s2 + 8)
        store(c30, c + s3); store(c31, c + s3 + 8)
        store(c40, c + s4); store(c41, c + s4 + 8)
        store(c50, c + s5); store(c51, c + s5 + 8)
    }

    @inline(never)
    static func kernel4x8(depth: Int, a: UnsafePointer<Float>, aRowStride: Int, aDepthStride: Int,
                          b: UnsafePointer<Float>, bRowStride: Int,
                          c: UnsafeMutablePointer<Float>, cRowStride: Int, accumulate: Bool) {
        var c0 = Vector(), c1 = Vector(), c2 = Vector(), c3 = Vector()
        var ap = a, bp = b
        let r1 = aRowStride, r2 = aRowStride &* 2, r3 = aRowStride &* 3
        for _ in 0..<depth {
            let b0 = load(bp)
            c0.addProduct(Vector(repeating: ap[0]), b0)
            c1.addProduct(Vector(repeating: ap[r1]), b0)
            c2.addProduct(Vector(repeating: ap[r2]), b0)
            c3.addProduct(Vector(repeating: ap[r3]), b0)
            ap += aDepthStride
            bp += bRowStride
        }
        let (s1, s2, s3) = (cRowStride, cRowStride &* 2, cRowStride &* 3)
        if accumulate {
            c0 += load(c); c1 += load(c + s1); c2 += load(c + s2); c3 += load(c + s3)
        }
        store(c0, c); store(c1, c + s1); store(c2, c + s2); store(c3, c + s3)
    }
}
