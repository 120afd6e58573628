#include "CMPIShim.h"
#include <mpi.h>
#include <string.h>

_Static_assert(sizeof(MPI_Request) == sizeof(diffuse_mpi_request), "MPI_Request is not pointer-sized");

int diffuse_mpi_initialize(int *rank, int *size) {
    int provided = 0;
    int status = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (status != MPI_SUCCESS) return status;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    status = MPI_Comm_rank(MPI_COMM_WORLD, rank);
    if (status != MPI_SUCCESS) return status;
    return MPI_Comm_size(MPI_COMM_WORLD, size);
}

int diffuse_mpi_is_active(void) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    return initialized && !finalized;
}

int diffuse_mpi_finalize(void) { return MPI_Finalize(); }

void diffuse_mpi_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

double diffuse_mpi_seconds(void) { return MPI_Wtime(); }

void diffuse_mpi_error_text(int code, char *buffer, int capacity) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) length = 0;
    text[length < MPI_MAX_ERROR_STRING ? length : MPI_MAX_ERROR_STRING - 1] = 0;
    strncpy(buffer, text, capacity - 1);
    buffer[capacity - 1] = 0;
}

int diffuse_mpi_start_sum_floats(float *values, int count, diffuse_mpi_request *request) {
    return MPI_Iallreduce(MPI_IN_PLACE, values, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, (MPI_Request *)request);
}

int diffuse_mpi_start_gather_floats(float *values, int count, diffuse_mpi_request *request) {
    return MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, values, count, MPI_FLOAT, MPI_COMM_WORLD, (MPI_Request *)request);
}

int diffuse_mpi_start_sum_doubles(double *values, int count, diffuse_mpi_request *request) {
    return MPI_Iallreduce(MPI_IN_PLACE, values, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, (MPI_Request *)request);
}

int diffuse_mpi_start_broadcast(void *bytes, int count, int root, diffuse_mpi_request *request) {
    return MPI_Ibcast(bytes, count, MPI_BYTE, root, MPI_COMM_WORLD, (MPI_Request *)request);
}

int diffuse_mpi_start_barrier(diffuse_mpi_request *request) {
    return MPI_Ibarrier(MPI_COMM_WORLD, (MPI_Request *)request);
}

int diffuse_mpi_start_send_integer(const int64_t *value, int destination, int tag, diffuse_mpi_request *request) {
    return MPI_Isend(value, 1, MPI_INT64_T, destination, tag, MPI_COMM_WORLD, (MPI_Request *)request);
}

int diffuse_mpi_start_receive_integer(int64_t *value, int source, int tag, diffuse_mpi_request *request) {
    return MPI_Irecv(value, 1, MPI_INT64_T, source, tag, MPI_COMM_WORLD, (MPI_Request *)request);
}

int diffuse_mpi_test(diffuse_mpi_request *request, int *done) {
    if (*request == NULL) { *done = 1; return MPI_SUCCESS; }
    return MPI_Test((MPI_Request *)request, done, MPI_STATUS_IGNORE);
}

void diffuse_mpi_cancel(diffuse_mpi_request *request) {
    MPI_Request *handle = (MPI_Request *)request;
    if (*handle == NULL || *handle == MPI_REQUEST_NULL) return;
    MPI_Cancel(handle);
    MPI_Request_free(handle);
}
