import Foundation
import Tensors

/// The processes of a data-parallel training run, as every trainer sees them.
///
/// Trainers call these at fixed points so that multi-process training (MPI, in
/// the `Distributed` target) plugs in without rewriting them:
/// 1. after building the model: ``broadcast(_:from:)`` of the parameters and buffers from rank 0;
/// 2. the data loader takes this process's share of every global batch (``rank`` of ``size``);
/// 3. after the backward pass of the **last** micro-batch of an accumulation, before clipping:
///    ``averageGradients(of:)``;
/// 4. only where ``isWriter`` is true: checkpoints, logs, grids, pipelines; then ``barrier()``.
///
/// Without `mpirun`, ``SingleProcessGroup`` makes every call free.
public protocol DataParallelGroup: AnyObject {
    /// This process's index, 0 ..< size.
    var rank: Int { get }
    /// Number of processes.
    var size: Int { get }
    /// Copies `tensors` (parameters, buffers) from `root` to every process, in place.
    func broadcast(_ tensors: [Tensor], from root: Int) throws
    /// Replaces every parameter's `grad` with the mean over processes (a missing
    /// gradient counts as zeros), in the same order on every rank.
    func averageGradients(of parameters: [Tensor]) throws
    /// The mean of `values` over processes (losses and other numbers for the log).
    func average(_ values: [Float]) throws -> [Float]
    /// Returns when every process has called it.
    func barrier() throws
}

extension DataParallelGroup {
    /// True on the process that writes files (rank 0).
    public var isWriter: Bool { rank == 0 }
    /// True with more than one process.
    public var isDistributed: Bool { size > 1 }
}

/// One process: every call returns at once.
public final class SingleProcessGroup: DataParallelGroup {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func broadcast(_ tensors: [Tensor], from root: Int) throws {}
    public func averageGradients(of parameters: [Tensor]) throws {}
    public func average(_ values: [Float]) throws -> [Float] { values }
    public func barrier() throws {}
}

/// The group trainers use when none is given: set once by the command line
/// (`diffuse` under `mpirun` installs an MPI group), otherwise one process.
public enum DataParallel {
    public nonisolated(unsafe) static var current: any DataParallelGroup = SingleProcessGroup()
}
