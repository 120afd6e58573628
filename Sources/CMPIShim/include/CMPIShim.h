#ifndef DIFFUSE_CMPI_SHIM_FUNCTIONS_H
#define DIFFUSE_CMPI_SHIM_FUNCTIONS_H
// The MPI calls of Diffuse's data-parallel training, on MPI_COMM_WORLD, as plain
// C functions (MPI's handles are macros Swift cannot import). Every function
// returns an MPI error code (MPI_SUCCESS is 0). Requests are MPI_Request handles
// kept by the caller; a completed request is set to MPI_REQUEST_NULL.
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// An MPI request handle (MPI_Request), opaque to Swift.
typedef void *diffuse_mpi_request;

/// MPI_Init_thread (MPI_THREAD_FUNNELED) and MPI_ERRORS_RETURN on MPI_COMM_WORLD; sets rank and size.
int diffuse_mpi_initialize(int *rank, int *size);
/// 1 when MPI_Init ran and MPI_Finalize did not.
int diffuse_mpi_is_active(void);
/// MPI_Finalize.
int diffuse_mpi_finalize(void);
/// MPI_Abort(MPI_COMM_WORLD, code): ends every process of the job.
void diffuse_mpi_abort(int code);
/// MPI_Wtime.
double diffuse_mpi_seconds(void);
/// The text of an MPI error code, into buffer (at least 512 bytes).
void diffuse_mpi_error_text(int code, char *buffer, int capacity);

/// Non-blocking in-place sum of count floats over every process (MPI_Iallreduce, MPI_IN_PLACE).
int diffuse_mpi_start_sum_floats(float *values, int count, diffuse_mpi_request *request);
/// Non-blocking in-place all-gather (MPI_Iallgather, MPI_IN_PLACE): values holds size × count floats,
/// this rank's count at values + rank × count; afterwards every rank's block is in place.
int diffuse_mpi_start_gather_floats(float *values, int count, diffuse_mpi_request *request);
/// Non-blocking in-place sum of count doubles over every process.
int diffuse_mpi_start_sum_doubles(double *values, int count, diffuse_mpi_request *request);
/// Non-blocking broadcast of count bytes from root (MPI_Ibcast).
int diffuse_mpi_start_broadcast(void *bytes, int count, int root, diffuse_mpi_request *request);
/// Non-blocking barrier (MPI_Ibarrier).
int diffuse_mpi_start_barrier(diffuse_mpi_request *request);
/// Non-blocking send of one 64-bit integer to destination with tag.
int diffuse_mpi_start_send_integer(const int64_t *value, int destination, int tag, diffuse_mpi_request *request);
/// Non-blocking receive of one 64-bit integer from source with tag.
int diffuse_mpi_start_receive_integer(int64_t *value, int source, int tag, diffuse_mpi_request *request);
/// MPI_Test: done is 1 when the request completed (it is then MPI_REQUEST_NULL).
int diffuse_mpi_test(diffuse_mpi_request *request, int *done);
/// Cancels (point-to-point only) and frees an unfinished request.
void diffuse_mpi_cancel(diffuse_mpi_request *request);

#ifdef __cplusplus
}
#endif
#endif
