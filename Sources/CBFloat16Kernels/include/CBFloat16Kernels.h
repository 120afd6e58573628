#ifndef DIFFUSE_CBFLOAT16_KERNELS_H
#define DIFFUSE_CBFLOAT16_KERNELS_H
// Kernels that need an instruction Swift cannot express: VDPBF16PS (AVX512-BF16), bfloat16
// dot products with float32 accumulation. Each function is compiled for AVX512-BF16 alone
// (a target attribute), so the target builds for any x86-64 CPU; Swift calls them only
// after checking the CPU at run time (CPUFeatures.hasAVX512BF16).
#include <stdint.h>

/// Query rows per block of `diffuse_bf16_attention_block` (the lanes of two 16-float vectors).
#define DIFFUSE_BF16_ATTENTION_ROWS 32
/// Keys per block (its scores stay in L1 beside the packed keys and values).
#define DIFFUSE_BF16_ATTENTION_KEY_BLOCK 64
/// The largest head size (query/key depth and value depth) the kernel takes.
#define DIFFUSE_BF16_ATTENTION_MAX_DEPTH 256

/// `out[s * paddedDepth + e] = bf16(x[s * rowStride + e * elementStride])` for s < rows, e < depth;
/// zero for depth ≤ e < paddedDepth (an even number ≥ depth). Round to nearest even.
void diffuse_bf16_pack_rows(const float *x, long rowStride, long elementStride, long rows, long depth,
                            long paddedDepth, uint16_t *out);

/// `out[e * paddedRows + s] = bf16(x[s * rowStride + e * elementStride])` for s < rows, e < depth;
/// zero for rows ≤ s < paddedRows (an even number ≥ rows).
void diffuse_bf16_pack_columns(const float *x, long rowStride, long elementStride, long rows, long depth,
                               long paddedRows, uint16_t *out);

/// Attention forward for up to 32 query rows of one item, FlashAttention's scheme on bfloat16
/// products with float32 accumulation and a float32 online softmax:
/// `out[r, :] = Σ_s softmax_s(scale · q_r · k_s) · v_s` for the rows `firstRow ..< firstRow + rowCount`.
/// `keys` is `diffuse_bf16_pack_rows` of K (`keyLength × paddedDepth`), `valuesTransposed` is
/// `diffuse_bf16_pack_columns` of V (`valueDepth × paddedKeyLength`). `scratch` holds at least
/// `diffuse_bf16_attention_scratch_floats()` floats, 64-byte aligned.
void diffuse_bf16_attention_block(const uint16_t *keys, long paddedDepth, const uint16_t *valuesTransposed,
                                  long paddedKeyLength, long keyLength, long depth, long valueDepth,
                                  const float *query, long queryRowStride, long queryElementStride,
                                  long firstRow, long rowCount, float scale,
                                  float *output, long outputRowStride, float *scratch);

/// Floats of scratch `diffuse_bf16_attention_block` needs.
long diffuse_bf16_attention_scratch_floats(void);

/// Whether this build has the kernels (1), or they were compiled out (0, a compiler without AVX512-BF16).
int diffuse_bf16_kernels_built(void);

#endif
