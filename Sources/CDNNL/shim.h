#ifndef DIFFUSE_CDNNL_SHIM_H
#define DIFFUSE_CDNNL_SHIM_H
// oneDNN (Debian's libdnnl-dev 2.6): its matmul primitive with bfloat16 inputs.
#include <oneapi/dnnl/dnnl.h>
#endif
