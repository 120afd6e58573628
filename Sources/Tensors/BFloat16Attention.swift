import CBFloat16Kernels
import Foundation

/// Attention forward on bfloat16 products with float32 accumulation, for
/// ``ComputePrecision/bfloat16`` inference on CPUs with AVX512-BF16: the tiled
/// online-softmax scheme of `TiledAttention` (no L×S matrix), with both products
/// (Q·Kᵀ and P·V) on `VDPBF16PS`, which does twice the multiply-adds of a float32 FMA.
/// The kernel is C (CBFloat16Kernels/attention.c): Swift cannot express the instruction.
///
/// Q (times scale · log₂ e), K, Vᵀ and the probabilities are rounded to bfloat16
/// (8 significant bits); the scores, the softmax and the sums stay float32. Used when
/// nothing records gradients, without a mask, for heads up to 256 wide; everything else
/// takes the float32 kernels, which are the reference it is tested against.
enum BFloat16Attention {
    /// Query rows per kernel call.
    static let rows = Int(DIFFUSE_BF16_ATTENTION_ROWS)
    /// The largest head the kernel takes.
    static let maximumDepth = Int(DIFFUSE_BF16_ATTENTION_MAX_DEPTH)

    /// Whether the kernels exist in this build and the CPU runs them.
    static var isAvailable: Bool { CPUFeatures.hasAVX512BF16 && diffuse_bf16_kernels_built() == 1 }

    /// Whether `problem` takes this path: bfloat16 inference mode, the CPU has the instruction,
    /// no gradient is recorded, no mask, heads ≤ 256, and sequences long enough for the tiled kernel.
    static func applies(to problem: AttentionProblem, recording: Bool) -> Bool {
        guard !recording, problem.mask == nil, ComputeMode.precision == .bfloat16, AttentionKernels.allowsBFloat16, isAvailable else {
            return false
        }
        return problem.depth <= maximumDepth && problem.valueDepth <= maximumDepth
            && TiledAttention.supports(problem) && problem.queryLength * problem.keyLength >= TiledAttention.minimumScores
    }

    /// The output `[…, L, Ev]`, laid out like the query when that is a dense view of the same shape.
    static func forward(_ problem: AttentionProblem) -> Tensor {
        let (L, S, E, Ev) = (problem.queryLength, problem.keyLength, problem.depth, problem.valueDepth)
        let paddedDepth = (E + 1) & ~1, paddedKeys = (S + 1) & ~1
        let scale = problem.scale * TiledAttentionKernels.log2e
        let layout = SmallHeadAttention.RowLayout(like: problem.query, batchShape: problem.batchShape, rows: L, depth: Ev)
        let output = layout.allocate()
        let out = output.floatPointer
        let queryBlocks = (L + rows - 1) / rows
        let units = problem.batch * queryBlocks
        let tasks = TiledAttention.taskCount(units: units)
        let scratchFloats = Int(diffuse_bf16_attention_scratch_floats())
        // Packed keys (S × paddedDepth halves) and transposed values (Ev × paddedKeys halves), as floats.
        let keyFloats = (S * paddedDepth + 1) / 2 + 16, valueFloats = (Ev * paddedKeys + 1) / 2 + 16
        Parallel.forEachTask(tasks) { task in
            let scratch = ScratchMemory.floats(scratchFloats)
            let keyBuffer = ScratchMemory.floats(keyFloats), valueBuffer = ScratchMemory.floats(valueFloats)
            defer { for buffer in [scratch, keyBuffer, valueBuffer] { ScratchMemory.release(buffer) } }
            let keys = UnsafeMutableRawPointer(keyBuffer).bindMemory(to: UInt16.self, capacity: keyFloats * 2)
            let values = UnsafeMutableRawPointer(valueBuffer).bindMemory(to: UInt16.self, capacity: valueFloats * 2)
            var loadedItem = -1
            for unit in AttentionProblem.block(task, of: tasks, units) {
                let itemIndex = unit / queryBlocks, first = (unit % queryBlocks) * rows
                let item = TiledAttention.Item(problem, itemIndex)
                if itemIndex != loadedItem {
                    let key = strides(item.keyLayout), value = strides(item.valueLayout)
                    diffuse_bf16_pack_rows(item.key, key.row, key.element, S, E, paddedDepth, keys)
                    diffuse_bf16_pack_columns(item.value, value.row, value.element, S, Ev, paddedKeys, values)
                    loadedItem = itemIndex
                }
                let query = strides(item.queryLayout)
                diffuse_bf16_attention_block(keys, paddedDepth, values, paddedKeys, S, E, Ev,
                                             item.query, query.row, query.element, first, Swift.min(rows, L - first), scale,
                                             out + layout.itemOffsets[itemIndex], layout.rowStride, scratch)
            }
        }
        return output
    }

    /// Row and element strides of an operand's item layout.
    private static func strides(_ layout: (transposed: Bool, leadingDimension: Int)) -> (row: Int, element: Int) {
        layout.transposed ? (1, layout.leadingDimension) : (layout.leadingDimension, 1)
    }
}
