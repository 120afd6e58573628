import Diffusion
import Foundation
import Tensors

/// N simulated ranks in one process, without MPI: each rank runs on its own thread, but only one
/// at a time (a rank holds the baton while it computes and hands it on at every collective call),
/// so the tensor code never runs concurrently. The collective calls exchange values in memory
/// and combine them as `MPIGroup` does (sums in rank order, then the mean), so a trainer run on
/// these ranks makes every call of a real data-parallel run.
///
/// ```swift
/// let groups = try LockstepGroup.run(size: 2) { group in try makeTrainer(group: group).run() }
/// ```
final class LockstepGroup: DataParallelGroup {
    let rank: Int
    var size: Int { hub.size }
    /// The gradients after each `averageGradients` (every parameter's, concatenated).
    private(set) var averagedGradients: [[Float]] = []
    /// The results of each `average` call.
    private(set) var averages: [[Float]] = []
    /// The operations called, in order ("allGather", "sum", …).
    private(set) var calls: [String] = []
    /// Whether ``startAveragingGradients(of:)`` starts an average (``OverlapCheck``) instead of returning nil.
    private(set) var overlapping = false
    /// One entry per average started during a backward pass, when it finished.
    private(set) var overlapChecks: [OverlapCheck] = []
    private let hub: Hub

    private init(rank: Int, hub: Hub) {
        self.rank = rank
        self.hub = hub
    }

    /// Runs `body` as every rank of `size`, each on its own thread and one at a time; returns
    /// the ranks' groups (in rank order) and results once all are done. The first error of a
    /// rank is rethrown (and stops the others at their next collective call).
    /// With `overlapping`, the groups start an average during the last micro-batch's backward pass
    /// as an overlapping MPI group does, and check it (``OverlapCheck``).
    static func run<Result>(size: Int, overlapping: Bool = false,
                            _ body: @escaping (LockstepGroup) throws -> Result) throws -> [(group: LockstepGroup, result: Result)] {
        let hub = Hub(size: size)
        let groups = (0..<size).map { LockstepGroup(rank: $0, hub: hub) }
        for group in groups { group.overlapping = overlapping }
        let lock = NSLock()
        var results = [Result?](repeating: nil, count: size)
        var failure: Error?
        let finished = DispatchSemaphore(value: 0)
        for group in groups {
            let thread = Thread {
                hub.takeBaton()
                do {
                    let result = try body(group)
                    lock.lock(); results[group.rank] = result; lock.unlock()
                } catch {
                    lock.lock(); failure = failure ?? error; lock.unlock()
                    hub.fail()
                }
                hub.passBaton()
                finished.signal()
            }
            thread.stackSize = 16 << 20
            thread.start()
        }
        for _ in 0..<size { finished.wait() }
        if let failure { throw failure }
        return zip(groups, results).map { ($0, $1!) }
    }

    // MARK: - DataParallelGroup

    func broadcast(_ tensors: [Tensor], from root: Int) throws {
        calls.append("broadcast")
        let values = try hub.exchange(rank: rank, tensors.flatMap { $0.toArray() })[root]
        var offset = 0
        for tensor in tensors {
            tensor.copyValues(from: Tensor(Array(values[offset..<(offset + tensor.count)]), shape: tensor.shape))
            offset += tensor.count
        }
    }

    func averageGradients(of parameters: [Tensor]) throws {
        calls.append("averageGradients")
        try exchangeMean(of: parameters)
    }

    /// Replaces every parameter's gradient with the ranks' mean (zeros for a missing one).
    private func exchangeMean(of parameters: [Tensor]) throws {
        let local = parameters.flatMap { $0.grad?.toArray() ?? [Float](repeating: 0, count: $0.count) }
        let mean = Self.summed(try hub.exchange(rank: rank, local)).map { $0 * (1 / Float(size)) }
        var offset = 0
        for parameter in parameters {
            parameter.grad = Tensor(Array(mean[offset..<(offset + parameter.count)]), shape: parameter.shape)
            offset += parameter.count
        }
        averagedGradients.append(mean)
    }

    func startAveragingGradients(of parameters: [Tensor]) throws -> (any GradientAveraging)? {
        guard overlapping else { return nil }
        calls.append("startAveragingGradients")
        return OverlapAverage(group: self, parameters: parameters)
    }

    /// What one average started during a backward pass saw: which parameters were reported as
    /// final, and which of them changed after the report (an overlap that is not exact).
    struct OverlapCheck {
        /// Parameters (indices) reported as final, in report order; reported more than once.
        var reported: [Int] = []
        var repeated: [Int] = []
        /// Reported parameters whose gradient changed between the report and the finish.
        var changedAfterReport: [Int] = []
        /// Parameters with a gradient at the finish that were never reported (their buckets would start after the pass).
        var neverReported: [Int] = []
    }

    /// Keeps each reported gradient's values; at the finish compares them with the final ones,
    /// then averages over the ranks as ``averageGradients(of:)`` does.
    private final class OverlapAverage: GradientAveraging {
        unowned let group: LockstepGroup
        let parameters: [Tensor]
        let indices: [ObjectIdentifier: Int]
        var snapshots: [Int: [Float]] = [:]
        var check = OverlapCheck()

        init(group: LockstepGroup, parameters: [Tensor]) {
            self.group = group
            self.parameters = parameters
            var indices: [ObjectIdentifier: Int] = [:]
            for (index, parameter) in parameters.enumerated() { indices[ObjectIdentifier(parameter)] = index }
            self.indices = indices
        }

        func gradientReady(_ parameter: Tensor) {
            guard let index = indices[ObjectIdentifier(parameter)] else { return }
            if snapshots[index] != nil { check.repeated.append(index) }
            check.reported.append(index)
            snapshots[index] = parameter.grad?.toArray() ?? []
        }

        func finish() throws {
            for (index, parameter) in parameters.enumerated() {
                if let snapshot = snapshots[index] {
                    if (parameter.grad?.toArray() ?? []) != snapshot { check.changedAfterReport.append(index) }
                } else if parameter.grad != nil {
                    check.neverReported.append(index)
                }
            }
            group.overlapChecks.append(check)
            group.calls.append("finish")
            try group.exchangeMean(of: parameters)
        }
    }

    func average(_ values: [Float]) throws -> [Float] {
        calls.append("average")
        let contributions = try hub.exchange(rank: rank, values)
        let mean = (0..<values.count).map { index in Float(contributions.reduce(0.0) { $0 + Double($1[index]) } / Double(size)) }
        averages.append(mean)
        return mean
    }

    func allGather(_ tensors: [Tensor]) throws -> [Tensor] {
        calls.append("allGather")
        let contributions = try hub.exchange(rank: rank, tensors.flatMap { $0.toArray() })
        var start = 0
        return tensors.map { tensor in
            defer { start += tensor.count }
            let values = contributions.flatMap { $0[start..<(start + tensor.count)] }
            return Tensor(values, shape: [(tensor.shape.first ?? 1) * size] + tensor.shape.dropFirst())
        }
    }

    func sum(_ tensors: [Tensor]) throws -> [Tensor] {
        calls.append("sum")
        let total = Self.summed(try hub.exchange(rank: rank, tensors.flatMap { $0.toArray() }))
        var start = 0
        return tensors.map { tensor in
            defer { start += tensor.count }
            return Tensor(Array(total[start..<(start + tensor.count)]), shape: tensor.shape)
        }
    }

    func barrier() throws {
        calls.append("barrier")
        _ = try hub.exchange(rank: rank, [])
    }

    /// Element-wise sums of the ranks' values, in rank order.
    private static func summed(_ contributions: [[Float]]) -> [Float] {
        var total = contributions[0]
        for values in contributions.dropFirst() {
            for index in total.indices { total[index] += values[index] }
        }
        return total
    }

    /// Another rank stopped with an error, or the ranks' calls did not meet within 120 s.
    enum Failure: Error { case anotherRankFailed }

    /// The ranks' meeting point: the baton (which rank computes) and the rounds of values exchanged.
    final class Hub {
        let size: Int
        private let condition = NSCondition()
        private var batonHeld = false
        private var failed = false
        private var round = 0
        private var deposits: [Int: [Float]] = [:]
        private var results: [Int: [[Float]]] = [:]
        private var readers: [Int: Int] = [:]

        init(size: Int) { self.size = size }

        func takeBaton() {
            condition.lock()
            while batonHeld { condition.wait() }
            batonHeld = true
            condition.unlock()
        }

        func passBaton() {
            condition.lock()
            batonHeld = false
            condition.broadcast()
            condition.unlock()
        }

        func fail() {
            condition.lock()
            failed = true
            condition.broadcast()
            condition.unlock()
        }

        /// Deposits rank `rank`'s values for the current round and hands the baton on until every
        /// rank has deposited, then takes it back: every rank's values, in rank order.
        func exchange(rank: Int, _ values: [Float]) throws -> [[Float]] {
            condition.lock()
            defer { condition.unlock() }
            let deadline = Date(timeIntervalSinceNow: 120)
            var failure: Error? = failed ? Failure.anotherRankFailed : nil
            let myRound = round
            if failure == nil {
                precondition(deposits[rank] == nil, "LockstepGroup: rank \(rank) deposited twice in one round")
                deposits[rank] = values
                if deposits.count == size {
                    results[myRound] = (0..<size).map { deposits[$0]! }
                    readers[myRound] = size
                    deposits = [:]
                    round += 1
                    condition.broadcast()
                } else {
                    batonHeld = false
                    condition.broadcast()
                    while round == myRound && !failed {
                        if !condition.wait(until: deadline) { failed = true; condition.broadcast() }
                    }
                    if round == myRound { failure = Failure.anotherRankFailed }
                    while batonHeld { condition.wait() }
                    batonHeld = true
                }
            }
            if let failure { throw failure }
            let result = results[myRound]!
            readers[myRound]! -= 1
            if readers[myRound] == 0 { results[myRound] = nil; readers[myRound] = nil }
            return result
        }
    }
}
