import Foundation
import NN
import Tensors

/// The processes of a data-parallel training run, as every trainer sees them.
///
/// Trainers call these at fixed points so that multi-process training (MPI, in
/// the `Distributed` target) plugs in without rewriting them:
/// 1. after building the model: ``broadcast(_:from:)`` of the parameters and buffers from rank 0;
/// 2. the data loader takes this process's share of every global batch (``rank`` of ``size``,
///    see `DataLoader`'s `shard`);
/// 3. random draws per example (noise, timesteps, condition dropout) are made for the whole
///    global batch from the generator every rank shares, and each rank keeps its rows
///    (``DataParallelShard``), so N ranks draw exactly what one process with the global batch draws;
///    the model's dropout layers too (``shardDropout(in:)``);
/// 4. after the backward pass of the **last** micro-batch of an accumulation, before clipping:
///    ``averageGradients(of:)`` (or, started before that backward pass, ``startAveragingGradients(of:)``,
///    whose buckets travel while the backward pass runs, finished there; every trainer goes through
///    ``StepGradientAverage``, which takes one or the other); a loss that couples the examples of a batch (CLIP's contrastive
///    loss) gathers what it needs with ``allGather(_:)`` and sums its gradient with ``sum(_:)``;
/// 5. only where ``isWriter`` is true: checkpoints, logs, grids, pipelines; then ``barrier()``
///    on every rank.
///
/// Without `mpirun`, ``SingleProcessGroup`` makes every call free.
///
/// Every call is collective: every rank must make the same calls in the same order.
/// A group may throw ``DataParallelError`` when another process died or hangs.
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
    /// Starts averaging the gradients of `parameters` during the backward pass of the last
    /// micro-batch: pass the result's ``GradientAveraging/gradientReady(_:)`` to
    /// `backward(gradientReady:)`, then call ``GradientAveraging/finish()`` where
    /// ``averageGradients(of:)`` would be called; the gradients are the same. Nil when the
    /// group does not overlap (then call ``averageGradients(of:)`` as usual).
    func startAveragingGradients(of parameters: [Tensor]) throws -> (any GradientAveraging)?
    /// The mean of `values` over processes (losses and other numbers for the log).
    func average(_ values: [Float]) throws -> [Float]
    /// Every process's `tensors` stacked along axis 0 in rank order: a tensor of shape
    /// `[n] + rest` on each of N processes gives `[N × n] + rest` on every process, rank r's
    /// rows at `r × n ..< (r + 1) × n` (the shapes must be the same on every process). New
    /// tensors, outside any graph (CLIP gathers its features this way).
    func allGather(_ tensors: [Tensor]) throws -> [Tensor]
    /// The element-wise sum over processes of each of `tensors` (the same shapes on every
    /// process), the same values on every process. New tensors, outside any graph.
    func sum(_ tensors: [Tensor]) throws -> [Tensor]
    /// Returns when every process has called it (the others wait here while the writer writes).
    func barrier() throws
}

extension DataParallelGroup {
    /// True on the process that writes files (rank 0).
    public var isWriter: Bool { rank == 0 }
    /// True with more than one process.
    public var isDistributed: Bool { size > 1 }

    /// This rank's rows of a global batch of `size × localCount` examples.
    public func shard(localCount: Int) -> DataParallelShard {
        DataParallelShard(rank: rank, size: size, localCount: localCount)
    }

    /// Makes the dropout layers of `modules` draw their masks for the whole global batch and keep
    /// this rank's rows (``Dropout/batchPart``), as the trainers draw noise (``DataParallelShard``):
    /// N ranks then draw one process's masks. One process: nothing changes.
    public func shardDropout(in modules: [Module]) {
        guard isDistributed else { return }
        for module in modules { module.setDropoutBatchPart(rank, of: size) }
    }

    /// No overlap: the caller averages after the backward pass.
    public func startAveragingGradients(of parameters: [Tensor]) throws -> (any GradientAveraging)? { nil }

    /// One process: `tensors` themselves. More: a group that does not implement the call throws.
    public func allGather(_ tensors: [Tensor]) throws -> [Tensor] {
        guard !isDistributed else { throw DataParallelError.communication(operation: "the all-gather", reason: "\(type(of: self)) cannot gather") }
        return tensors
    }

    /// One process: `tensors` themselves. More: a group that does not implement the call throws.
    public func sum(_ tensors: [Tensor]) throws -> [Tensor] {
        guard !isDistributed else { throw DataParallelError.communication(operation: "the sum", reason: "\(type(of: self)) cannot sum") }
        return tensors
    }

    /// True when any process passes true (a stop request, a failure seen by one rank):
    /// every rank then takes the same branch.
    public func anyRank(_ flag: Bool) throws -> Bool {
        guard isDistributed else { return flag }
        return try average([flag ? 1 : 0])[0] > 0
    }

    /// Runs `body` on the writer only, then waits on every rank until it is done. An
    /// error on the writer reaches every rank (the others throw ``DataParallelError/writerFailed(_:)``).
    public func writerOnly(_ body: () throws -> Void) throws {
        guard isDistributed else { return try body() }
        var failure: Error?
        if isWriter {
            do { try body() } catch { failure = error }
        }
        try barrier()
        if try anyRank(failure != nil) {
            throw failure ?? DataParallelError.writerFailed("rank 0 could not write its files (see its message)")
        }
    }
}

/// An average of gradients over the ranks that travels while the backward pass runs
/// (``DataParallelGroup/startAveragingGradients(of:)``).
public protocol GradientAveraging: AnyObject {
    /// Called by `backward(gradientReady:)` when `parameter`'s gradient is final (other leaves are ignored).
    func gradientReady(_ parameter: Tensor)
    /// Waits for every bucket and replaces each parameter's `grad` with the mean over the
    /// ranks, as ``DataParallelGroup/averageGradients(of:)`` does. Call it once.
    func finish() throws
}

/// Which rows of a global batch belong to this rank: rank `r` of `n` with `localCount`
/// rows each holds rows `r × localCount ..< (r + 1) × localCount` of the global batch of
/// `n × localCount`, the order in which `DataLoader` splits a global batch.
///
/// Random draws per example are made for the global batch on every rank (from the
/// generator every rank shares, in the order one process draws them) and sliced, so a
/// run on N ranks draws the same numbers for the same examples as a run on one process.
public struct DataParallelShard: Equatable, Sendable {
    public let rank: Int, size: Int, localCount: Int

    /// Rank `rank` of `size`, `localCount` rows each.
    public init(rank: Int, size: Int, localCount: Int) {
        precondition(size > 0 && rank >= 0 && rank < size && localCount >= 0, "DataParallelShard: rank \(rank) of \(size)")
        (self.rank, self.size, self.localCount) = (rank, size, localCount)
    }

    /// Rows in the global batch.
    public var globalCount: Int { localCount * size }
    /// This rank's rows of the global batch.
    public var rows: Range<Int> { (rank * localCount)..<((rank + 1) * localCount) }

    /// This rank's rows of `values` drawn for the whole global batch.
    public func slice<Element>(_ values: [Element]) -> [Element] {
        precondition(values.count == globalCount, "DataParallelShard: \(values.count) values for a global batch of \(globalCount)")
        return Array(values[rows])
    }

    /// This rank's rows (axis 0) of `tensor` drawn for the whole global batch, contiguous.
    public func slice(_ tensor: Tensor) -> Tensor {
        precondition(tensor.shape.first == globalCount, "DataParallelShard: a tensor of shape \(tensor.shape) for a global batch of \(globalCount)")
        if size == 1 { return tensor }
        return tensor.narrowed(axis: 0, start: rows.lowerBound, length: localCount).contiguous()
    }

    /// Standard normal noise of shape `[localCount] + rest`: this rank's rows of the global batch's noise.
    public func randn(_ rest: [Int], generator: inout RandomGenerator) -> Tensor {
        slice(Tensor.randn([globalCount] + rest, generator: &generator))
    }

    /// Uniform values of shape `[localCount] + rest`: this rank's rows of the global batch's draw.
    public func rand(_ rest: [Int], generator: inout RandomGenerator) -> Tensor {
        slice(Tensor.rand([globalCount] + rest, generator: &generator))
    }

    /// `draw` called `globalCount` times (in row order); this rank's values.
    public func draw<Element>(_ draw: () -> Element) -> [Element] {
        slice((0..<globalCount).map { _ in draw() })
    }
}

/// Why a collective call of a multi-process group failed.
public enum DataParallelError: Error, CustomStringConvertible, Equatable {
    /// These ranks did not reach collective operation `operation` within `seconds` (dead or hung).
    case unresponsive(ranks: [Int], operation: String, seconds: Double)
    /// Every rank reached the operation but it did not finish within `seconds`.
    case stalled(operation: String, seconds: Double)
    /// A rank is at another collective operation than this one (the ranks' calls differ: a bug).
    case outOfStep(rank: Int, operation: String, expected: Int, found: Int)
    /// The MPI library reported an error (e.g. a peer's connection closed).
    case communication(operation: String, reason: String)
    /// The writer (rank 0) failed; its own message says why.
    case writerFailed(String)

    public var description: String {
        func names(_ ranks: [Int]) -> String { (ranks.count == 1 ? "rank " : "ranks ") + ranks.map(String.init).joined(separator: ", ") }
        switch self {
        case let .unresponsive(ranks, operation, seconds):
            return "\(names(ranks)) did not reach \(operation) within \(String(format: "%.0f", seconds)) s: "
                + "the process died or hangs; stopping every rank (the last checkpoint is intact)"
        case let .stalled(operation, seconds):
            return "\(operation) did not finish within \(String(format: "%.0f", seconds)) s although every rank reached it; stopping every rank"
        case let .outOfStep(rank, operation, expected, found):
            return "rank \(rank) is at collective call #\(found), this rank at #\(expected) (\(operation)): the ranks' calls differ"
        case let .communication(operation, reason):
            return "\(operation) failed: \(reason); stopping every rank"
        case .writerFailed(let reason):
            return reason
        }
    }
}

/// One process: every call returns at once.
public final class SingleProcessGroup: DataParallelGroup {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func broadcast(_ tensors: [Tensor], from root: Int) throws {}
    public func averageGradients(of parameters: [Tensor]) throws {}
    public func average(_ values: [Float]) throws -> [Float] { values }
    public func allGather(_ tensors: [Tensor]) throws -> [Tensor] { tensors }
    public func sum(_ tensors: [Tensor]) throws -> [Tensor] { tensors }
    public func barrier() throws {}
}

/// The group trainers use when none is given: set once by the command line
/// (`diffuse` under `mpirun` installs an MPI group), otherwise one process.
public enum DataParallel {
    public nonisolated(unsafe) static var current: any DataParallelGroup = SingleProcessGroup()
}
