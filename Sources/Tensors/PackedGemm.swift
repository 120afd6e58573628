import Dispatch
import Foundation

/// Diffuse's own single-precision GEMM: Goto-style blocking, panels of A and
/// B packed into contiguous strips, and a 6×16 register micro-kernel built on
/// `SIMD8<Float>` fused multiply-adds (AVX2+FMA with `-target-cpu haswell`).
///
/// Unlike calling OpenBLAS from several threads, all threads share one packed
/// panel of B, which is what makes a single large product scale over cores.
/// `Gemm.reference` is the plain loop it is tested against.
enum PackedGemm {
    typealias Vector = SIMD8<Float>
    static let rowsPerStrip = 6      // MR
    static let columnsPerStrip = 16  // NR
    static let depthBlock = 256      // KC
    static let rowBlock = 96         // MC (multiple of MR)
    static let columnBlock = 2048    // NC (multiple of NR)

    @inline(__always) static func load(_ pointer: UnsafePointer<Float>) -> Vector {
        UnsafeRawPointer(pointer).loadUnaligned(as: Vector.self)
    }

    @inline(__always) static func store(_ value: Vector, _ pointer: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(pointer).storeBytes(of: value, as: Vector.self)
    }

    /// C(6×16) = α·Σ A-strip ⊗ B-strip (+ C when `accumulate`).
    /// Never inlined: inlined into the one-thread path of `multiply`, the function grew past the
    /// optimizer's budget and its vector loads stayed calls (one thread ran at 20 GFLOP/s, 1024³
    /// 106 ms, against 139 GFLOP/s on two).
    @inline(never)
    static func microKernel(_ depth: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                            _ c: UnsafeMutablePointer<Float>, _ ldc: Int, alpha: Float, accumulate: Bool) {
        var c00 = Vector(), c01 = Vector(), c10 = Vector(), c11 = Vector(), c20 = Vector(), c21 = Vector()
        var c30 = Vector(), c31 = Vector(), c40 = Vector(), c41 = Vector(), c50 = Vector(), c51 = Vector()
        var ap = a, bp = b
        for _ in 0..<depth {
            let b0 = load(bp), b1 = load(bp + 8)
            var av = Vector(repeating: ap[0]); c00 = c00.addingProduct(av, b0); c01 = c01.addingProduct(av, b1)
            av = Vector(repeating: ap[1]); c10 = c10.addingProduct(av, b0); c11 = c11.addingProduct(av, b1)
            av = Vector(repeating: ap[2]); c20 = c20.addingProduct(av, b0); c21 = c21.addingProduct(av, b1)
            av = Vector(repeating: ap[3]); c30 = c30.addingProduct(av, b0); c31 = c31.addingProduct(av, b1)
            av = Vector(repeating: ap[4]); c40 = c40.addingProduct(av, b0); c41 = c41.addingProduct(av, b1)
            av = Vector(repeating: ap[5]); c50 = c50.addingProduct(av, b0); c51 = c51.addingProduct(av, b1)
            ap += 6
            bp += 16
        }
        @inline(__always) func finish(_ value: Vector, _ pointer: UnsafeMutablePointer<Float>) {
            let scaled = alpha == 1 ? value : value * alpha
            store(accumulate ? scaled + load(pointer) : scaled, pointer)
        }
        finish(c00, c); finish(c01, c + 8)
        finish(c10, c + ldc); finish(c11, c + ldc + 8)
        finish(c20, c + 2 * ldc); finish(c21, c + 2 * ldc + 8)
        finish(c30, c + 3 * ldc); finish(c31, c + 3 * ldc + 8)
        finish(c40, c + 4 * ldc); finish(c41, c + 4 * ldc + 8)
        finish(c50, c + 5 * ldc); finish(c51, c + 5 * ldc + 8)
    }

    /// Packs rows `row0..<row0+rows` × depth `depth0..<depth0+depth` of op(A) into 6-row strips, zero-padded.
    static func packA(_ arguments: GemmArguments, row0: Int, rows: Int, depth0: Int, depth: Int, into destination: UnsafeMutablePointer<Float>) {
        let strips = (rows + rowsPerStrip - 1) / rowsPerStrip
        for strip in 0..<strips {
            let target = destination + strip * depth * rowsPerStrip
            let first = row0 + strip * rowsPerStrip
            let height = Swift.min(rowsPerStrip, row0 + rows - first)
            if arguments.transposeA {
                // op(A)[i, p] = A[p, i]: six consecutive i for each p.
                for p in 0..<depth {
                    let source = arguments.a + (depth0 + p) * arguments.lda + first
                    let row = target + p * rowsPerStrip
                    for i in 0..<rowsPerStrip { row[i] = i < height ? source[i] : 0 }
                }
            } else {
                for i in 0..<rowsPerStrip {
                    if i < height {
                        let source = arguments.a + (first + i) * arguments.lda + depth0
                        for p in 0..<depth { target[p * rowsPerStrip + i] = source[p] }
                    } else {
                        for p in 0..<depth { target[p * rowsPerStrip + i] = 0 }
                    }
                }
            }
        }
    }

    /// Packs one 16-column strip of op(B) over `depth` rows, zero-padded.
    @inline(__always)
    static func packBStrip(_ arguments: GemmArguments, column0: Int, width: Int, depth0: Int, depth: Int, into target: UnsafeMutablePointer<Float>) {
        if arguments.transposeB {
            // op(B)[p, j] = B[j, p]: a contiguous run of p for each j.
            for j in 0..<columnsPerStrip {
                if j < width {
                    let source = arguments.b + (column0 + j) * arguments.ldb + depth0
                    for p in 0..<depth { target[p * columnsPerStrip + j] = source[p] }
                } else {
                    for p in 0..<depth { target[p * columnsPerStrip + j] = 0 }
                }
            }
        } else {
            for p in 0..<depth {
                let source = arguments.b + (depth0 + p) * arguments.ldb + column0
                let row = target + p * columnsPerStrip
                if width == columnsPerStrip {
                    store(load(source), row)
                    store(load(source + 8), row + 8)
                } else {
                    for j in 0..<columnsPerStrip { row[j] = j < width ? source[j] : 0 }
                }
            }
        }
    }

    /// Multiplies a packed A block by packed B strips `strips` into C.
    @inline(__always)
    static func computeBlock(_ arguments: GemmArguments, packedA: UnsafePointer<Float>, packedB: UnsafePointer<Float>,
                             row0: Int, rows: Int, column0: Int, columns: Int, strips: Range<Int>, depth: Int,
                             accumulate: Bool, tile: UnsafeMutablePointer<Float>) {
        let rowStrips = (rows + rowsPerStrip - 1) / rowsPerStrip
        for strip in strips {
            let firstColumn = column0 + strip * columnsPerStrip
            let width = Swift.min(columnsPerStrip, column0 + columns - firstColumn)
            let bStrip = packedB + strip * depth * columnsPerStrip
            for rowStrip in 0..<rowStrips {
                let firstRow = row0 + rowStrip * rowsPerStrip
                let height = Swift.min(rowsPerStrip, row0 + rows - firstRow)
                let aStrip = packedA + rowStrip * depth * rowsPerStrip
                let destination = arguments.c + firstRow * arguments.ldc + firstColumn
                if width == columnsPerStrip && height == rowsPerStrip {
                    microKernel(depth, aStrip, bStrip, destination, arguments.ldc, alpha: arguments.alpha, accumulate: accumulate)
                } else {
                    microKernel(depth, aStrip, bStrip, tile, columnsPerStrip, alpha: arguments.alpha, accumulate: false)
                    for i in 0..<height {
                        for j in 0..<width {
                            let target = destination + i * arguments.ldc + j
                            target.pointee = (accumulate ? target.pointee : 0) + tile[i * columnsPerStrip + j]
                        }
                    }
                }
            }
        }
    }

    /// `C = α·op(A)·op(B) + β·C` over `threads` workers.
    static func multiply(_ arguments: GemmArguments, threads: Int) {
        let (m, n, k) = (arguments.m, arguments.n, arguments.k)
        guard m > 0 && n > 0 else { return }
        // β: scale C once up front, then every depth block accumulates.
        if k == 0 || arguments.beta != 1 {
            let beta = arguments.beta
            for row in 0..<m {
                let line = arguments.c + row * arguments.ldc
                if beta == 0 { line.update(repeating: 0, count: n) } else { for column in 0..<n { line[column] *= beta } }
            }
        }
        guard k > 0 else { return }
        let workers = Swift.max(1, threads)
        let packedB = ScratchMemory.floats(depthBlock * (columnBlock + columnsPerStrip))
        defer { ScratchMemory.release(packedB) }
        let rowBlocks = (m + rowBlock - 1) / rowBlock
        let splitRows = rowBlocks >= 2 * workers || workers == 1
        // Small M: pack all of A once per depth block and split the column strips instead.
        let sharedA = splitRows ? nil : ScratchMemory.floats((rowBlocks * rowBlock + rowsPerStrip) * depthBlock)
        defer { sharedA.map(ScratchMemory.release) }
        let scratch = ScratchMemory.floats(workers * ((rowBlock + rowsPerStrip) * depthBlock + rowsPerStrip * columnsPerStrip))
        defer { ScratchMemory.release(scratch) }
        let scratchStride = (rowBlock + rowsPerStrip) * depthBlock + rowsPerStrip * columnsPerStrip

        for column0 in stride(from: 0, to: n, by: columnBlock) {
            let columns = Swift.min(columnBlock, n - column0)
            let strips = (columns + columnsPerStrip - 1) / columnsPerStrip
            for depth0 in stride(from: 0, to: k, by: depthBlock) {
                let depth = Swift.min(depthBlock, k - depth0)
                let accumulate = depth0 > 0 || arguments.beta != 0
                run(workers: workers, tasks: strips) { task in
                    packBStrip(arguments, column0: column0 + task * columnsPerStrip,
                               width: Swift.min(columnsPerStrip, columns - task * columnsPerStrip),
                               depth0: depth0, depth: depth, into: packedB + task * depth * columnsPerStrip)
                }
                if splitRows {
                    runDealt(workers: workers, tasks: rowBlocks) { block, worker in
                        let row0 = block * rowBlock
                        let rows = Swift.min(rowBlock, m - row0)
                        let packedA = scratch + worker * scratchStride
                        packA(arguments, row0: row0, rows: rows, depth0: depth0, depth: depth, into: packedA)
                        computeBlock(arguments, packedA: packedA, packedB: packedB, row0: row0, rows: rows,
                                     column0: column0, columns: columns, strips: 0..<strips, depth: depth,
                                     accumulate: accumulate, tile: packedA + (rowBlock + rowsPerStrip) * depthBlock)
                    }
                } else if let sharedA {
                    run(workers: workers, tasks: rowBlocks) { block in
                        let row0 = block * rowBlock
                        packA(arguments, row0: row0, rows: Swift.min(rowBlock, m - row0), depth0: depth0, depth: depth,
                              into: sharedA + block * rowBlock * depth)
                    }
                    runRanges(workers: workers, tasks: strips) { range, worker in
                        let tile = scratch + worker * scratchStride
                        for block in 0..<rowBlocks {
                            let row0 = block * rowBlock
                            computeBlock(arguments, packedA: sharedA + block * rowBlock * depth, packedB: packedB,
                                         row0: row0, rows: Swift.min(rowBlock, m - row0), column0: column0, columns: columns,
                                         strips: range, depth: depth, accumulate: accumulate, tile: tile)
                        }
                    }
                }
            }
        }
    }

    /// Runs `body(task)` for every task over the workers.
    @inline(__always)
    static func run(workers: Int, tasks: Int, _ body: (Int) -> Void) {
        if workers == 1 || tasks == 1 {
            for task in 0..<tasks { body(task) }
            return
        }
        WorkerPool.shared.run(chunks: Swift.min(workers, tasks)) { worker in
            var task = worker
            while task < tasks { body(task); task += workers }
        }
    }

    /// Runs `body(task, worker)` with tasks dealt round-robin to the workers.
    @inline(__always)
    static func runDealt(workers: Int, tasks: Int, _ body: (Int, Int) -> Void) {
        let active = Swift.min(workers, tasks)
        if active <= 1 {
            for task in 0..<tasks { body(task, 0) }
            return
        }
        WorkerPool.shared.run(chunks: active) { worker in
            var task = worker
            while task < tasks { body(task, worker); task += active }
        }
    }

    /// Runs `body(range, worker)` with the tasks split into one contiguous range per worker.
    @inline(__always)
    static func runRanges(workers: Int, tasks: Int, _ body: (Range<Int>, Int) -> Void) {
        let active = Swift.min(workers, tasks)
        if active <= 1 {
            body(0..<tasks, 0)
            return
        }
        WorkerPool.shared.run(chunks: active) { worker in
            body(tasks * worker / active ..< tasks * (worker + 1) / active, worker)
        }
    }
}

extension Gemm {
    /// Diffuse's own packed GEMM over all worker threads.
    public static func packed(_ arguments: GemmArguments) {
        PackedGemm.multiply(arguments, threads: Parallel.threadCount)
    }

    /// Diffuse's own packed GEMM on the calling thread only.
    public static func packedSerial(_ arguments: GemmArguments) {
        PackedGemm.multiply(arguments, threads: 1)
    }
}
