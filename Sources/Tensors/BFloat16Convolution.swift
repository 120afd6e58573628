import CDNNL
import Foundation
import Synchronization

/// 2-d convolution on bfloat16 inputs with float32 accumulation and output, through
/// oneDNN's convolution primitive (its AVX512-BF16 kernels), for
/// ``ComputePrecision/bfloat16`` inference. The channels-last input is rounded to
/// bfloat16 on every call; each weight is reordered once into the layout the primitive
/// asks for (bfloat16) and kept until weights change (`invalidateWeights`).
///
/// The work is split over Diffuse's workers by images, or by bands of output rows
/// when there are fewer images than workers; each piece is a dense slice of the
/// channels-last input and output and runs on a primitive of its own (Debian's oneDNN
/// shares a primitive's scratchpad between its executions).
///
/// The float32 `conv2d` is the reference it is tested against (within bfloat16's rounding).
enum BFloat16Convolution {
    /// One piece's problem: `images` images of `inputRows` input rows (padded by
    /// `padTop` / `padBottom`) giving `outputRows` output rows.
    private struct PieceKey: Hashable {
        let images: Int, inChannels: Int, inputRows: Int, width: Int
        let outChannels: Int, outputRows: Int, outWidth: Int
        let kernelHeight: Int, kernelWidth: Int, stride: Int
        let padTop: Int, padBottom: Int, padding: Int
        let hasBias: Bool, piece: Int
    }

    /// A convolution primitive and its arguments' layouts.
    private final class ConvolutionPrimitive {
        let made: DNNLRuntime.Primitive
        var source = dnnl_memory_desc_t(), weights = dnnl_memory_desc_t(), bias = dnnl_memory_desc_t(), destination = dnnl_memory_desc_t()

        init?(_ key: PieceKey, engine: DNNLRuntime.Engine) {
            let (n, c, o) = (Int64(key.images), Int64(key.inChannels), Int64(key.outChannels))
            var anyWeights = dnnl_memory_desc_t()
            guard dnnl_memory_desc_init_by_tag(&source, 4, [n, c, Int64(key.inputRows), Int64(key.width)], dnnl_bf16, dnnl_nhwc) == dnnl_success,
                  dnnl_memory_desc_init_by_tag(&anyWeights, 4, [o, c, Int64(key.kernelHeight), Int64(key.kernelWidth)], dnnl_bf16,
                                               dnnl_format_tag_any) == dnnl_success,
                  dnnl_memory_desc_init_by_tag(&bias, 1, [o], dnnl_f32, dnnl_a) == dnnl_success,
                  dnnl_memory_desc_init_by_tag(&destination, 4, [n, o, Int64(key.outputRows), Int64(key.outWidth)], dnnl_f32, dnnl_nhwc) == dnnl_success
            else { return nil }
            var description = dnnl_convolution_desc_t()
            let strides: [Int64] = [Int64(key.stride), Int64(key.stride)]
            let left: [Int64] = [Int64(key.padTop), Int64(key.padding)]
            let right: [Int64] = [Int64(key.padBottom), Int64(key.padding)]
            let status = key.hasBias
                ? dnnl_convolution_forward_desc_init(&description, dnnl_forward_inference, dnnl_convolution_direct, &source, &anyWeights,
                                                     &bias, &destination, strides, left, right)
                : dnnl_convolution_forward_desc_init(&description, dnnl_forward_inference, dnnl_convolution_direct, &source, &anyWeights,
                                                     nil, &destination, strides, left, right)
            guard status == dnnl_success, let made = DNNLRuntime.Primitive(operation: &description, engine: engine),
                  let chosen = made.memoryDescription(dnnl_query_weights_md) else { return nil }
            self.made = made
            weights = chosen
        }
    }

    /// A weight reordered (and rounded to bfloat16) into one primitive layout; holds the
    /// weight's storage so its identity stays unique.
    private final class PackedWeight {
        let storage: Storage
        let offset: Int
        var description: dnnl_memory_desc_t
        /// The reordered copy, from the buffer pool: its high-water mark then counts these copies, so the
        /// pool does not keep a decode's freed activations cached on top of them (a second image's peak
        /// was 0.8 GB above the first's while they came from `malloc`).
        private let copy: Storage
        var bytes: UnsafeMutableRawPointer { copy.bytes }

        init?(_ weight: Tensor, into description: dnnl_memory_desc_t, engine: DNNLRuntime.Engine) {
            storage = weight.storage
            offset = weight.offset
            self.description = description
            let dense = weight.contiguousData()
            var plain = dnnl_memory_desc_t()
            let dims = weight.shape.map(Int64.init)
            copy = Storage(count: (dnnl_memory_desc_get_size(&self.description) + 1) / 2, dataType: .bfloat16)
            guard dnnl_memory_desc_init_by_tag(&plain, 4, dims, dnnl_f32, dnnl_oihw) == dnnl_success,
                  let reorder = DNNLRuntime.Primitive(reorderFrom: &plain, to: &self.description, engine: engine),
                  DNNLRuntime.execute(reorder.primitive, engine: engine, arguments: [
                      .init(role: Int32(DNNL_ARG_FROM), description: plain, pointer: UnsafeMutableRawPointer(dense.floatPointer)),
                      .init(role: Int32(DNNL_ARG_TO), description: description, pointer: copy.bytes),
                  ]) else {
                return nil
            }
            // The reordered copy is what runs from now on: a mapped original's pages go back to the system.
            withExtendedLifetime(dense) { MappedPages.release(weight) }
        }
    }

    private nonisolated(unsafe) static var primitives: [PieceKey: ConvolutionPrimitive] = [:]
    private nonisolated(unsafe) static var packedWeights: [ObjectIdentifier: [PackedWeight]] = [:]
    private static let lock = NSLock()

    /// Forgets every weight's reordered copy (weights changed or the mode was switched).
    static func invalidateWeights() {
        lock.lock()
        packedWeights.removeAll()
        lock.unlock()
    }

    /// The weight's copy in `description`'s layout (made on first use).
    private static func packed(_ weight: Tensor, _ description: dnnl_memory_desc_t, engine: DNNLRuntime.Engine) -> PackedWeight? {
        let key = ObjectIdentifier(weight.storage)
        var wanted = description
        if let found = packedWeights[key]?.first(where: { $0.offset == weight.offset && dnnl_memory_desc_equal(&$0.description, &wanted) != 0 }) {
            return found
        }
        guard let made = PackedWeight(weight, into: description, engine: engine) else { return nil }
        packedWeights[key, default: []].append(made)
        return made
    }

    /// The convolution of `input` (dense float32 channels-last) by `weight` `[O, C, kh, kw]`
    /// with `bias`, as a channels-last float32 tensor; nil when oneDNN cannot run it (the
    /// caller then takes the float32 path).
    static func forward(input: Tensor, weight: Tensor, bias: Tensor?, geometry: ConvolutionGeometry) -> Tensor? {
        guard let engine = DNNLRuntime.shared else { return nil }
        DNNLRuntime.makeOpenMPSingleThreaded()
        let g = geometry
        // Pieces: groups of images, or bands of output rows of each image.
        var pieces: [(image: Int, images: Int, row: Int, rows: Int)] = []
        let workers = Parallel.threadCount
        if g.batch >= workers || g.outHeight < 2 * workers {
            let groups = Swift.min(workers, g.batch)
            for group in 0..<groups {
                let first = g.batch * group / groups, end = g.batch * (group + 1) / groups
                pieces.append((first, end - first, 0, g.outHeight))
            }
        } else {
            for image in 0..<g.batch {
                for band in 0..<workers {
                    let first = g.outHeight * band / workers, end = g.outHeight * (band + 1) / workers
                    pieces.append((image, 1, first, end - first))
                }
            }
        }
        var plans: [(piece: (image: Int, images: Int, row: Int, rows: Int), inputRow: Int, primitive: ConvolutionPrimitive, weight: PackedWeight)] = []
        lock.lock()
        do {
            defer { lock.unlock() }
            for (index, piece) in pieces.enumerated() {
                // Whole images keep their rows and PyTorch's padding; a band of rows reads the input
                // rows its outputs need, padded only where the band reaches past the image.
                var (firstRow, inputRows, padTop, padBottom) = (0, g.height, g.padding, g.padding)
                if piece.rows < g.outHeight {
                    let top = piece.row * g.stride - g.padding
                    let bottom = (piece.row + piece.rows - 1) * g.stride - g.padding + g.kernelHeight
                    firstRow = Swift.max(0, top)
                    inputRows = Swift.min(g.height, bottom) - firstRow
                    (padTop, padBottom) = (firstRow - top, bottom - firstRow - inputRows)
                }
                let key = PieceKey(images: piece.images, inChannels: g.inChannels, inputRows: inputRows, width: g.width,
                                   outChannels: g.outChannels, outputRows: piece.rows, outWidth: g.outWidth,
                                   kernelHeight: g.kernelHeight, kernelWidth: g.kernelWidth, stride: g.stride,
                                   padTop: padTop, padBottom: padBottom, padding: g.padding,
                                   hasBias: bias != nil, piece: index)
                let primitive: ConvolutionPrimitive
                if let cached = primitives[key] {
                    primitive = cached
                } else {
                    guard let made = ConvolutionPrimitive(key, engine: engine) else { return nil }
                    primitives[key] = made
                    primitive = made
                }
                guard let weight = packed(weight, primitive.weights, engine: engine) else { return nil }
                plans.append((piece, firstRow, primitive, weight))
            }
        }
        // From the buffer pool: a fresh allocation per call costs its page faults every time.
        let roundedStorage = Storage(count: input.count, dataType: .bfloat16)
        let rounded = roundedStorage.halfWords
        BFloat16Linear.round(UnsafePointer(input.floatPointer), into: rounded, count: input.count)
        let result = Convolution.channelsLastTensor(g.outputShape)
        let biasData = bias?.contiguousData()
        let (imageIn, rowIn) = (g.height * g.width * g.inChannels, g.width * g.inChannels)
        let (imageOut, rowOut) = (g.outHeight * g.outWidth * g.outChannels, g.outWidth * g.outChannels)
        let failed = Atomic<Bool>(false)
        Parallel.forEachTask(plans.count) { index in
            DNNLRuntime.makeOpenMPSingleThreaded()
            let plan = plans[index]
            let source = rounded + plan.piece.image * imageIn + plan.inputRow * rowIn
            let destination = result.floatPointer + plan.piece.image * imageOut + plan.piece.row * rowOut
            var arguments = [
                DNNLRuntime.Argument(role: Int32(DNNL_ARG_SRC), description: plan.primitive.source, pointer: UnsafeMutableRawPointer(source)),
                DNNLRuntime.Argument(role: Int32(DNNL_ARG_WEIGHTS), description: plan.primitive.weights, pointer: plan.weight.bytes),
                DNNLRuntime.Argument(role: Int32(DNNL_ARG_DST), description: plan.primitive.destination, pointer: UnsafeMutableRawPointer(destination)),
            ]
            if let biasData {
                arguments.append(.init(role: Int32(DNNL_ARG_BIAS), description: plan.primitive.bias, pointer: UnsafeMutableRawPointer(biasData.floatPointer)))
            }
            if !DNNLRuntime.execute(plan.primitive.made.primitive, engine: engine, arguments: arguments) {
                failed.store(true, ordering: .relaxed)
            }
        }
        withExtendedLifetime((input, biasData, plans, roundedStorage)) {}
        return failed.load(ordering: .relaxed) ? nil : result
    }
}
