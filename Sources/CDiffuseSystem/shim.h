#ifndef DIFFUSE_CSYSTEM_SHIM_H
#define DIFFUSE_CSYSTEM_SHIM_H
// C library declarations Swift's Glibc module leaves out (malloc tuning).
#include <malloc.h>
#endif
