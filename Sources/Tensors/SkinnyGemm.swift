import Foundation

/// Products with a small right-hand matrix: the UNets' Linear layers on every
/// pixel (`[B·H·W, C] × [C, C']`, C up to a few hundred) and their weight
/// gradients (`Xᵀ · dY`, the depth being every pixel).
///
/// OpenBLAS packs both operands of such a product before multiplying and, with
/// β = 0, first clears C in a pass of its own; with an inner dimension of 64 those
/// passes over the tall operand cost about as much as the arithmetic. Here the
/// tall operand is read where it lies by `MicroKernels.multiply` (only a small B
/// given transposed is copied once), in row blocks that stay in cache while every
/// column panel of B passes over them; the weight gradient splits its long depth
/// over the workers, each with its own small partial C.
enum SkinnyGemm {
    /// Rows of C per block of the tall product (a multiple of 12, so 6-row tiles fill it).
    static let rowBlock = 96
    /// Depth per piece of the weight-gradient product.
    static let depthBlock = 256
    /// Largest B (and, for the weight gradient, C) handled, in floats (128 × 128). Measured in
    /// the training steps: a 64-wide Linear layer's products ran 20% faster than OpenBLAS's
    /// (course step 3225 → 3139 ms, interleaved medians), while 256-wide ones were no faster
    /// in place (a step's operands come from memory; OpenBLAS's packed copies stream better).
    static let maximumSmallFloats = 16_384

    /// Whether `arguments` is a product this path handles: α = 1, β = 0 or 1 (C overwritten
    /// or added to), C's columns a multiple of 8, and either A as it lies times a small B,
    /// or Aᵀ·B with a small C.
    static func suits(_ arguments: GemmArguments) -> Bool {
        guard arguments.alpha == 1, arguments.beta == 0 || arguments.beta == 1,
              arguments.n % 8 == 0, arguments.n > 0, arguments.k > 0, arguments.m > 0 else { return false }
        if !arguments.transposeA {
            // A Bᵀ given with padded rows would need a strided copy; every caller's is dense.
            return arguments.k * arguments.n <= maximumSmallFloats && (!arguments.transposeB || arguments.ldb == arguments.k)
        }
        return !arguments.transposeB && arguments.m % 4 == 0 && arguments.m * arguments.n <= maximumSmallFloats
    }

    /// Whether a product that `suits` is large enough to be split over the workers.
    static func isLarge(_ arguments: GemmArguments) -> Bool {
        arguments.transposeA ? arguments.k >= 4 * depthBlock : arguments.m >= 4 * rowBlock
    }

    /// C (+)= op(A) · op(B) for arguments that `suit`, over the workers or on the calling thread.
    static func run(_ arguments: GemmArguments, parallel: Bool) {
        if arguments.transposeA {
            summedOverDepth(arguments, parallel: parallel)
        } else {
            tall(arguments, parallel: parallel)
        }
    }

    /// A row-major A (as it lies) times a small B.
    static func tall(_ arguments: GemmArguments, parallel: Bool) {
        let (m, n, k) = (arguments.m, arguments.n, arguments.k)
        let accumulate = arguments.beta == 1
        var b = arguments.b, ldb = arguments.ldb
        var copy: UnsafeMutablePointer<Float>?
        if arguments.transposeB {
            // B is given as a dense Bᵀ (`[n][k]`, a Linear weight): lay it out `[k][n]` once.
            let target = ScratchMemory.floats(k * n)
            Convolution.transpose(arguments.b, into: target, batch: 1, rows: n, columns: k)
            copy = target
            b = UnsafePointer(target)
            ldb = n
        }
        defer { copy.map(ScratchMemory.release) }
        let (a, lda, c, ldc) = (arguments.a, arguments.lda, arguments.c, arguments.ldc)
        let whole = m / 4 * 4
        func rows(_ rows: Range<Int>) {
            MicroKernels.multiply(rows: rows.count, columns: n, depth: k,
                                  a: a + rows.lowerBound * lda, aRowStride: lda, aDepthStride: 1,
                                  b: b, bRowStride: ldb, c: c + rows.lowerBound * ldc, cRowStride: ldc, accumulate: accumulate)
        }
        if parallel {
            Convolution.forEachRange(whole, blockSize: rowBlock, rows)
        } else {
            for start in stride(from: 0, to: whole, by: rowBlock) { rows(start..<Swift.min(whole, start + rowBlock)) }
        }
        // The last m mod 4 rows, one at a time.
        for row in whole..<m {
            let target = c + row * ldc
            if !accumulate { for column in 0..<n { target[column] = 0 } }
            for inner in 0..<k {
                let value = a[row * lda + inner]
                let source = b + inner * ldb
                for column in 0..<n { target[column] += value * source[column] }
            }
        }
    }

    /// C (small) (+)= Aᵀ · B with A `[k][m]` and B `[k][n]` row-major, k long. Over the workers,
    /// the depth is cut into pieces dealt to fixed shares, each share summing into a partial C
    /// of its own.
    static func summedOverDepth(_ arguments: GemmArguments, parallel: Bool) {
        let (m, n, k) = (arguments.m, arguments.n, arguments.k)
        @inline(__always) func piece(_ first: Int, into target: UnsafeMutablePointer<Float>, stride: Int) {
            // target[i][j] += Σ_d A[d][i] · B[d][j]
            MicroKernels.multiply(rows: m, columns: n, depth: Swift.min(depthBlock, k - first),
                                  a: arguments.a + first * arguments.lda, aRowStride: 1, aDepthStride: arguments.lda,
                                  b: arguments.b + first * arguments.ldb, bRowStride: arguments.ldb,
                                  c: target, cRowStride: stride, accumulate: true)
        }
        if !parallel {
            if arguments.beta == 0 {
                for row in 0..<m { (arguments.c + row * arguments.ldc).update(repeating: 0, count: n) }
            }
            for first in stride(from: 0, to: k, by: depthBlock) { piece(first, into: arguments.c, stride: arguments.ldc) }
            return
        }
        // One partial sum per share of the depth pieces (`forEachBlockDealt`), added in share order:
        // the same bits on every run.
        let pieces = (k + depthBlock - 1) / depthBlock
        let partials = (0..<Convolution.dealtShares(pieces)).map { _ in ScratchMemory.floats(m * n, zeroed: true) }
        defer { partials.forEach(ScratchMemory.release) }
        Convolution.forEachBlockDealt(pieces, shares: partials.count) { chunk, next in
            while let claimed = next() { piece(claimed * depthBlock, into: partials[chunk], stride: n) }
        }
        for row in 0..<m {
            let target = arguments.c + row * arguments.ldc
            for column in 0..<n {
                var sum = arguments.beta == 1 ? target[column] : 0
                for partial in partials { sum += partial[row * n + column] }
                target[column] = sum
            }
        }
    }
}
