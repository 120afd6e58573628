import CMPIShim
import Diffusion
import Tensors

/// Whether, and how, the gradient all-reduce overlaps the backward pass (`DIFFUSE_MPI_BACKWARD_OVERLAP`).
public enum BackwardOverlap: Equatable, Sendable {
    /// Every bucket starts after the backward pass (`0`).
    case off
    /// Buckets start as their gradients become final, and every gradient-ready call also
    /// tests the buckets on the wire (`MPI_Test`), which is when Open MPI makes progress (`test`).
    case polling
    /// Buckets start as their gradients become final; nothing progresses them until the
    /// wait after the backward pass (`end`).
    case startOnly

    /// The value of `DIFFUSE_MPI_BACKWARD_OVERLAP`; nil for an unknown one.
    public init?(environmentValue value: String) {
        switch value.lowercased() {
        case "0", "off", "no": self = .off
        case "1", "test", "poll", "polling": self = .polling
        case "end", "start": self = .startOnly
        default: return nil
        }
    }
}

extension GradientBuckets {
    /// Copies the gradients of bucket `index`'s members into `buffer` (a missing gradient leaves zeros).
    func pack(_ index: Int, of parameters: [Tensor], into buffer: UnsafeMutableBufferPointer<Float>) {
        for member in buckets[index].members {
            let destination = buffer.baseAddress! + member.offset
            guard let gradient = parameters[member.parameter].grad else { continue }
            let source = gradient.isContiguous && gradient.dataType == .float32 ? gradient : gradient.contiguousCopy()
            destination.update(from: source.floatPointer + member.start, count: member.count)
        }
    }

    /// Writes `scale` × the reduced `buffer` of bucket `index` into its members' gradients.
    func unpack(_ index: Int, of parameters: [Tensor], from buffer: UnsafeMutableBufferPointer<Float>, scale: Float) {
        for member in buckets[index].members {
            let parameter = parameters[member.parameter]
            let gradient = parameter.grad.flatMap { $0.isContiguous && $0.dataType == .float32 && $0.shape == parameter.shape ? $0 : nil }
                ?? Tensor.zeros(parameter.shape)
            let target = gradient.floatPointer
            let source = buffer.baseAddress! + member.offset
            for element in 0..<member.count { target[member.start + element] = source[element] * scale }
            parameter.grad = gradient
        }
    }
}

/// Which buckets of a ``GradientBuckets`` plan may start as parameters' gradients become
/// final: in reverse order (the backward pass finishes the last layers first, as in PyTorch's
/// DDP), bucket k once every parameter with a piece in it is ready and buckets k+1 … have
/// started. The order is the same on every rank whatever the order of the readiness calls.
public struct BucketStartOrder: Sendable {
    /// The buckets holding a piece of each parameter.
    private let bucketsOfParameter: [[Int]]
    /// Parameters of each bucket whose gradient is not final yet.
    private var waiting: [Int]
    private var ready: [Bool]
    /// The next bucket to start (counting down); the buckets above it have started.
    public private(set) var next: Int

    /// For `plan`'s buckets over `parameterCount` parameters.
    public init(_ plan: GradientBuckets, parameterCount: Int) {
        var bucketsOfParameter = [[Int]](repeating: [], count: parameterCount)
        var waiting = [Int](repeating: 0, count: plan.buckets.count)
        for (bucketIndex, bucket) in plan.buckets.enumerated() {
            for member in bucket.members where bucketsOfParameter[member.parameter].last != bucketIndex {
                bucketsOfParameter[member.parameter].append(bucketIndex)
                waiting[bucketIndex] += 1
            }
        }
        self.bucketsOfParameter = bucketsOfParameter
        self.waiting = waiting
        ready = Array(repeating: false, count: parameterCount)
        next = plan.buckets.count - 1
    }

    /// Parameter `parameter`'s gradient is final: the buckets to start now, in order (a repeated call starts nothing).
    public mutating func ready(_ parameter: Int) -> [Int] {
        guard !ready[parameter] else { return [] }
        ready[parameter] = true
        for bucket in bucketsOfParameter[parameter] { waiting[bucket] -= 1 }
        var startable: [Int] = []
        while next >= 0 && waiting[next] == 0 {
            startable.append(next)
            next -= 1
        }
        return startable
    }

    /// The buckets not started yet, in order (after the backward pass: parameters it never reached).
    public mutating func rest() -> [Int] {
        defer { next = -1 }
        return Array(stride(from: next, through: 0, by: -1))
    }
}

/// The gradient all-reduce of one optimizer step, started bucket by bucket during the
/// backward pass (``MPIGroup/startAveragingGradients(of:)``).
///
/// The buckets are ``MPIGroup/averageGradients(of:)``'s (parameter order, the same sums);
/// they start in reverse order, as PyTorch's DDP does (the backward pass finishes the last
/// layers first): bucket k starts once all its parameters' gradients are final and buckets
/// k+1 … have started, so every rank starts the same all-reduces in the same order whatever
/// its timing. Buckets whose parameters the graph never reached start in ``finish()``.
final class MPIGradientAverage: GradientAveraging {
    private let group: MPIGroup
    private let parameters: [Tensor]
    private let plan: GradientBuckets
    private let progress: BackwardOverlap
    private let arrival: MPIGroup.Arrival
    private let buffers: [UnsafeMutableBufferPointer<Float>]
    private var requests: [diffuse_mpi_request?]
    /// Index of each parameter, by identity.
    private let indices: [ObjectIdentifier: Int]
    private var order: BucketStartOrder
    /// The oldest started bucket that may still be on the wire (counting down).
    private var oldestOnWire: Int
    private var failure: DataParallelError?
    private var finished = false
    /// Seconds spent in the gradient-ready calls (packing, starting, testing).
    private(set) var hookSeconds: Double = 0

    init(group: MPIGroup, parameters: [Tensor], bucketFloats: Int, progress: BackwardOverlap) throws {
        self.group = group
        self.parameters = parameters
        self.progress = progress
        plan = GradientBuckets(counts: parameters.map(\.count), bucketFloats: bucketFloats)
        arrival = try group.beginArrival(operation: "the gradient all-reduce", timeout: group.timeout)
        // Plain allocations: MPI reads and writes them after the call that starts the all-reduce returns.
        buffers = plan.buckets.map { bucket in
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: bucket.floatCount)
            buffer.initialize(repeating: 0)
            return buffer
        }
        requests = Array(repeating: nil, count: plan.buckets.count)
        var indices: [ObjectIdentifier: Int] = [:]
        for (index, parameter) in parameters.enumerated() { indices[ObjectIdentifier(parameter)] = index }
        self.indices = indices
        order = BucketStartOrder(plan, parameterCount: parameters.count)
        oldestOnWire = plan.buckets.count - 1
    }

    func gradientReady(_ parameter: Tensor) {
        guard failure == nil, !finished, let index = indices[ObjectIdentifier(parameter)] else { return }
        let started = diffuse_mpi_seconds()
        defer { hookSeconds += diffuse_mpi_seconds() - started }
        do {
            for bucket in order.ready(index) { try start(bucket) }
            if progress == .polling {
                while oldestOnWire > order.next, try arrival.watch.poll(&requests[oldestOnWire]) { oldestOnWire -= 1 }
            }
        } catch let error as DataParallelError {
            failure = error
            group.recordFailure(error)
        } catch {
            failure = .communication(operation: "the gradient all-reduce", reason: "\(error)")
        }
    }

    private func start(_ index: Int) throws {
        plan.pack(index, of: parameters, into: buffers[index])
        let status = diffuse_mpi_start_sum_floats(buffers[index].baseAddress!, Int32(buffers[index].count), &requests[index])
        guard status == 0 else { throw DataParallelError.communication(operation: "the gradient all-reduce", reason: MPIGroup.text(of: status)) }
    }

    func finish() throws {
        precondition(!finished, "MPIGradientAverage.finish() called twice")
        finished = true
        let started = diffuse_mpi_seconds()
        let scale = 1 / Float(group.size)
        var completed = false
        defer { if completed { buffers.forEach { $0.deallocate() } } }  // after a failure MPI may still own them
        try group.complete(arrival) { watch in
            if let failure { throw failure }
            for bucket in order.rest() { try start(bucket) }
            for index in plan.buckets.indices.reversed() {
                try watch(&requests[index])
                plan.unpack(index, of: parameters, from: buffers[index], scale: scale)
            }
        }
        completed = true
        group.recordAverage(seconds: diffuse_mpi_seconds() - started, hookSeconds: hookSeconds, floats: plan.floatCount, buckets: plan.buckets.count)
    }
}
