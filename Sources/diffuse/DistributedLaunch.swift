import Diffusion
import Distributed
import Foundation

/// `diffuse` started by `mpirun`: the training commands call ``installIfLaunched()`` first,
/// which starts MPI and installs an ``MPIGroup`` as `DataParallel.current`. Started any
/// other way it only reads two environment variables: no `MPI_Init`, nothing else changes.
enum DistributedLaunch {
    nonisolated(unsafe) static var group: MPIGroup?

    /// True when this process was started by Open MPI's `mpirun` (or another PMIx launcher).
    static func isLaunched(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        environment["OMPI_COMM_WORLD_SIZE"] != nil || environment["PMIX_RANK"] != nil
    }

    /// Starts MPI when launched by `mpirun`; at exit `MPI_Finalize` (or `MPI_Abort` after a
    /// failure or an exit with an error, so the other ranks never wait for this one).
    /// Ranks other than 0 send their standard output to /dev/null (rank 0 reports for the
    /// run; errors still reach standard error) unless `DIFFUSE_MPI_ALL_OUTPUT=1`.
    static func installIfLaunched() {
        let environment = ProcessInfo.processInfo.environment
        guard group == nil, isLaunched(environment) else { return }
        let started: MPIGroup
        do {
            started = try MPIGroup.start(environment: environment)
        } catch {
            FileHandle.standardError.write(Data("error: started by mpirun but MPI did not start: \(error)\n".utf8))
            exit(1)
        }
        group = started
        DataParallel.current = started
        if started.rank > 0 && environment["DIFFUSE_MPI_ALL_OUTPUT"] != "1" {
            let null = open("/dev/null", O_WRONLY)
            if null >= 0 { fflush(stdout); dup2(null, STDOUT_FILENO); close(null) }
        }
        on_exit({ status, _ in DistributedLaunch.finish(status: status) }, nil)
    }

    /// At exit: the communication summary (rank 0), then finalize or abort.
    static func finish(status: Int32) {
        guard let group else { return }
        if group.rank == 0 && group.size > 1 {
            print("mpi: \(group.size) ranks; \(group.statistics.summary)")
            fflush(stdout)
        }
        if status != 0 && group.failure == nil && group.size > 1 {
            FileHandle.standardError.write(Data("rank \(group.rank): exiting with an error; ending every rank of the job\n".utf8))
            group.abort()
        }
        group.finish()
    }

}
