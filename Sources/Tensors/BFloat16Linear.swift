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
    private struct ShapeKey: Hashable {
        /// `rows` is the piece's row count; `piece` keeps pieces that run at once on primitives
        /// of their own (Debian's oneDNN shares a primitive's scratchpad between its executions,
        /// so one primitive must not run on two threads at a time).
        let rows: Int, inFeatures: Int, outFeatures: Int, hasBias: Bool, piece: Int
    }

    /// One matmul primitive and the memory descriptors of its arguments.
    private final class MatmulPrimitive {
        let made: DNNLRuntime.Primitive
        var source = dnnl_memory_desc_t(), weights = dnnl_memory_desc_t(), bias = dnnl_memory_desc_t(), destination = dnnl_memory_desc_t()

        init?(_ key: ShapeKey, engine: DNNLRuntime.Engine) {
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
            guard status == dnnl_success, let made = DNNLRuntime.Primitive(operation: &description, engine: engine) else { return nil }
            self.made = made
        }
    }

    /// A weight's bfloat16 copy, or its own memory when it is held in bfloat16; holds the
    /// weight's storage so its identity stays unique.
    private final class PackedWeight {
        let storage: Storage
        let offset: Int
        let words: UnsafeMutablePointer<UInt16>
        let count: Int
        /// The rounded copy when the weight is not bfloat16 already, from the buffer pool (so the
        /// pool's high-water mark counts it, as the convolutions' copies).
        private let copy: Storage?

        init(_ weight: Tensor) {
            storage = weight.storage
            offset = weight.offset
            count = weight.count
            if weight.dataType == .bfloat16 && weight.isContiguous {
                words = weight.storage.halfWords + weight.offset
                copy = nil
            } else {
                let dense = weight.contiguousData()
                let made = Storage(count: count, dataType: .bfloat16)
                copy = made
                words = made.halfWords
                BFloat16Linear.round(UnsafePointer(dense.floatPointer), into: words, count: count)
                // The rounded copy is what runs from now on: a mapped original's pages go back to the system.
                withExtendedLifetime(dense) { MappedPages.release(weight) }
            }
        }
    }

    private nonisolated(unsafe) static var primitives: [ShapeKey: MatmulPrimitive] = [:]
    private nonisolated(unsafe) static var packedWeights: [ObjectIdentifier: PackedWeight] = [:]
    private static let lock = NSLock()

    /// Whether oneDNN's engine could be created.
    static var isAvailable: Bool { DNNLRuntime.shared != nil }

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

    /// The product for `input` `[..., in]`, `weight` `[out, in]`, `bias` `[out]` (float32,
    /// no graph), or nil when oneDNN cannot run it (the caller then takes the float32 path).
    static func linear(_ input: Tensor, weight: Tensor, bias: Tensor?) -> Tensor? {
        guard let engine = DNNLRuntime.shared else { return nil }
        DNNLRuntime.makeOpenMPSingleThreaded()
        let (outFeatures, inFeatures) = (weight.shape[0], weight.shape[1])
        let rows = input.count / inFeatures
        // Row slices of at least 16 rows, one per worker.
        let pieces = Swift.max(1, Swift.min(Parallel.threadCount, rows / 16))
        let bounds = (0...pieces).map { piece in rows * piece / pieces }
        var slices: [(range: Range<Int>, primitive: MatmulPrimitive)] = []
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
                    guard let made = MatmulPrimitive(key, engine: engine) else { return nil }
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
        // From the buffer pool: a fresh allocation per call costs its page faults every time.
        let roundedStorage = Storage(count: source.count, dataType: .bfloat16)
        let roundedInput = roundedStorage.halfWords
        round(UnsafePointer(source.floatPointer), into: roundedInput, count: source.count)
        let result = Tensor(uninitializedShape: Array(input.shape.dropLast()) + [outFeatures])
        let biasData = bias?.contiguousData()
        let failed = Atomic<Bool>(false)
        Parallel.forEachTask(slices.count) { piece in
            DNNLRuntime.makeOpenMPSingleThreaded()
            let (range, primitive) = slices[piece]
            var arguments = [
                DNNLRuntime.Argument(role: Int32(DNNL_ARG_SRC), description: primitive.source,
                                     pointer: UnsafeMutableRawPointer(roundedInput + range.lowerBound * inFeatures)),
                DNNLRuntime.Argument(role: Int32(DNNL_ARG_WEIGHTS), description: primitive.weights, pointer: UnsafeMutableRawPointer(packed.words)),
                DNNLRuntime.Argument(role: Int32(DNNL_ARG_DST), description: primitive.destination,
                                     pointer: UnsafeMutableRawPointer(result.floatPointer + range.lowerBound * outFeatures)),
            ]
            if let biasData {
                arguments.append(DNNLRuntime.Argument(role: Int32(DNNL_ARG_BIAS), description: primitive.bias, pointer: UnsafeMutableRawPointer(biasData.floatPointer)))
            }
            if !DNNLRuntime.execute(primitive.made.primitive, engine: engine, arguments: arguments) {
                failed.store(true, ordering: .relaxed)
            }
        }
        withExtendedLifetime((source, biasData, packed, roundedStorage)) {}
        return failed.load(ordering: .relaxed) ? nil : result
    }
}

