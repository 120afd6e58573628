// This module is compiled for AVX-512 (`-target-cpu x86-64-v4`): 16-float vectors live in one
// zmm register and 32 of them are available. Nothing here may run on a CPU without AVX-512;
// `Tensors` calls it only after checking the CPU at run time (`KernelSet`).

/// `C (+)= A · B` register tiles for AVX-512: 8 rows × 32 columns (16 zmm accumulators) and
/// 4 × 32, the AVX-512 counterparts of `Tensors`' AVX2 6×16 and 4×16 tiles.
public enum AVX512MicroKernels {
    typealias Vector = SIMD16<Float>

    @inline(__always)
    static func load(_ pointer: UnsafePointer<Float>) -> Vector {
        UnsafeRawPointer(pointer).loadUnaligned(as: Vector.self)
    }

    @inline(__always)
    static func load(_ pointer: UnsafeMutablePointer<Float>) -> Vector {
        UnsafeRawPointer(pointer).loadUnaligned(as: Vector.self)
    }

    @inline(__always)
    static func store(_ value: Vector, _ pointer: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(pointer).storeBytes(of: value, as: Vector.self)
    }

    /// `C (+)= A · B` for `rows` a multiple of 4 and `columns` a multiple of 32.
    /// `A[i][k]` is `a[i · aRowStride + k · aDepthStride]`; B and C are row-major.
    public static func multiply(rows: Int, columns: Int, depth: Int,
                                a: UnsafePointer<Float>, aRowStride: Int, aDepthStride: Int,
                                b: UnsafePointer<Float>, bRowStride: Int,
                                c: UnsafeMutablePointer<Float>, cRowStride: Int, accumulate: Bool) {
        precondition(rows % 4 == 0 && columns % 32 == 0, "AVX512MicroKernels.multiply: rows \(rows) and columns \(columns)")
        var column = 0
        while column < columns {
            var row = 0
            while row + 8 <= rows {
                kernel8x32(depth: depth, a: a + row * aRowStride, aRowStride: aRowStride, aDepthStride: aDepthStride,
                           b: b + column, bRowStride: bRowStride, c: c + row * cRowStride + column, cRowStride: cRowStride, accumulate: accumulate)
                row += 8
            }
            if row < rows {
                kernel4x32(depth: depth, a: a + row * aRowStride, aRowStride: aRowStride, aDepthStride: aDepthStride,
                           b: b + column, bRowStride: bRowStride, c: c + row * cRowStride + column, cRowStride: cRowStride, accumulate: accumulate)
            }
            column += 32
        }
    }

    @inline(never)
    static func kernel8x32(depth: Int, a: UnsafePointer<Float>, aRowStride: Int, aDepthStride: Int,
                           b: UnsafePointer<Float>, bRowStride: Int,
                           c: UnsafeMutablePointer<Float>, cRowStride: Int, accumulate: Bool) {
        var c00 = Vector(), c01 = Vector(), c10 = Vector(), c11 = Vector(), c20 = Vector(), c21 = Vector()
        var c30 = Vector(), c31 = Vector(), c40 = Vector(), c41 = Vector(), c50 = Vector(), c51 = Vector()
        var c60 = Vector(), c61 = Vector(), c70 = Vector(), c71 = Vector()
        var ap = a, bp = b
        let r1 = aRowStride, r2 = aRowStride &* 2, r3 = aRowStride &* 3
        let r4 = aRowStride &* 4, r5 = aRowStride &* 5, r6 = aRowStride &* 6, r7 = aRowStride &* 7
        for _ in 0..<depth {
            let b0 = load(bp), b1 = load(bp + 16)
            var s = Vector(repeating: ap[0]); c00.addProduct(s, b0); c01.addProduct(s, b1)
            s = Vector(repeating: ap[r1]); c10.addProduct(s, b0); c11.addProduct(s, b1)
            s = Vector(repeating: ap[r2]); c20.addProduct(s, b0); c21.addProduct(s, b1)
            s = Vector(repeating: ap[r3]); c30.addProduct(s, b0); c31.addProduct(s, b1)
            s = Vector(repeating: ap[r4]); c40.addProduct(s, b0); c41.addProduct(s, b1)
            s = Vector(repeating: ap[r5]); c50.addProduct(s, b0); c51.addProduct(s, b1)
            s = Vector(repeating: ap[r6]); c60.addProduct(s, b0); c61.addProduct(s, b1)
            s = Vector(repeating: ap[r7]); c70.addProduct(s, b0); c71.addProduct(s, b1)
            ap += aDepthStride
            bp += bRowStride
        }
        let s1 = cRowStride, s2 = cRowStride &* 2, s3 = cRowStride &* 3
        let s4 = cRowStride &* 4, s5 = cRowStride &* 5, s6 = cRowStride &* 6, s7 = cRowStride &* 7
        if accumulate {
            c00 += load(c); c01 += load(c + 16)
            c10 += load(c + s1); c11 += load(c + s1 + 16)
            c20 += load(c + s2); c21 += load(c + s2 + 16)
            c30 += load(c + s3); c31 += load(c + s3 + 16)
            c40 += load(c + s4); c41 += load(c + s4 + 16)
            c50 += load(c + s5); c51 += load(c + s5 + 16)
            c60 += load(c + s6); c61 += load(c + s6 + 16)
            c70 += load(c + s7); c71 += load(c + s7 + 16)
        }
        store(c00, c); store(c01, c + 16)
        store(c10, c + s1); store(c11, c + s1 + 16)
        store(c20, c + s2); store(c21, c + s2 + 16)
        store(c30, c + s3); store(c31, c + s3 + 16)
        store(c40, c + s4); store(c41, c + s4 + 16)
        store(c50, c + s5); store(c51, c + s5 + 16)
        store(c60, c + s6); store(c61, c + s6 + 16)
        store(c70, c + s7); store(c71, c + s7 + 16)
    }

    @inline(never)
    static func kernel4x32(depth: Int, a: UnsafePointer<Float>, aRowStride: Int, aDepthStride: Int,
                           b: UnsafePointer<Float>, bRowStride: Int,
                           c: UnsafeMutablePointer<Float>, cRowStride: Int, accumulate: Bool) {
        var c00 = Vector(), c01 = Vector(), c10 = Vector(), c11 = Vector()
        var c20 = Vector(), c21 = Vector(), c30 = Vector(), c31 = Vector()
        var ap = a, bp = b
        let r1 = aRowStride, r2 = aRowStride &* 2, r3 = aRowStride &* 3
        for _ in 0..<depth {
            let b0 = load(bp), b1 = load(bp + 16)
            var s = Vector(repeating: ap[0]); c00.addProduct(s, b0); c01.addProduct(s, b1)
            s = Vector(repeating: ap[r1]); c10.addProduct(s, b0); c11.addProduct(s, b1)
            s = Vector(repeating: ap[r2]); c20.addProduct(s, b0); c21.addProduct(s, b1)
            s = Vector(repeating: ap[r3]); c30.addProduct(s, b0); c31.addProduct(s, b1)
            ap += aDepthStride
            bp += bRowStride
        }
        let s1 = cRowStride, s2 = cRowStride &* 2, s3 = cRowStride &* 3
        if accumulate {
            c00 += load(c); c01 += load(c + 16)
            c10 += load(c + s1); c11 += load(c + s1 + 16)
            c20 += load(c + s2); c21 += load(c + s2 + 16)
            c30 += load(c + s3); c31 += load(c + s3 + 16)
        }
        store(c00, c); store(c01, c + 16)
        store(c10, c + s1); store(c11, c + s1 + 16)
        store(c20, c + s2); store(c21, c + s2 + 16)
        store(c30, c + s3); store(c31, c + s3 + 16)
    }
}
