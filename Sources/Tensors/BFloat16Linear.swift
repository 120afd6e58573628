import CDNNL
import Foundation
import Synchronization

/// `y = x · Wᵀ + b` on bfloat16 inputs with float32 accumulation, through
/// oneDNN's matmul primitive (its AVX512-BF16 `brgemm` kernels), for
/// ``ComputePrecision/bfloat16`` inference. The input is rounded to bfloat16
/// on every call; each weight's bfloat16 copy is made once and kept until
/// weights change (`invalidateWeights`, which loading, `copyValues` and the
/// optimizers call). Primitives are cached per shape.
///
/// The float32 `linear` is the reference it is tested against (within
/// bfloat16's rounding).
enum BFloat16Linear {
    /// oneDNN's CPU engine (each thread makes its own stream on it).
    private final class Runtime: @unchecked Sendable {
        let engine: dnnl_engine_t

        init?() {
            var engine: dnnl_engine_t?
            guard dnnl_engine_create(&engine, dnnl_cpu, 0) == dnnl_success, let engine else { return nil }
            self.engine = engine
        }
    }

    private struct ShapeKey: Hashable {
        /// `rows` is the piece's row count; `piece` keeps pieces that run at once on primitives
        /// of their own (Debian's oneDNN shares a primitive's scratchpad between its executions,
        /// so one primitive must not run on two threads at a time).
        let rows: Int, inFeatures: Int, outFeatures: Int, hasBias: Bool, piece: Int
    }

    /// One matmul primitive and the memory descriptors of its arguments.
    private final class Primitive {
        let primitive: dnnl_primitive_t
        var source = dnnl_memory_desc_t(), weights = dnnl_memory_desc_t(), bias = dnnl_memory_desc_t(), destination = dnnl_memory_desc_t()

        init?(_ key: ShapeKey, engine: dnnl_engine_t) {
            let (m, k, n) = (Int64(key.rows), Int64(key.inFeatures), Int64(key.outFeatures))
            guard dnnl_memory_desc_init_by_tag(&source, 2, [m, k], dnnl_bf16, dnnl_ab) == dnnl_success,
                  // The weight [out, in] row-major is the [in, out] matrix in column order: tag ba.
                  dnnl_memory_desc_init_by_tag(&weights, 2, [k, n], dnnl_bf16, dnnl_ba) == dnnl_success,
                  dnnl_memory_desc_init_by_tag(&bias, 2, [1, n], dnnl_f32, dnnl_ab) == dnnl_success,
                  // Dense pieces: a strided destination makes oneDNN fall back from brgemm to its slower jit gemm.
                  dnnl_memory_desc_init_by_tag(&destination, 2, [m, n], dnnl_f32, dnnl_ab) == dnnl_success else { return nil }
            var description = dnnl_matmul_desc_t()
            let status = key.hasBias ? dnnl_matmul_desc_init(&description, &source, &weights, &bias, &destination)
                : dnnl_matmul_desc_init(&description, &source, &weights, nil, &destination)
            guard status == dnnl_success else { return nil }
            var primitiveDescription: dnnl_primitive_desc_t?
            guard dnnl_primitive_desc_create(&primitiveDescription, &description, nil, engine, nil) == dnnl_success,
                  let primitiveDescription else { return nil }
            defer { dnnl_primitive_desc_destroy(primitiveDescription) }
            var made: dnnl_primitive_t?
            guard dnnl_primitive_create(&made, primitiveDescription) == dnnl_success, let made else { return nil }
            primitive = made
        }

        deinit { dnnl_primitive_destroy(primitive) }
    }

    /// A weight's bfloat16 copy; holds the weight's storage so its identity stays unique.
    private final class PackedWeight {
        let storage: Storage
        let offset: Int
        let words: UnsafeMutablePointer<UInt16>
        let count: Int

        init(_ weight: Tensor) {
            let dense = weight.contiguousData()
            storage = weight.storage
            offset = weight.offset
            count = dense.count
            words = UnsafeMutablePointer<UInt16>.allocate(capacity: count)
            BFloat16Linear.round(UnsafePointer(dense.floatPointer), into: words, count: count)
        }

        deinit { words.deallocate() }
    }

    private nonisolated(unsafe) static let runtime = Runtime()
    private nonisolated(unsafe) static var primitives: [ShapeKey: Primitive] = [:]
    private nonisolated(unsafe) static var packedWeights: [ObjectIdentifier: PackedWeight] = [:]
    private static let lock = NSLock()

    /// Whether oneDNN's engine could be created.
    static var isAvailable: Bool { runtime != nil }

    /// Forgets every weight's bfloat16 copy (weights changed or the mode was switched).
    static func invalidateWeights() {
        lock.lock()
        packedWeights.removeAll()
        lock.unlock()
    }

    /// Float32 → bfloat16, round to nearest even, NaN kept (as `HalfPrecision.encode`), in parallel.
    static func round(_ source: UnsafePointer<Float>, into destination: UnsafeMutablePointer<UInt16>, count: Int) {
        Parallel.forEach(count, grain: 65536) { range in
            HalfPrecision.encode(source + range.lowerBound, into: destination + range.lowerBound, count: range.count, as: .bfloat16)
        }
    }

    /// Makes oneDNN (OpenMP inside) run single-threaded on the calling thread: Diffuse's
    /// workers split the product, as they do BLAS's (OpenMP's own threads spinning beside
    /// the pool's cost half the speed on 2 cores). `omp_set_num_threads` is looked up at run
    /// time in the OpenMP runtime oneDNN loaded.
    private static let setOpenMPThreads: (@convention(c) (Int32) -> Void)? = {
        guard let symbol = dlsym(nil, "omp_set_num_threads") else { return nil }  // RTLD_DEFAULT: every loaded library
        return unsafeBitCast(symbol, to: (@convention(c) (Int32) -> Void).self)
    }()
    private static let singleThreaded = ThreadSpecificFlag()

    /// `omp_set_num_threads(1)` once per thread.
    private static func makeOpenMPSingleThreaded() {
        guard !singleThreaded.isSet else { return }
        setOpenMPThreads?(1)
        singleThreaded.set()
    }
    /// Each thread's oneDNN stream.
    private static let streams = ThreadSpecificPointer()

    /// The product for `input` `[..., in]`, `weight` `[out, in]`, `bias` `[out]` (float32,
    /// no graph), or nil when oneDNN cannot run it (the caller then takes the float32 path).
    static func linear(_ input: Tensor, weight: Tensor, bias: Tensor?) -> Tensor? {
        guard let runtime else { return nil }
        // Before primitives are made too: oneDNN sizes a primitive's work split by the
        // OpenMP thread count of the thread that creates it.
        makeOpenMPSingleThreaded()
        let (outFeatures, inFeatures) = (weight.shape[0], weight.shape[1])
        let rows = input.count / inFeatures
        // Row slices of at least 16 rows, one per worker.
        let pieces = Swift.max(1, Swift.min(Parallel.threadCount, rows / 16))
        let bounds = (0...pieces).map { piece in rows * piece / pieces }
        var slices: [(range: Range<Int>, primitive: Primitive)] = []
        let packed: PackedWeight
        lock.lock()
        do {
            defer { lock.unlock() }
            for piece in 0..<pieces {
                let range = bounds[piece]..<bounds[piece + 1]
                let key = ShapeKey(rows: range.count, inFeatures: inFeatures, outFeatures: outFeatures, hasBias: bias != nil, piece: piece)
                if let cached = primitives[key] {
                    slices.append((range, cached))
                } else {
                    guard let made = Primitive(key, engine: runtime.engine) else { return nil }
                    primitives[key] = made
                    slices.append((range, made))
                }
            }
            let weightKey = ObjectIdentifier(weight.storage)
            if let cached = packedWeights[weightKey], cached.offset == weight.offset, cached.count == weight.count {
                packed = cached
            } else {
                packed = PackedWeight(weight)
                packedWeights[weightKey] = packed
            }
        }
        let source = input.contiguousData()
        let roundedInput = UnsafeMutablePointer<UInt16>.allocate(capacity: source.count)
        defer { roundedInput.deallocate() }
        round(UnsafePointer(source.floatPointer), into: roundedInput, count: source.count)
        let result = Tensor(uninitializedShape: Array(input.shape.dropLast()) + [outFeatures])
        let biasData = bias?.contiguousData()
        let failed = Atomic<Bool>(false)
        Parallel.forEachTask(slices.count) { piece in
            makeOpenMPSingleThreaded()
            let (range, primitive) = slices[piece]
            if !execute(primitive, runtime: runtime, source: roundedInput + range.lowerBound * inFeatures, weights: packed.words,
                        bias: biasData?.floatPointer, destination: result.floatPointer + range.lowerBound * outFeatures) {
                failed.store(true, ordering: .relaxed)
            }
        }
        withExtendedLifetime((source, biasData, packed)) {}
        return failed.load(ordering: .relaxed) ? nil : result
    }

    /// Runs one primitive on the given buffers; false when oneDNN reports an error.
    private static func execute(_ primitive: Primitive, runtime: Runtime, source: UnsafeMutablePointer<UInt16>, weights: UnsafeMutablePointer<UInt16>,
                                bias: UnsafeMutablePointer<Float>?, destination: UnsafeMutablePointer<Float>) -> Bool {
        var memories: [dnnl_memory_t?] = []
        defer { for memory in memories { if let memory { dnnl_memory_destroy(memory) } } }
        func memory(_ description: inout dnnl_memory_desc_t, _ pointer: UnsafeMutableRawPointer) -> dnnl_memory_t? {
            var made: dnnl_memory_t?
            guard dnnl_memory_create(&made, &description, runtime.engine, pointer) == dnnl_success else { return nil }
            memories.append(made)
            return made
        }
        guard let sourceMemory = memory(&primitive.source, UnsafeMutableRawPointer(source)),
              let weightMemory = memory(&primitive.weights, UnsafeMutableRawPointer(weights)),
              let destinationMemory = memory(&primitive.destination, UnsafeMutableRawPointer(destination)) else { return false }
        var arguments = [dnnl_exec_arg_t(arg: Int32(DNNL_ARG_SRC), memory: sourceMemory),
                         dnnl_exec_arg_t(arg: Int32(DNNL_ARG_WEIGHTS), memory: weightMemory),
                         dnnl_exec_arg_t(arg: Int32(DNNL_ARG_DST), memory: destinationMemory)]
        if let bias {
            guard let biasMemory = memory(&primitive.bias, UnsafeMutableRawPointer(bias)) else { return false }
            arguments.append(dnnl_exec_arg_t(arg: Int32(DNNL_ARG_BIAS), memory: biasMemory))
        }
        // A stream per thread (streams are not to be shared between threads), kept for the thread's life.
        let stream: dnnl_stream_t
        if let existing = streams.value {
            stream = OpaquePointer(existing)
        } else {
            var made: dnnl_stream_t?
            guard dnnl_stream_create(&made, runtime.engine, UInt32(dnnl_stream_default_flags.rawValue)) == dnnl_success, let made else { return false }
            streams.value = UnsafeMutableRawPointer(made)
            stream = made
        }
        return dnnl_primitive_execute(primitive.primitive, stream, Int32(arguments.count), arguments) == dnnl_success
            && dnnl_stream_wait(stream) == dnnl_success
    }
}

/// A per-thread boolean, set once (pthread-specific data).
final class ThreadSpecificFlag: @unchecked Sendable {
    private var key = pthread_key_t()

    init() { pthread_key_create(&key, nil) }

    var isSet: Bool { pthread_getspecific(key) != nil }

    func set() { pthread_setspecific(key, UnsafeRawPointer(bitPattern: 1)) }
}

/// A per-thread pointer (pthread-specific data), nil until set.
final class ThreadSpecificPointer: @unchecked Sendable {
    private var key = pthread_key_t()

    init() { pthread_key_create(&key, nil) }

    var value: UnsafeMutableRawPointer? {
        get { pthread_getspecific(key) }
        set { pthread_setspecific(key, newValue) }
    }
}
