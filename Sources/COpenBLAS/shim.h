#ifndef DIFFUSE_COPENBLAS_SHIM_H
#define DIFFUSE_COPENBLAS_SHIM_H
#include <cblas.h>
#endif
