#ifndef DIFFUSE_CSYSTEM_SHIM_H
#define DIFFUSE_CSYSTEM_SHIM_H
// C library declarations Swift's Glibc module leaves out (malloc tuning), and vector square roots.
#include <malloc.h>

// Eight square roots in one instruction (vsqrtps): Swift's `SIMD8<Float>.squareRoot()` compiles to eight
// scalar ones. The vector type imports as `SIMD8<Float>`; correctly rounded, so the same bits.
typedef float diffuse_float8 __attribute__((ext_vector_type(8)));
static inline diffuse_float8 diffuse_square_root8(diffuse_float8 x) { return __builtin_elementwise_sqrt(x); }
#endif
