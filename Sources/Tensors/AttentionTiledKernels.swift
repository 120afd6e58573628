import Foundation

/// The register-tiled products of `TiledAttention`. A block holds 16 query rows, the
/// 16 lanes of two `SIMD8<Float>` vectors ("row lanes"), so that the softmax over keys is
/// lane-wise: a running maximum and sum per lane, no horizontal reductions, and any head
/// size is a loop count rather than a vector width.
///
/// Three shapes cover the forward and backward passes (A is K or V, row-major with a
/// leading dimension; "lanes" are a block's 16 query rows):
/// - `products`: `out[s][lanes] = Σₑ A[s, e] · Bᵀ[e][lanes]` (scores = K·Qᵀ, dP = V·dOᵀ),
///   tiles of 6 keys × 2 vectors, A's elements broadcast from memory;
/// - `accumulateColumns`: `acc[d][lanes] = factor · acc[d][lanes] + Σₛ A[s, d] · W[s][lanes]`
///   (Oᵀ += Vᵀ·Pᵀ, dQᵀ += Kᵀ·dSᵀ), tiles of 6 head elements × 2 vectors;
/// - `accumulateRows`: `target[s][d] += Σᵣ W[s][r] · X[r][d]` over the 16 lanes r (dV += Pᵀ·dO,
///   dK += dSᵀ·Q), vectorised over the head dimension padded to a multiple of 8, tiles of
///   6 keys × 2 vectors (4 keys × 3 vectors for an odd count of vectors, 1 vector for width 8).
/// Partial tiles repeat their last key or head element (clamped pointers) and store only
/// the real ones, so every size runs the same code.
enum TiledAttentionKernels {
    typealias Vector = SIMD8<Float>
    /// Query rows per block: two vectors of lanes.
    static let rows = 16
    /// log₂ e: scores are kept in base 2 (the packed queries carry `scale · log₂ e`).
    static let log2e: Float = 1.4426950408889634

    /// 2ˣ for x ≤ 0 (`VectorMath.exp2Polynomial`), exactly 0 below −125 (−∞ included), so
    /// that masked positions and padding rows (whose log-sum-exp is +∞) contribute nothing. (No
    /// clamp before the polynomial: what it makes of such inputs, NaN for −∞, is replaced.)
    @inline(__always)
    static func exp2(_ x: Vector) -> Vector {
        VectorMath.exp2Polynomial(x).replacing(with: 0, where: x .< Vector(repeating: -125))
    }

    // MARK: Scores: out[s][lanes] = Σₑ A[s, e] · Bᵀ[e][lanes]

    /// `out[s · 16 + lane] = Σₑ rows[s · rowStride + e] · columns[e · 16 + lane]` for `s < count`.
    static func products(rows: UnsafePointer<Float>, rowStride: Int, count: Int,
                         columns: UnsafePointer<Float>, depth: Int, into out: UnsafeMutablePointer<Float>) {
        var first = 0
        while first < count {
            let last = count - 1
            let r0 = rows + Swift.min(first, last) * rowStride, r1 = rows + Swift.min(first + 1, last) * rowStride
            let r2 = rows + Swift.min(first + 2, last) * rowStride, r3 = rows + Swift.min(first + 3, last) * rowStride
            let r4 = rows + Swift.min(first + 4, last) * rowStride, r5 = rows + Swift.min(first + 5, last) * rowStride
            var a0 = Vector(), b0 = Vector(), a1 = Vector(), b1 = Vector(), a2 = Vector(), b2 = Vector()
            var a3 = Vector(), b3 = Vector(), a4 = Vector(), b4 = Vector(), a5 = Vector(), b5 = Vector()
            var column = columns
            for e in 0..<depth {
                let low = MicroKernels.load(column), high = MicroKernels.load(column + 8)
                let k0 = Vector(repeating: r0[e]), k1 = Vector(repeating: r1[e])
                a0 = a0.addingProduct(low, k0); b0 = b0.addingProduct(high, k0)
                a1 = a1.addingProduct(low, k1); b1 = b1.addingProduct(high, k1)
                let k2 = Vector(repeating: r2[e]), k3 = Vector(repeating: r3[e])
                a2 = a2.addingProduct(low, k2); b2 = b2.addingProduct(high, k2)
                a3 = a3.addingProduct(low, k3); b3 = b3.addingProduct(high, k3)
                let k4 = Vector(repeating: r4[e]), k5 = Vector(repeating: r5[e])
                a4 = a4.addingProduct(low, k4); b4 = b4.addingProduct(high, k4)
                a5 = a5.addingProduct(low, k5); b5 = b5.addingProduct(high, k5)
                column += 16
            }
            let target = out + first * 16
            let real = Swift.min(6, count - first)
            MicroKernels.store(a0, target); MicroKernels.store(b0, target + 8)
            if real > 1 { MicroKernels.store(a1, target + 16); MicroKernels.store(b1, target + 24) }
            if real > 2 { MicroKernels.store(a2, target + 32); MicroKernels.store(b2, target + 40) }
            if real > 3 { MicroKernels.store(a3, target + 48); MicroKernels.store(b3, target + 56) }
            if real > 4 { MicroKernels.store(a4, target + 64); MicroKernels.store(b4, target + 72) }
            if real > 5 { MicroKernels.store(a5, target + 80); MicroKernels.store(b5, target + 88) }
            first += 6
        }
    }

    // MARK: Transposed accumulation: acc[d][lanes] = factor · acc + Σₛ A[s, d] · W[s][lanes]

    /// `acc[d · 16 + lane] = factor[lane] · acc[d · 16 + lane] + Σₛ rows[s · rowStride + d] · weights[s · 16 + lane]`
    /// for `d < depth`, `s < count`; `factor` is the two lane vectors (rows 0–7, 8–15).
    static func accumulateColumns(rows: UnsafePointer<Float>, rowStride: Int, count: Int, weights: UnsafePointer<Float>,
                                  depth: Int, factor: (Vector, Vector), into accumulator: UnsafeMutablePointer<Float>) {
        var first = 0
        while first < depth {
            let last = depth - 1
            let d0 = Swift.min(first, last), d1 = Swift.min(first + 1, last), d2 = Swift.min(first + 2, last)
            let d3 = Swift.min(first + 3, last), d4 = Swift.min(first + 4, last), d5 = Swift.min(first + 5, last)
            let source = accumulator + first * 16
            let real = Swift.min(6, depth - first)
            // Partial tiles start from the last real element's sums (not stored back).
            @inline(__always) func start(_ d: Int) -> (Vector, Vector) {
                (MicroKernels.load(accumulator + d * 16) * factor.0, MicroKernels.load(accumulator + d * 16 + 8) * factor.1)
            }
            var (a0, b0) = start(d0), (a1, b1) = start(d1), (a2, b2) = start(d2)
            var (a3, b3) = start(d3), (a4, b4) = start(d4), (a5, b5) = start(d5)
            var row = rows, weight = weights
            for _ in 0..<count {
                let low = MicroKernels.load(weight), high = MicroKernels.load(weight + 8)
                let v0 = Vector(repeating: row[d0]), v1 = Vector(repeating: row[d1])
                a0 = a0.addingProduct(low, v0); b0 = b0.addingProduct(high, v0)
                a1 = a1.addingProduct(low, v1); b1 = b1.addingProduct(high, v1)
                let v2 = Vector(repeating: row[d2]), v3 = Vector(repeating: row[d3])
                a2 = a2.addingProduct(low, v2); b2 = b2.addingProduct(high, v2)
                a3 = a3.addingProduct(low, v3); b3 = b3.addingProduct(high, v3)
                let v4 = Vector(repeating: row[d4]), v5 = Vector(repeating: row[d5])
                a4 = a4.addingProduct(low, v4); b4 = b4.addingProduct(high, v4)
                a5 = a5.addingProduct(low, v5); b5 = b5.addingProduct(high, v5)
                row += rowStride
                weight += 16
            }
            MicroKernels.store(a0, source); MicroKernels.store(b0, source + 8)
            if real > 1 { MicroKernels.store(a1, source + 16); MicroKernels.store(b1, source + 24) }
            if real > 2 { MicroKernels.store(a2, source + 32); MicroKernels.store(b2, source + 40) }
            if real > 3 { MicroKernels.store(a3, source + 48); MicroKernels.store(b3, source + 56) }
            if real > 4 { MicroKernels.store(a4, source + 64); MicroKernels.store(b4, source + 72) }
            if real > 5 { MicroKernels.store(a5, source + 80); MicroKernels.store(b5, source + 88) }
            first += 6
        }
    }

    // MARK: Row accumulation: target[s][d] += Σᵣ W[s][r] · X[r][d]

    /// `target[s · width + d] += Σᵣ weights[s · 16 + r] · rows[r · width + d]` for `s < count`, `d < width`,
    /// r over the 16 lanes; `width` is a multiple of 8 (the head dimension padded with zeros).
    /// The head dimension goes in chunks of 2 vectors (tiles of 6 keys), an odd count ending in
    /// 3 vectors (tiles of 4 keys: 40 is 2 + 3 vectors) or, for width 8, 1 (tiles of 6 keys).
    static func accumulateRows(weights: UnsafePointer<Float>, count: Int, rows: UnsafePointer<Float>, width: Int,
                               into target: UnsafeMutablePointer<Float>) {
        let vectors = width / 8
        var vector = 0
        while vector < vectors {
            let remaining = vectors - vector
            if remaining == 3 {
                accumulateRowsThree(weights: weights, count: count, rows: rows + vector * 8, width: width, into: target + vector * 8)
                vector += 3
            } else if remaining == 1 {
                accumulateRowsOne(weights: weights, count: count, rows: rows + vector * 8, width: width, into: target + vector * 8)
                vector += 1
            } else {
                accumulateRowsTwo(weights: weights, count: count, rows: rows + vector * 8, width: width, into: target + vector * 8)
                vector += 2
            }
        }
    }

    /// Weights of keys `first`, `first + 1`, … (the last real one repeated past `count`).
    @inline(__always)
    static func weightRow(_ weights: UnsafePointer<Float>, _ key: Int, _ count: Int) -> UnsafePointer<Float> {
        weights + Swift.min(key, count - 1) * 16
    }

    /// `accumulateRows` for the two vectors at `rows` / `target`: tiles of 6 keys × 2 vectors.
    @inline(__always)
    static func accumulateRowsTwo(weights: UnsafePointer<Float>, count: Int, rows: UnsafePointer<Float>, width: Int,
                                  into target: UnsafeMutablePointer<Float>) {
        var first = 0
        while first < count {
            let w0 = weightRow(weights, first, count), w1 = weightRow(weights, first + 1, count), w2 = weightRow(weights, first + 2, count)
            let w3 = weightRow(weights, first + 3, count), w4 = weightRow(weights, first + 4, count), w5 = weightRow(weights, first + 5, count)
            var a0 = Vector(), b0 = Vector(), a1 = Vector(), b1 = Vector(), a2 = Vector(), b2 = Vector()
            var a3 = Vector(), b3 = Vector(), a4 = Vector(), b4 = Vector(), a5 = Vector(), b5 = Vector()
            var row = rows
            for r in 0..<16 {
                let low = MicroKernels.load(row), high = MicroKernels.load(row + 8)
                let p0 = Vector(repeating: w0[r]), p1 = Vector(repeating: w1[r])
                a0 = a0.addingProduct(low, p0); b0 = b0.addingProduct(high, p0)
                a1 = a1.addingProduct(low, p1); b1 = b1.addingProduct(high, p1)
                let p2 = Vector(repeating: w2[r]), p3 = Vector(repeating: w3[r])
                a2 = a2.addingProduct(low, p2); b2 = b2.addingProduct(high, p2)
                a3 = a3.addingProduct(low, p3); b3 = b3.addingProduct(high, p3)
                let p4 = Vector(repeating: w4[r]), p5 = Vector(repeating: w5[r])
                a4 = a4.addingProduct(low, p4); b4 = b4.addingProduct(high, p4)
                a5 = a5.addingProduct(low, p5); b5 = b5.addingProduct(high, p5)
                row += width
            }
            let real = Swift.min(6, count - first)
            @inline(__always) func add(_ low: Vector, _ high: Vector, _ key: Int) {
                let pointer = target + (first + key) * width
                MicroKernels.store(MicroKernels.load(pointer) + low, pointer); MicroKernels.store(MicroKernels.load(pointer + 8) + high, pointer + 8)
            }
            add(a0, b0, 0)
            if real > 1 { add(a1, b1, 1) }
            if real > 2 { add(a2, b2, 2) }
            if real > 3 { add(a3, b3, 3) }
            if real > 4 { add(a4, b4, 4) }
            if real > 5 { add(a5, b5, 5) }
            first += 6
        }
    }

    /// `accumulateRows` for the three vectors at `rows` / `target`: tiles of 4 keys × 3 vectors.
    @inline(__always)
    static func accumulateRowsThree(weights: UnsafePointer<Float>, count: Int, rows: UnsafePointer<Float>, width: Int,
                                    into target: UnsafeMutablePointer<Float>) {
        var first = 0
        while first < count {
            let w0 = weightRow(weights, first, count), w1 = weightRow(weights, first + 1, count)
            let w2 = weightRow(weights, first + 2, count), w3 = weightRow(weights, first + 3, count)
            var a0 = Vector(), b0 = Vector(), c0 = Vector(), a1 = Vector(), b1 = Vector(), c1 = Vector()
            var a2 = Vector(), b2 = Vector(), c2 = Vector(), a3 = Vector(), b3 = Vector(), c3 = Vector()
            var row = rows
            for r in 0..<16 {
                let x = MicroKernels.load(row), y = MicroKernels.load(row + 8), z = MicroKernels.load(row + 16)
                let p0 = Vector(repeating: w0[r]), p1 = Vector(repeating: w1[r])
                a0 = a0.addingProduct(x, p0); b0 = b0.addingProduct(y, p0); c0 = c0.addingProduct(z, p0)
                a1 = a1.addingProduct(x, p1); b1 = b1.addingProduct(y, p1); c1 = c1.addingProduct(z, p1)
                let p2 = Vector(repeating: w2[r]), p3 = Vector(repeating: w3[r])
                a2 = a2.addingProduct(x, p2); b2 = b2.addingProduct(y, p2); c2 = c2.addingProduct(z, p2)
                a3 = a3.addingProduct(x, p3); b3 = b3.addingProduct(y, p3); c3 = c3.addingProduct(z, p3)
                row += width
            }
            let real = Swift.min(4, count - first)
            @inline(__always) func add(_ x: Vector, _ y: Vector, _ z: Vector, _ key: Int) {
                let pointer = target + (first + key) * width
                MicroKernels.store(MicroKernels.load(pointer) + x, pointer); MicroKernels.store(MicroKernels.load(pointer + 8) + y, pointer + 8); MicroKernels.store(MicroKernels.load(pointer + 16) + z, pointer + 16)
            }
            add(a0, b0, c0, 0)
            if real > 1 { add(a1, b1, c1, 1) }
            if real > 2 { add(a2, b2, c2, 2) }
            if real > 3 { add(a3, b3, c3, 3) }
            first += 4
        }
    }

    /// `accumulateRows` for the one vector at `rows` / `target`: tiles of 6 keys.
    @inline(__always)
    static func accumulateRowsOne(weights: UnsafePointer<Float>, count: Int, rows: UnsafePointer<Float>, width: Int,
                                  into target: UnsafeMutablePointer<Float>) {
        var first = 0
        while first < count {
            let w0 = weightRow(weights, first, count), w1 = weightRow(weights, first + 1, count), w2 = weightRow(weights, first + 2, count)
            let w3 = weightRow(weights, first + 3, count), w4 = weightRow(weights, first + 4, count), w5 = weightRow(weights, first + 5, count)
            var a0 = Vector(), a1 = Vector(), a2 = Vector(), a3 = Vector(), a4 = Vector(), a5 = Vector()
            var row = rows
            for r in 0..<16 {
                let x = MicroKernels.load(row)
                a0 = a0.addingProduct(x, Vector(repeating: w0[r])); a1 = a1.addingProduct(x, Vector(repeating: w1[r]))
                a2 = a2.addingProduct(x, Vector(repeating: w2[r])); a3 = a3.addingProduct(x, Vector(repeating: w3[r]))
                a4 = a4.addingProduct(x, Vector(repeating: w4[r])); a5 = a5.addingProduct(x, Vector(repeating: w5[r]))
                row += width
            }
            let real = Swift.min(6, count - first)
            @inline(__always) func add(_ sum: Vector, _ key: Int) {
                let pointer = target + (first + key) * width
                MicroKernels.store(MicroKernels.load(pointer) + sum, pointer)
            }
            add(a0, 0)
            if real > 1 { add(a1, 1) }
            if real > 2 { add(a2, 2) }
            if real > 3 { add(a3, 3) }
            if real > 4 { add(a4, 4) }
            if real > 5 { add(a5, 5) }
            first += 6
        }
    }
}
