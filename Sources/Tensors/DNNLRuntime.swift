import CDNNL
import Foundation

/// What the oneDNN paths (``BFloat16Linear``, ``BFloat16Convolution``) share: the CPU
/// engine, a stream per thread, OpenMP kept single-threaded (Diffuse's workers split the
/// work), and running one primitive on raw buffers.
enum DNNLRuntime {
    /// oneDNN's CPU engine (each thread makes its own stream on it).
    final class Engine: @unchecked Sendable {
        let engine: dnnl_engine_t

        init?() {
            var engine: dnnl_engine_t?
            guard dnnl_engine_create(&engine, dnnl_cpu, 0) == dnnl_success, let engine else { return nil }
            self.engine = engine
        }
    }

    /// The engine, nil when oneDNN could not make one.
    nonisolated(unsafe) static let shared = Engine()

    /// Makes oneDNN (OpenMP inside) run single-threaded on the calling thread: Diffuse's
    /// workers split the product, as they do BLAS's (OpenMP's own threads spinning beside
    /// the pool's cost half the speed on 2 cores). `omp_set_num_threads` is looked up at run
    /// time in the OpenMP runtime oneDNN loaded.
    private static let setOpenMPThreads: (@convention(c) (Int32) -> Void)? = {
        guard let symbol = dlsym(nil, "omp_set_num_threads") else { return nil }  // RTLD_DEFAULT: every loaded library
        return unsafeBitCast(symbol, to: (@convention(c) (Int32) -> Void).self)
    }()
    private static let singleThreaded = ThreadSpecificFlag()

    /// `omp_set_num_threads(1)` once per thread. Call it before making primitives too:
    /// oneDNN sizes a primitive's work split by the OpenMP thread count of the thread that creates it.
    static func makeOpenMPSingleThreaded() {
        guard !singleThreaded.isSet else { return }
        setOpenMPThreads?(1)
        singleThreaded.set()
    }

    /// Each thread's oneDNN stream.
    private static let streams = ThreadSpecificPointer()

    /// The calling thread's stream (made on first use and kept for the thread's life:
    /// streams are not to be shared between threads).
    static func stream(_ engine: Engine) -> dnnl_stream_t? {
        if let existing = streams.value { return OpaquePointer(existing) }
        var made: dnnl_stream_t?
        guard dnnl_stream_create(&made, engine.engine, UInt32(dnnl_stream_default_flags.rawValue)) == dnnl_success, let made else { return nil }
        streams.value = UnsafeMutableRawPointer(made)
        return made
    }

    /// A primitive made from an operation descriptor, with its descriptor kept for queries.
    final class Primitive {
        let primitive: dnnl_primitive_t
        let description: dnnl_primitive_desc_t

        /// nil when oneDNN has no implementation for the operation.
        init?(operation: UnsafeRawPointer, engine: Engine) {
            var made: dnnl_primitive_desc_t?
            guard dnnl_primitive_desc_create(&made, operation, nil, engine.engine, nil) == dnnl_success, let made else { return nil }
            var primitive: dnnl_primitive_t?
            guard dnnl_primitive_create(&primitive, made) == dnnl_success, let primitive else {
                dnnl_primitive_desc_destroy(made)
                return nil
            }
            self.description = made
            self.primitive = primitive
        }

        /// A reorder from `source` to `destination` layout.
        init?(reorderFrom source: inout dnnl_memory_desc_t, to destination: inout dnnl_memory_desc_t, engine: Engine) {
            var made: dnnl_primitive_desc_t?
            guard dnnl_reorder_primitive_desc_create(&made, &source, engine.engine, &destination, engine.engine, nil) == dnnl_success,
                  let made else { return nil }
            var primitive: dnnl_primitive_t?
            guard dnnl_primitive_create(&primitive, made) == dnnl_success, let primitive else {
                dnnl_primitive_desc_destroy(made)
                return nil
            }
            self.description = made
            self.primitive = primitive
        }

        /// The memory descriptor the primitive chose for `what` (e.g. `dnnl_query_weights_md`).
        func memoryDescription(_ what: dnnl_query_t) -> dnnl_memory_desc_t? {
            dnnl_primitive_desc_query_md(description, what, 0)?.pointee
        }

        deinit {
            dnnl_primitive_destroy(primitive)
            dnnl_primitive_desc_destroy(description)
        }
    }

    /// One argument of an execution: its role (`DNNL_ARG_SRC` …), layout and buffer.
    struct Argument {
        let role: Int32
        var description: dnnl_memory_desc_t
        let pointer: UnsafeMutableRawPointer
    }

    /// Runs `primitive` on the calling thread's stream and waits; false when oneDNN reports an error.
    static func execute(_ primitive: dnnl_primitive_t, engine: Engine, arguments: [Argument]) -> Bool {
        var memories: [dnnl_memory_t?] = []
        defer { for memory in memories { if let memory { dnnl_memory_destroy(memory) } } }
        var executionArguments: [dnnl_exec_arg_t] = []
        for var argument in arguments {
            var made: dnnl_memory_t?
            guard dnnl_memory_create(&made, &argument.description, engine.engine, argument.pointer) == dnnl_success, let made else { return false }
            memories.append(made)
            executionArguments.append(dnnl_exec_arg_t(arg: argument.role, memory: made))
        }
        guard let stream = stream(engine) else { return false }
        return dnnl_primitive_execute(primitive, stream, Int32(executionArguments.count), executionArguments) == dnnl_success
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
