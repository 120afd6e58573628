// bfloat16 attention (FlashAttention's scheme) on VDPBF16PS. See CBFloat16Kernels.h.
//
// A block of 32 query rows lives in the lanes of two 16-float vectors ("row lanes"), so the
// online softmax over keys is lane-wise, with no horizontal reductions:
//   scores  Sᵀ[s][32]  = Σ_p  Qp[p][32 lanes][2] · (K[s][2p], K[s][2p+1])   (pairs of head elements)
//   Oᵀ[d][32] = corr · Oᵀ[d][32] + Σ_sp Pp[sp][32 lanes][2] · (Vᵀ[d][2sp], Vᵀ[d][2sp+1])  (pairs of keys)
// where Qp are the block's queries (times scale · log₂ e) packed in pairs of head elements and
// Pp the block's probabilities packed in pairs of keys, both bfloat16; VDPBF16PS multiplies
// such pairs and adds both products to a float32 lane. The broadcast operand is one 32-bit
// word: a pair of a key's elements, or a pair of keys of one value element.
#include "CBFloat16Kernels.h"
#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__clang__) && __clang_major__ >= 10
#include <immintrin.h>

#define ROWS DIFFUSE_BF16_ATTENTION_ROWS
#define KEY_BLOCK DIFFUSE_BF16_ATTENTION_KEY_BLOCK
#define MAX_DEPTH DIFFUSE_BF16_ATTENTION_MAX_DEPTH

#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma"))), apply_to = function)

static inline uint16_t round_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    bits += 0x7FFF + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

void diffuse_bf16_pack_rows(const float *x, long rowStride, long elementStride, long rows, long depth,
                            long paddedDepth, uint16_t *out) {
    for (long s = 0; s < rows; s++) {
        const float *row = x + s * rowStride;
        uint16_t *target = out + s * paddedDepth;
        long e = 0;
        if (elementStride == 1) {
            for (; e + 16 <= depth; e += 16) {
                __m256bh packed = _mm512_cvtneps_pbh(_mm512_loadu_ps(row + e));
                _mm256_storeu_si256((__m256i *)(target + e), (__m256i)packed);
            }
        }
        for (; e < depth; e++) target[e] = round_bf16(row[e * elementStride]);
        for (; e < paddedDepth; e++) target[e] = 0;
    }
}

void diffuse_bf16_pack_columns(const float *x, long rowStride, long elementStride, long rows, long depth,
                               long paddedRows, uint16_t *out) {
    for (long e = 0; e < depth; e++) {
        const float *column = x + e * elementStride;
        uint16_t *target = out + e * paddedRows;
        long s = 0;
        if (rowStride == 1) {
            for (; s + 16 <= rows; s += 16) {
                __m256bh packed = _mm512_cvtneps_pbh(_mm512_loadu_ps(column + s));
                _mm256_storeu_si256((__m256i *)(target + s), (__m256i)packed);
            }
        }
        for (; s < rows; s++) target[s] = round_bf16(column[s * rowStride]);
        for (; s < paddedRows; s++) target[s] = 0;
    }
}

/// 2ˣ for x ≤ 0 (Cephes' exp2f polynomial on [−½, ½], scaled by 2ⁿ); x below −126 gives ~0.
static inline __m512 exp2_vector(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
    __m512 whole = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, whole);
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, whole);
}

static inline __m512bh broadcast_pair(const uint16_t *pair) {
    uint32_t word;
    memcpy(&word, pair, 4);
    return (__m512bh)_mm512_set1_epi32((int)word);
}

static inline __m512bh load_pairs(const uint16_t *pointer) { return (__m512bh)_mm512_loadu_si512(pointer); }

/// Sᵀ[s][32] for the keys `first ..< first + count` of the block: tiles of 6 keys × 2 lane vectors.
static void block_scores(const uint16_t *keys, long paddedDepth, long count, const uint16_t *queries, float *scores) {
    const long pairs = paddedDepth / 2;
    for (long first = 0; first < count; first += 6) {
        const long last = count - 1;
        const uint16_t *k0 = keys + (first < last ? first : last) * paddedDepth;
        const uint16_t *k1 = keys + (first + 1 < last ? first + 1 : last) * paddedDepth;
        const uint16_t *k2 = keys + (first + 2 < last ? first + 2 : last) * paddedDepth;
        const uint16_t *k3 = keys + (first + 3 < last ? first + 3 : last) * paddedDepth;
        const uint16_t *k4 = keys + (first + 4 < last ? first + 4 : last) * paddedDepth;
        const uint16_t *k5 = keys + (first + 5 < last ? first + 5 : last) * paddedDepth;
        __m512 a0 = _mm512_setzero_ps(), b0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
        __m512 a2 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps(), b3 = _mm512_setzero_ps();
        __m512 a4 = _mm512_setzero_ps(), b4 = _mm512_setzero_ps(), a5 = _mm512_setzero_ps(), b5 = _mm512_setzero_ps();
        const uint16_t *q = queries;
        for (long p = 0; p < pairs; p++, q += 2 * ROWS) {
            const __m512bh low = load_pairs(q), high = load_pairs(q + ROWS);
            __m512bh k = broadcast_pair(k0 + 2 * p);
            a0 = _mm512_dpbf16_ps(a0, low, k); b0 = _mm512_dpbf16_ps(b0, high, k);
            k = broadcast_pair(k1 + 2 * p);
            a1 = _mm512_dpbf16_ps(a1, low, k); b1 = _mm512_dpbf16_ps(b1, high, k);
            k = broadcast_pair(k2 + 2 * p);
            a2 = _mm512_dpbf16_ps(a2, low, k); b2 = _mm512_dpbf16_ps(b2, high, k);
            k = broadcast_pair(k3 + 2 * p);
            a3 = _mm512_dpbf16_ps(a3, low, k); b3 = _mm512_dpbf16_ps(b3, high, k);
            k = broadcast_pair(k4 + 2 * p);
            a4 = _mm512_dpbf16_ps(a4, low, k); b4 = _mm512_dpbf16_ps(b4, high, k);
            k = broadcast_pair(k5 + 2 * p);
            a5 = _mm512_dpbf16_ps(a5, low, k); b5 = _mm512_dpbf16_ps(b5, high, k);
        }
        const long real = count - first < 6 ? count - first : 6;
        float *target = scores + first * ROWS;
        _mm512_storeu_ps(target, a0); _mm512_storeu_ps(target + 16, b0);
        if (real > 1) { _mm512_storeu_ps(target + 32, a1); _mm512_storeu_ps(target + 48, b1); }
        if (real > 2) { _mm512_storeu_ps(target + 64, a2); _mm512_storeu_ps(target + 80, b2); }
        if (real > 3) { _mm512_storeu_ps(target + 96, a3); _mm512_storeu_ps(target + 112, b3); }
        if (real > 4) { _mm512_storeu_ps(target + 128, a4); _mm512_storeu_ps(target + 144, b4); }
        if (real > 5) { _mm512_storeu_ps(target + 160, a5); _mm512_storeu_ps(target + 176, b5); }
    }
}

/// Oᵀ[d][32] = factor · Oᵀ[d][32] + Σ_sp Pp[sp] · Vᵀ[d][pair sp] over `pairs` pairs of keys starting at
/// `keyStart` (even): tiles of 6 value elements × 2 lane vectors.
static void block_accumulate(const uint16_t *valuesTransposed, long paddedKeyLength, long keyStart, long pairs,
                             long valueDepth, const uint16_t *probabilities, __m512 factorLow, __m512 factorHigh,
                             float *accumulator) {
    for (long first = 0; first < valueDepth; first += 6) {
        const long last = valueDepth - 1;
        const long d0 = first, d1 = first + 1 < last ? first + 1 : last, d2 = first + 2 < last ? first + 2 : last;
        const long d3 = first + 3 < last ? first + 3 : last, d4 = first + 4 < last ? first + 4 : last;
        const long d5 = first + 5 < last ? first + 5 : last;
        const uint16_t *v0 = valuesTransposed + d0 * paddedKeyLength + keyStart;
        const uint16_t *v1 = valuesTransposed + d1 * paddedKeyLength + keyStart;
        const uint16_t *v2 = valuesTransposed + d2 * paddedKeyLength + keyStart;
        const uint16_t *v3 = valuesTransposed + d3 * paddedKeyLength + keyStart;
        const uint16_t *v4 = valuesTransposed + d4 * paddedKeyLength + keyStart;
        const uint16_t *v5 = valuesTransposed + d5 * paddedKeyLength + keyStart;
#define START(d, a, b) \
        __m512 a = _mm512_mul_ps(_mm512_loadu_ps(accumulator + (d) * ROWS), factorLow); \
        __m512 b = _mm512_mul_ps(_mm512_loadu_ps(accumulator + (d) * ROWS + 16), factorHigh);
        START(d0, a0, b0) START(d1, a1, b1) START(d2, a2, b2) START(d3, a3, b3) START(d4, a4, b4) START(d5, a5, b5)
#undef START
        const uint16_t *p = probabilities;
        for (long pair = 0; pair < pairs; pair++, p += 2 * ROWS) {
            const __m512bh low = load_pairs(p), high = load_pairs(p + ROWS);
            __m512bh v = broadcast_pair(v0 + 2 * pair);
            a0 = _mm512_dpbf16_ps(a0, low, v); b0 = _mm512_dpbf16_ps(b0, high, v);
            v = broadcast_pair(v1 + 2 * pair);
            a1 = _mm512_dpbf16_ps(a1, low, v); b1 = _mm512_dpbf16_ps(b1, high, v);
            v = broadcast_pair(v2 + 2 * pair);
            a2 = _mm512_dpbf16_ps(a2, low, v); b2 = _mm512_dpbf16_ps(b2, high, v);
            v = broadcast_pair(v3 + 2 * pair);
            a3 = _mm512_dpbf16_ps(a3, low, v); b3 = _mm512_dpbf16_ps(b3, high, v);
            v = broadcast_pair(v4 + 2 * pair);
            a4 = _mm512_dpbf16_ps(a4, low, v); b4 = _mm512_dpbf16_ps(b4, high, v);
            v = broadcast_pair(v5 + 2 * pair);
            a5 = _mm512_dpbf16_ps(a5, low, v); b5 = _mm512_dpbf16_ps(b5, high, v);
        }
        const long real = valueDepth - first < 6 ? valueDepth - first : 6;
        float *target = accumulator + first * ROWS;
        _mm512_storeu_ps(target, a0); _mm512_storeu_ps(target + 16, b0);
        if (real > 1) { _mm512_storeu_ps(target + 32, a1); _mm512_storeu_ps(target + 48, b1); }
        if (real > 2) { _mm512_storeu_ps(target + 64, a2); _mm512_storeu_ps(target + 80, b2); }
        if (real > 3) { _mm512_storeu_ps(target + 96, a3); _mm512_storeu_ps(target + 112, b3); }
        if (real > 4) { _mm512_storeu_ps(target + 128, a4); _mm512_storeu_ps(target + 144, b4); }
        if (real > 5) { _mm512_storeu_ps(target + 160, a5); _mm512_storeu_ps(target + 176, b5); }
    }
}

/// Two float vectors (lanes 0–15 of keys s and s + 1) as one vector of 16 interleaved bfloat16 pairs.
static inline __m512i interleave_pair(__m512 first, __m512 second) {
    // cvtne2ps: elements 0–15 from the second argument, 16–31 from the first.
    const __m512i packed = (__m512i)_mm512_cvtne2ps_pbh(second, first);
    const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                           23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return _mm512_permutexvar_epi16(order, packed);
}

long diffuse_bf16_attention_scratch_floats(void) {
    // Packed queries (MAX_DEPTH/2 pairs × 32 lanes × 2 halves), scores, packed probabilities, Oᵀ.
    return MAX_DEPTH * ROWS / 2 + KEY_BLOCK * ROWS + KEY_BLOCK * ROWS / 2 + MAX_DEPTH * ROWS + 64;
}

int diffuse_bf16_kernels_built(void) { return 1; }

void diffuse_bf16_attention_block(const uint16_t *keys, long paddedDepth, const uint16_t *valuesTransposed,
                                  long paddedKeyLength, long keyLength, long depth, long valueDepth,
                                  const float *query, long queryRowStride, long queryElementStride,
                                  long firstRow, long rowCount, float scale,
                                  float *output, long outputRowStride, float *scratch) {
    uint16_t *queries = (uint16_t *)scratch;
    float *scores = scratch + MAX_DEPTH * ROWS / 2;
    uint16_t *probabilities = (uint16_t *)(scores + KEY_BLOCK * ROWS);
    float *accumulator = scores + KEY_BLOCK * ROWS + KEY_BLOCK * ROWS / 2;

    // Qp[p][lane][2]: the block's rows in the lanes (rows past rowCount and elements past depth are 0);
    // lanes 0–15 fill the first 32 halves of a pair's 64, lanes 16–31 the next 32.
    const long pairs = paddedDepth / 2;
    for (long p = 0; p < pairs; p++) {
        uint16_t *target = queries + p * 2 * ROWS;
        for (long lane = 0; lane < ROWS; lane++) {
            for (long half = 0; half < 2; half++) {
                const long element = 2 * p + half;
                float value = 0;
                if (lane < rowCount && element < depth)
                    value = scale * query[(firstRow + lane) * queryRowStride + element * queryElementStride];
                target[2 * lane + half] = round_bf16(value);
            }
        }
    }
    memset(accumulator, 0, sizeof(float) * valueDepth * ROWS);
    __m512 maximumLow = _mm512_set1_ps(-INFINITY), maximumHigh = _mm512_set1_ps(-INFINITY);
    __m512 sumLow = _mm512_setzero_ps(), sumHigh = _mm512_setzero_ps();

    for (long keyStart = 0; keyStart < keyLength; keyStart += KEY_BLOCK) {
        const long count = keyLength - keyStart < KEY_BLOCK ? keyLength - keyStart : KEY_BLOCK;
        block_scores(keys + keyStart * paddedDepth, paddedDepth, count, queries, scores);
        __m512 largestLow = maximumLow, largestHigh = maximumHigh;
        for (long s = 0; s < count; s++) {
            largestLow = _mm512_max_ps(largestLow, _mm512_loadu_ps(scores + s * ROWS));
            largestHigh = _mm512_max_ps(largestHigh, _mm512_loadu_ps(scores + s * ROWS + 16));
        }
        // Scores are finite (no masks here), so after the first block the maxima are too;
        // the first block's correction multiplies zeros.
        const __m512 correctionLow = exp2_vector(_mm512_sub_ps(maximumLow, largestLow));
        const __m512 correctionHigh = exp2_vector(_mm512_sub_ps(maximumHigh, largestHigh));
        __m512 blockLow = _mm512_setzero_ps(), blockHigh = _mm512_setzero_ps();
        const long keyPairs = (count + 1) / 2;
        for (long pair = 0; pair < keyPairs; pair++) {
            const long s = 2 * pair;
            const __m512 p0 = exp2_vector(_mm512_sub_ps(_mm512_loadu_ps(scores + s * ROWS), largestLow));
            const __m512 q0 = exp2_vector(_mm512_sub_ps(_mm512_loadu_ps(scores + s * ROWS + 16), largestHigh));
            __m512 p1 = _mm512_setzero_ps(), q1 = _mm512_setzero_ps();
            if (s + 1 < count) {
                p1 = exp2_vector(_mm512_sub_ps(_mm512_loadu_ps(scores + (s + 1) * ROWS), largestLow));
                q1 = exp2_vector(_mm512_sub_ps(_mm512_loadu_ps(scores + (s + 1) * ROWS + 16), largestHigh));
            }
            blockLow = _mm512_add_ps(blockLow, _mm512_add_ps(p0, p1));
            blockHigh = _mm512_add_ps(blockHigh, _mm512_add_ps(q0, q1));
            _mm512_storeu_si512(probabilities + pair * 2 * ROWS, interleave_pair(p0, p1));
            _mm512_storeu_si512(probabilities + pair * 2 * ROWS + ROWS, interleave_pair(q0, q1));
        }
        sumLow = _mm512_fmadd_ps(sumLow, correctionLow, blockLow);
        sumHigh = _mm512_fmadd_ps(sumHigh, correctionHigh, blockHigh);
        maximumLow = largestLow;
        maximumHigh = largestHigh;
        block_accumulate(valuesTransposed, paddedKeyLength, keyStart, keyPairs, valueDepth, probabilities,
                         correctionLow, correctionHigh, accumulator);
    }

    float sums[ROWS];
    _mm512_storeu_ps(sums, sumLow);
    _mm512_storeu_ps(sums + 16, sumHigh);
    for (long lane = 0; lane < rowCount; lane++) {
        const float factor = sums[lane] > 0 ? 1.0f / sums[lane] : 0.0f;
        float *row = output + (firstRow + lane) * outputRowStride;
        for (long d = 0; d < valueDepth; d++) row[d] = accumulator[d * ROWS + lane] * factor;
    }
}

#pragma clang attribute pop

#else

void diffuse_bf16_pack_rows(const float *x, long rowStride, long elementStride, long rows, long depth,
                            long paddedDepth, uint16_t *out) {}
void diffuse_bf16_pack_columns(const float *x, long rowStride, long elementStride, long rows, long depth,
                               long paddedRows, uint16_t *out) {}
void diffuse_bf16_attention_block(const uint16_t *keys, long paddedDepth, const uint16_t *valuesTransposed,
                                  long paddedKeyLength, long keyLength, long depth, long valueDepth,
                                  const float *query, long queryRowStride, long queryElementStride,
                                  long firstRow, long rowCount, float scale,
                                  float *output, long outputRowStride, float *scratch) {}
long diffuse_bf16_attention_scratch_floats(void) { return 0; }
int diffuse_bf16_kernels_built(void) { return 0; }

#endif
