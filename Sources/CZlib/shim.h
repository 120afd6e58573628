#ifndef DIFFUSE_CZLIB_SHIM_H
#define DIFFUSE_CZLIB_SHIM_H
#include <zlib.h>
#endif
