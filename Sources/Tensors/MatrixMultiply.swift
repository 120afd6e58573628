import COpenBLAS
import Foundation

/// General matrix multiply on raw row-major memory:
/// `C = alpha · op(A) · op(B) + beta · C`, `op(A)` being `m×k`, `op(B)` `k×n`.
public struct GemmArguments {
    public var transposeA = false
    public var transposeB = false
    public var m: Int, n: Int, k: Int
    public var alpha: Float = 1
    public var a: UnsafePointer<Float>, lda: Int
    public var b: UnsafePointer<Float>, ldb: Int
    public var beta: Float = 0
    public var c: UnsafeMutablePointer<Float>, ldc: Int

    public init(transposeA: Bool = false, transposeB: Bool = false, m: Int, n: Int, k: Int, alpha: Float = 1,
                a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int, beta: Float = 0,
                c: UnsafeMutablePointer<Float>, ldc: Int) {
        self.transposeA = transposeA; self.transposeB = transposeB
        self.m = m; self.n = n; self.k = k; self.alpha = alpha
        self.a = a; self.lda = lda; self.b = b; self.ldb = ldb; self.beta = beta; self.c = c; self.ldc = ldc
    }
}

/// The matrix kernels: BLAS on one thread per piece, pieces spread by `Parallel`.
public enum Gemm {
    private static let configureOnce: Void = {
        // One threading story: our pool splits the work, OpenBLAS runs serially in each piece.
        openblas_set_num_threads(1)
    }()

    /// The BLAS library in use.
    public static var backendDescription: String {
        _ = configureOnce
        return String(cString: openblas_get_config())
    }

    /// One sgemm on the calling thread.
    @inline(__always)
    public static func serial(_ arguments: GemmArguments) {
        _ = configureOnce
        guard arguments.m > 0 && arguments.n > 0 else { return }
        if usesSkinnyKernels && SkinnyGemm.suits(arguments) {
            SkinnyGemm.run(arguments, parallel: false)
            return
        }
        cblas_sgemm(CblasRowMajor,
                    arguments.transposeA ? CblasTrans : CblasNoTrans,
                    arguments.transposeB ? CblasTrans : CblasNoTrans,
                    Int32(arguments.m), Int32(arguments.n), Int32(arguments.k), arguments.alpha,
                    arguments.a, Int32(arguments.lda), arguments.b, Int32(arguments.ldb),
                    arguments.beta, arguments.c, Int32(arguments.ldc))
    }

    /// Which GEMM large products use.
    public enum Implementation: String, Sendable {
        /// OpenBLAS, called serially on row or column slices of C, one per worker.
        case blas
        /// Diffuse's packed kernel, one shared panel of B for all workers.
        case packed
    }

    /// The implementation `parallel` uses: `DIFFUSE_GEMM=blas|packed`, else OpenBLAS, which measured faster here (Benchmarks/RESULTS.md).
    public nonisolated(unsafe) static var implementation: Implementation = {
        ProcessInfo.processInfo.environment["DIFFUSE_GEMM"].flatMap(Implementation.init(rawValue:)) ?? .blas
    }()

    /// Whether `parallel` hands products with a small operand to `SkinnyGemm`
    /// (`DIFFUSE_SKINNY_GEMM=0` turns it off, for measurements).
    public nonisolated(unsafe) static var usesSkinnyKernels = ProcessInfo.processInfo.environment["DIFFUSE_SKINNY_GEMM"] != "0"

    /// One sgemm over all worker threads.
    public static func parallel(_ arguments: GemmArguments) {
        if usesSkinnyKernels && SkinnyGemm.suits(arguments) && SkinnyGemm.isLarge(arguments) {
            SkinnyGemm.run(arguments, parallel: true)
            return
        }
        if implementation == .packed {
            packed(arguments)
            return
        }
        blasSliced(arguments)
    }

    /// One sgemm split over the worker threads by rows of C (or by columns when C is short and wide).
    public static func blasSliced(_ arguments: GemmArguments) {
        let work = arguments.m * arguments.n * arguments.k
        let threads = Parallel.threadCount
        if threads <= 1 || work < 64 * 64 * 64 {
            serial(arguments)
            return
        }
        if arguments.m >= arguments.n || arguments.m >= 64 * threads {
            let blocks = Swift.min(threads, Swift.max(1, arguments.m / 16))
            Parallel.forEach(blocks) { range in
                for block in range {
                    let start = arguments.m * block / blocks
                    let end = arguments.m * (block + 1) / blocks
                    var piece = arguments
                    piece.m = end - start
                    piece.a = arguments.transposeA ? arguments.a + start : arguments.a + start * arguments.lda
                    piece.c = arguments.c + start * arguments.ldc
                    serial(piece)
                }
            }
        } else {
            let blocks = Swift.min(threads, Swift.max(1, arguments.n / 16))
            Parallel.forEach(blocks) { range in
                for block in range {
                    let start = arguments.n * block / blocks
                    let end = arguments.n * (block + 1) / blocks
                    var piece = arguments
                    piece.n = end - start
                    piece.b = arguments.transposeB ? arguments.b + start * arguments.ldb : arguments.b + start
                    piece.c = arguments.c + start
                    serial(piece)
                }
            }
        }
    }

    /// The obvious triple loop, accumulating in Double: the reference the fast path is tested against.
    public static func reference(_ arguments: GemmArguments) {
        for row in 0..<arguments.m {
            for column in 0..<arguments.n {
                var total = 0.0
                for inner in 0..<arguments.k {
                    let a = arguments.transposeA ? arguments.a[inner * arguments.lda + row] : arguments.a[row * arguments.lda + inner]
                    let b = arguments.transposeB ? arguments.b[column * arguments.ldb + inner] : arguments.b[inner * arguments.ldb + column]
                    total += Double(a) * Double(b)
                }
                let destination = arguments.c + row * arguments.ldc + column
                destination.pointee = arguments.alpha * Float(total) + (arguments.beta == 0 ? 0 : arguments.beta * destination.pointee)
            }
        }
    }
}

extension Tensor {
    /// How a 2-d operand can be handed to BLAS without a copy.
    struct MatrixOperand {
        let tensor: Tensor
        let transposed: Bool
        let leadingDimension: Int
    }

    /// Views the last two dimensions as a BLAS operand (row-major or its transpose), copying only if needed.
    static func matrixOperand(_ tensor: Tensor) -> MatrixOperand {
        let rows = tensor.shape[tensor.rank - 2], columns = tensor.shape[tensor.rank - 1]
        let rowStride = tensor.strides[tensor.rank - 2], columnStride = tensor.strides[tensor.rank - 1]
        var batchContiguous = true
        var expected = rows * columns
        for axis in stride(from: tensor.rank - 3, through: 0, by: -1) {
            if tensor.shape[axis] != 1 && tensor.strides[axis] != expected { batchContiguous = false }
            expected *= tensor.shape[axis]
        }
        if tensor.dataType == .float32 && batchContiguous {
            if columnStride == 1 && (rowStride == columns || rows == 1) { return MatrixOperand(tensor: tensor, transposed: false, leadingDimension: Swift.max(columns, 1)) }
            if rowStride == 1 && (columnStride == rows || columns == 1) { return MatrixOperand(tensor: tensor, transposed: true, leadingDimension: Swift.max(rows, 1)) }
        }
        return MatrixOperand(tensor: tensor.contiguousCopy(), transposed: false, leadingDimension: Swift.max(columns, 1))
    }

    /// Matrix product with batch broadcasting: `[…, m, k] × […, k, n] → […, m, n]`.
    /// A 1-d `rhs` or `lhs` is treated as a vector, as in PyTorch.
    public func matmul(_ other: Tensor) -> Tensor {
        if other.rank == 1 { return matmul(other.unsqueezed(1)).squeezed(-1) }
        if rank == 1 { return unsqueezed(0).matmul(other).squeezed(-2) }
        guard rank >= 2, other.rank >= 2, shape[rank - 1] == other.shape[other.rank - 2] else {
            fatalError("matmul: shapes \(shape) and \(other.shape) are not aligned (inner dimensions \(shape.last ?? 0) and \(other.rank >= 2 ? other.shape[other.rank - 2] : 0))")
        }
        let result = Tensor.matmulKernel(self, other)
        return Tensor.record(result, .matmul(lhs: detach(), rhs: other.detach()), inputs: [self, other])
    }

    static func matmulKernel(_ lhs: Tensor, _ rhs: Tensor) -> Tensor {
        let m = lhs.shape[lhs.rank - 2], k = lhs.shape[lhs.rank - 1], n = rhs.shape[rhs.rank - 1]
        let lhsBatch = Array(lhs.shape.dropLast(2)), rhsBatch = Array(rhs.shape.dropLast(2))
        let batchShape = Shape.broadcast(lhsBatch, rhsBatch, op: "matmul")
        let batch = Shape.count(batchShape)
        // A batched lhs times a shared 2-d rhs is one tall GEMM.
        if rhsBatch.isEmpty || Shape.count(rhsBatch) == 1 && lhsBatch.count >= rhsBatch.count {
            // A 2-d lhs may be a transposed view (Xᵀ in Linear's weight gradient Xᵀ·G):
            // BLAS reads it as it lies instead of a strided copy.
            let left = lhsBatch.isEmpty ? matrixOperand(lhs)
                : MatrixOperand(tensor: lhs.contiguousData(), transposed: false, leadingDimension: Swift.max(k, 1))
            let right = matrixOperand(rhs.reshapedOrView([k, n]))
            let result = Tensor(uninitializedShape: batchShape + [m, n])
            if result.count == 0 { return result }
            if k == 0 { memset(result.storage.bytes, 0, result.count * 4); return result }
            Gemm.parallel(GemmArguments(transposeA: left.transposed, transposeB: right.transposed, m: batch * m, n: n, k: k,
                                        a: left.tensor.floatPointer, lda: left.leadingDimension, b: right.tensor.floatPointer, ldb: right.leadingDimension,
                                        c: result.floatPointer, ldc: n))
            return result
        }
        let left = matrixOperand(lhs.expandedView(batchShape + [m, k]).contiguousIfBroadcast())
        let right = matrixOperand(rhs.expandedView(batchShape + [k, n]).contiguousIfBroadcast())
        let result = Tensor(uninitializedShape: batchShape + [m, n])
        if result.count == 0 { return result }
        if k == 0 { memset(result.storage.bytes, 0, result.count * 4); return result }
        let (a, b, c) = (left.tensor.floatPointer, right.tensor.floatPointer, result.floatPointer)
        let parallelInside = batch < Parallel.threadCount
        Parallel.forEach(parallelInside ? 1 : batch) { range in
            for item in (parallelInside ? 0..<batch : range) {
                let arguments = GemmArguments(transposeA: left.transposed, transposeB: right.transposed, m: m, n: n, k: k,
                                              a: a + item * m * k, lda: left.leadingDimension,
                                              b: b + item * k * n, ldb: right.leadingDimension,
                                              c: c + item * m * n, ldc: n)
                if parallelInside { Gemm.parallel(arguments) } else { Gemm.serial(arguments) }
            }
        }
        return result
    }

    func reshapedOrView(_ newShape: [Int]) -> Tensor {
        if shape == newShape { return self }
        // Drop leading size-1 batch dimensions without copying.
        if Shape.count(shape) == Shape.count(newShape) && shape.suffix(newShape.count) == newShape[...] {
            return Tensor(storage: storage, shape: newShape, strides: Array(strides.suffix(newShape.count)), offset: offset)
        }
        return reshapedView(newShape)
    }

    func expandedView(_ newShape: [Int]) -> Tensor {
        if shape == newShape { return self }
        return Tensor(storage: storage, shape: newShape, strides: Shape.broadcastStrides(shape: shape, strides: strides, to: newShape), offset: offset)
    }

    func contiguousIfBroadcast() -> Tensor {
        strides.contains(0) ? contiguousCopy() : self
    }
}
