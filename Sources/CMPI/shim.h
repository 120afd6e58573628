#ifndef DIFFUSE_CMPI_SHIM_H
#define DIFFUSE_CMPI_SHIM_H
// Open MPI's C API (Debian's libopenmpi-dev; pkg-config ompi-c). Its handles
// (MPI_COMM_WORLD, MPI_SUM, MPI_FLOAT, MPI_IN_PLACE, ...) are macros Swift
// cannot import: CMPIShim wraps the calls Diffuse makes.
#include <mpi.h>
#endif
