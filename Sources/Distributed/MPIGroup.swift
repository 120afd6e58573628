import CMPIShim
import Diffusion
import Foundation
import Tensors

/// Data-parallel training over MPI (Open MPI): the processes `mpirun` started,
/// as a ``DataParallelGroup`` on `MPI_COMM_WORLD`.
///
/// - Gradients are averaged by `MPI_Iallreduce` in buckets of ``bucketBytes``, filled
///   in the parameters' order (the same on every rank); while one bucket is on the
///   wire the next is packed and the finished ones unpacked (``overlap``). With
///   ``backwardOverlap`` the trainer starts them during the last micro-batch's backward pass
///   instead (``startAveragingGradients(of:)``, ``MPIGradientAverage``): the same buckets, sums and results.
/// - Every collective call is watched: all calls are non-blocking and polled against a
///   deadline. Each call also sends its sequence number to every other rank, so when the
///   deadline passes the message names the ranks that never arrived (dead or hung), and a
///   rank that made a different call is reported as out of step. The first failure is
///   kept in ``failure``; ``finish()`` then calls `MPI_Abort`, which ends every process of
///   the job (also a hung one) instead of waiting forever in `MPI_Finalize`.
///
/// ```swift
/// let group = try MPIGroup.start()      // MPI_Init
/// DataParallel.current = group
/// defer { group.finish() }              // MPI_Finalize, or MPI_Abort after a failure
/// ```
public final class MPIGroup: DataParallelGroup {
    public let rank: Int
    public let size: Int
    /// Seconds a collective call of the training loop may wait for the other ranks (`DIFFUSE_MPI_TIMEOUT`, 60).
    public var timeout: Double
    /// Seconds the start-up broadcast and ``barrier()`` may wait: the others wait there
    /// while rank 0 writes a checkpoint, samples a grid or saves a pipeline (`DIFFUSE_MPI_WRITER_TIMEOUT`, 1800).
    public var writerTimeout: Double
    /// Bytes per all-reduce bucket (`DIFFUSE_MPI_BUCKET_MB`, 25 MB as in PyTorch DDP; 0: one bucket).
    public var bucketBytes: Int
    /// Start the next bucket's all-reduce before the previous finished (`DIFFUSE_MPI_OVERLAP`, 1).
    public var overlap: Bool
    /// Start the buckets during the backward pass of the last micro-batch, and how they
    /// progress there (`DIFFUSE_MPI_BACKWARD_OVERLAP`: `test`, `end`, or `0`, the default: it measured no faster here).
    public var backwardOverlap: BackwardOverlap
    /// Time and volume of the gradient all-reduces so far.
    public private(set) var statistics = CommunicationStatistics()
    /// The first failure of a collective call (then ``finish()`` aborts the job).
    public private(set) var failure: DataParallelError?

    private var sequence: Int64 = 0
    private var finished = false

    /// `MPI_Init` on the processes of this `mpirun`.
    public static func start(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> MPIGroup {
        var rank: Int32 = 0, size: Int32 = 0
        let status = diffuse_mpi_initialize(&rank, &size)
        guard status == 0 else { throw DataParallelError.communication(operation: "MPI_Init", reason: MPIGroup.text(of: status)) }
        let group = MPIGroup(rank: Int(rank), size: Int(size))
        if let value = environment["DIFFUSE_MPI_TIMEOUT"].flatMap(Double.init), value > 0 { group.timeout = value }
        if let value = environment["DIFFUSE_MPI_WRITER_TIMEOUT"].flatMap(Double.init), value > 0 { group.writerTimeout = value }
        if let value = environment["DIFFUSE_MPI_BUCKET_MB"].flatMap(Double.init), value >= 0 { group.bucketBytes = Int(value * 1_048_576) }
        if let value = environment["DIFFUSE_MPI_OVERLAP"] { group.overlap = value != "0" }
        if let value = environment["DIFFUSE_MPI_BACKWARD_OVERLAP"] {
            guard let mode = BackwardOverlap(environmentValue: value) else {
                throw DataParallelError.communication(operation: "DIFFUSE_MPI_BACKWARD_OVERLAP", reason: "\(value) is not one of test, end, 0")
            }
            group.backwardOverlap = mode
        }
        return group
    }

    private init(rank: Int, size: Int) {
        self.rank = rank
        self.size = size
        timeout = 60
        writerTimeout = 1800
        bucketBytes = 25 * 1_048_576
        overlap = true
        backwardOverlap = .off
    }

    /// `MPI_Finalize`, or `MPI_Abort` (ending every rank) after a failed call. Idempotent.
    public func finish() {
        guard !finished else { return }
        finished = true
        guard diffuse_mpi_is_active() != 0 else { return }
        if failure != nil {
            diffuse_mpi_abort(1)
        } else {
            _ = diffuse_mpi_finalize()
        }
    }

    /// `MPI_Abort`: ends every process of the job at once (for a rank that stops with an error).
    public func abort() {
        guard !finished, diffuse_mpi_is_active() != 0 else { return }
        finished = true
        diffuse_mpi_abort(1)
    }

    // MARK: - DataParallelGroup

    public func broadcast(_ tensors: [Tensor], from root: Int) throws {
        guard size > 1 else { return }
        var values: [Float] = []
        values.reserveCapacity(tensors.reduce(0) { $0 + $1.count })
        for tensor in tensors { values.append(contentsOf: tensor.toArray()) }
        // MPI counts are 32-bit: at most 256 Mi floats (1 GiB) per call.
        let chunk = 1 << 28
        try values.withUnsafeMutableBytes { bytes in
            var start = 0
            repeat {
                let length = Swift.min(chunk * 4, bytes.count - start)
                try collective("the start-up broadcast of the parameters", timeout: writerTimeout) { request in
                    diffuse_mpi_start_broadcast(bytes.baseAddress! + start, Int32(length), Int32(root), &request)
                }
                start += length
            } while start < bytes.count
        }
        var offset = 0
        for tensor in tensors {
            tensor.copyValues(from: Tensor(Array(values[offset..<(offset + tensor.count)]), shape: tensor.shape))
            offset += tensor.count
        }
    }

    public func averageGradients(of parameters: [Tensor]) throws {
        guard size > 1 else { return }
        let started = diffuse_mpi_seconds()
        let plan = GradientBuckets(counts: parameters.map(\.count), bucketFloats: bucketBytes / 4)
        let scale = 1 / Float(size)
        // Plain allocations: MPI reads and writes them after the call that starts the all-reduce returns.
        let buffers = plan.buckets.map { bucket -> UnsafeMutableBufferPointer<Float> in
            let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: bucket.floatCount)
            buffer.initialize(repeating: 0)
            return buffer
        }
        var completed = false
        defer { if completed { buffers.forEach { $0.deallocate() } } }  // after a failure MPI may still own them
        try arrive(operation: "the gradient all-reduce", timeout: timeout) { watch in
            var requests = [diffuse_mpi_request?](repeating: nil, count: plan.buckets.count)
            var unpacked = 0
            for index in plan.buckets.indices {
                plan.pack(index, of: parameters, into: buffers[index])
                let status = diffuse_mpi_start_sum_floats(buffers[index].baseAddress!, Int32(buffers[index].count), &requests[index])
                guard status == 0 else { throw DataParallelError.communication(operation: "the gradient all-reduce", reason: Self.text(of: status)) }
                if !overlap {
                    try watch(&requests[index])
                    plan.unpack(index, of: parameters, from: buffers[index], scale: scale)
                    unpacked = index + 1
                } else {
                    // Unpack the buckets that are already done while the later ones travel.
                    while unpacked < index, try watch.poll(&requests[unpacked]) {
                        plan.unpack(unpacked, of: parameters, from: buffers[unpacked], scale: scale)
                        unpacked += 1
                    }
                }
            }
            while unpacked < plan.buckets.count {
                try watch(&requests[unpacked])
                plan.unpack(unpacked, of: parameters, from: buffers[unpacked], scale: scale)
                unpacked += 1
            }
        }
        completed = true
        statistics.record(seconds: diffuse_mpi_seconds() - started, floats: plan.floatCount, buckets: plan.buckets.count)
    }

    /// With ``backwardOverlap`` and more than one rank: the buckets start during the backward pass.
    public func startAveragingGradients(of parameters: [Tensor]) throws -> (any GradientAveraging)? {
        guard size > 1, backwardOverlap != .off else { return nil }
        return try MPIGradientAverage(group: self, parameters: parameters, bucketFloats: bucketBytes / 4, progress: backwardOverlap)
    }

    /// Counts one finished gradient average that started during the backward pass.
    func recordAverage(seconds: Double, hookSeconds: Double, floats: Int, buckets: Int) {
        statistics.record(seconds: seconds, floats: floats, buckets: buckets, hookSeconds: hookSeconds)
    }

    public func average(_ values: [Float]) throws -> [Float] {
        guard size > 1, !values.isEmpty else { return values }
        var sums = values.map(Double.init)
        try sums.withUnsafeMutableBufferPointer { buffer in
            try collective("the all-reduce of the logged values", timeout: timeout) { request in
                diffuse_mpi_start_sum_doubles(buffer.baseAddress!, Int32(buffer.count), &request)
            }
        }
        return sums.map { Float($0 / Double(size)) }
    }

    public func allGather(_ tensors: [Tensor]) throws -> [Tensor] {
        guard size > 1, !tensors.isEmpty else { return tensors }
        // One block per rank: this rank's tensors, flattened one after the other.
        let block = tensors.reduce(0) { $0 + $1.count }
        precondition(block * size < Int(Int32.max), "allGather: \(block) floats per rank is more than one MPI call carries")
        var values = [Float](repeating: 0, count: block * size)
        var offset = rank * block
        for tensor in tensors {
            values.replaceSubrange(offset..<(offset + tensor.count), with: tensor.toArray())
            offset += tensor.count
        }
        try values.withUnsafeMutableBufferPointer { buffer in
            try collective("the all-gather of \(tensors.count) tensor\(tensors.count == 1 ? "" : "s")", timeout: timeout) { request in
                diffuse_mpi_start_gather_floats(buffer.baseAddress!, Int32(block), &request)
            }
        }
        var start = 0
        return tensors.map { tensor in
            var gathered: [Float] = []
            gathered.reserveCapacity(tensor.count * size)
            for source in 0..<size {
                let first = source * block + start
                gathered.append(contentsOf: values[first..<(first + tensor.count)])
            }
            start += tensor.count
            let rows = tensor.shape.first ?? 1
            return Tensor(gathered, shape: [rows * size] + tensor.shape.dropFirst())
        }
    }

    public func sum(_ tensors: [Tensor]) throws -> [Tensor] {
        guard size > 1, !tensors.isEmpty else { return tensors }
        var values = tensors.flatMap { $0.toArray() }
        precondition(values.count < Int(Int32.max), "sum: \(values.count) floats is more than one MPI call carries")
        try values.withUnsafeMutableBufferPointer { buffer in
            try collective("the sum of \(tensors.count) tensor\(tensors.count == 1 ? "" : "s")", timeout: timeout) { request in
                diffuse_mpi_start_sum_floats(buffer.baseAddress!, Int32(buffer.count), &request)
            }
        }
        var start = 0
        return tensors.map { tensor in
            defer { start += tensor.count }
            return Tensor(Array(values[start..<(start + tensor.count)]), shape: tensor.shape)
        }
    }

    public func barrier() throws {
        guard size > 1 else { return }
        try collective("the barrier after rank 0's files", timeout: writerTimeout) { request in
            diffuse_mpi_start_barrier(&request)
        }
    }

    // MARK: - Watched collective calls

    /// Starts one collective call with `start` and waits for it (watched, see ``arrive(operation:timeout:_:)``).
    private func collective(_ operation: String, timeout: Double, _ start: (inout diffuse_mpi_request?) -> Int32) throws {
        try arrive(operation: operation, timeout: timeout) { watch in
            var request: diffuse_mpi_request?
            let status = start(&request)
            guard status == 0 else { throw DataParallelError.communication(operation: operation, reason: Self.text(of: status)) }
            try watch(&request)
        }
    }

    /// Runs `body` (which starts non-blocking collective calls and waits for them through the
    /// ``Watch`` it is given) after telling every other rank that this rank reached call number
    /// `sequence`; a wait that passes the deadline names the ranks whose arrival never came.
    private func arrive(operation: String, timeout: Double, _ body: (Watch) throws -> Void) throws {
        let arrival = try beginArrival(operation: operation, timeout: timeout)
        try complete(arrival, body)
    }

    /// One watched collective call between ``beginArrival(operation:timeout:)`` and ``complete(_:_:)``:
    /// this rank's call number on its way to every other rank, theirs on the way here.
    final class Arrival {
        let operation: String
        let number: Int64
        let peers: [Int]
        let watch: Watch
        // Pointers, not arrays: MPI writes them after the calls return, and the deadline check
        // reads the receives while a wait holds one of them.
        let sent: UnsafeMutablePointer<Int64>
        let received: UnsafeMutablePointer<Int64>
        let sends: UnsafeMutablePointer<diffuse_mpi_request?>
        let receives: UnsafeMutablePointer<diffuse_mpi_request?>

        init(operation: String, number: Int64, size: Int, peers: [Int], watch: Watch) {
            (self.operation, self.number, self.peers, self.watch) = (operation, number, peers, watch)
            sent = .allocate(capacity: 1)
            received = .allocate(capacity: size)
            sends = .allocate(capacity: size)
            receives = .allocate(capacity: size)
            sent.pointee = number
            received.initialize(repeating: -1, count: size)
            sends.initialize(repeating: nil, count: size)
            receives.initialize(repeating: nil, count: size)
        }

        /// Frees the buffers, or after a failure (MPI_Abort follows) cancels the receives and leaks them.
        func release() {
            if watch.failed {
                for peer in peers { diffuse_mpi_cancel(&receives[peer]) }
            } else {
                sent.deallocate()
                received.deallocate()
                sends.deallocate()
                receives.deallocate()
            }
        }
    }

    /// Takes the next call number and sends it to every other rank (the start of a watched call).
    func beginArrival(operation: String, timeout: Double) throws -> Arrival {
        if let failure { throw failure }
        let number = sequence
        sequence += 1
        let peers = (0..<size).filter { $0 != rank }
        let watch = Watch(group: self, operation: "\(operation) (collective call #\(number))", deadline: diffuse_mpi_seconds() + timeout, timeout: timeout)
        let arrival = Arrival(operation: operation, number: number, size: size, peers: peers, watch: watch)
        do {
            for peer in peers {
                let tag = Int32(MPIGroup.arrivalTag)
                var status = diffuse_mpi_start_send_integer(arrival.sent, Int32(peer), tag, &arrival.sends[peer])
                if status == 0 { status = diffuse_mpi_start_receive_integer(arrival.received + peer, Int32(peer), tag, &arrival.receives[peer]) }
                guard status == 0 else { throw DataParallelError.communication(operation: watch.operation, reason: Self.text(of: status)) }
            }
        } catch let error as DataParallelError {
            watch.failed = true
            failure = failure ?? error
            arrival.release()
            throw error
        }
        let receives = arrival.receives
        watch.arrivals = {
            peers.filter { peer in
                var done: Int32 = 0
                if receives[peer] == nil { return false }
                if diffuse_mpi_test(&receives[peer], &done) != 0 { return true }
                if done != 0 { receives[peer] = nil }
                return done == 0
            }
        }
        return arrival
    }

    /// Runs `body` (the waits of the call, watched from now for the call's timeout), then waits
    /// for every other rank's call number and checks that it is this rank's.
    func complete(_ arrival: Arrival, _ body: (Watch) throws -> Void) throws {
        let watch = arrival.watch
        watch.deadline = diffuse_mpi_seconds() + watch.timeout
        defer { arrival.release() }
        do {
            if let failure { throw failure }
            try body(watch)
            for peer in arrival.peers {
                try watch(&arrival.receives[peer])
                try watch(&arrival.sends[peer])
                if arrival.received[peer] != arrival.number {
                    throw DataParallelError.outOfStep(rank: peer, operation: arrival.operation, expected: Int(arrival.number), found: Int(arrival.received[peer]))
                }
            }
        } catch let error as DataParallelError {
            watch.failed = true
            failure = failure ?? error
            throw error
        }
    }

    /// Records a failure seen outside a watched wait (a bucket that could not start during the backward pass).
    func recordFailure(_ error: DataParallelError) {
        failure = failure ?? error
    }

    /// Tag of the arrival messages (the collective calls use their own context).
    static let arrivalTag = 7311

    /// The text of an MPI error code.
    static func text(of code: Int32) -> String {
        var buffer = [CChar](repeating: 0, count: 512)
        diffuse_mpi_error_text(code, &buffer, 512)
        return String(cString: buffer) + " (MPI error \(code))"
    }

    /// Waits for requests of one watched call until its deadline.
    final class Watch {
        unowned let group: MPIGroup
        let operation: String
        var deadline: Double
        let timeout: Double
        var failed = false
        var arrivals: () -> [Int] = { [] }

        init(group: MPIGroup, operation: String, deadline: Double, timeout: Double) {
            self.group = group
            self.operation = operation
            self.deadline = deadline
            self.timeout = timeout
        }

        /// True when `request` is done (it is then nil); throws on an MPI error.
        func poll(_ request: inout diffuse_mpi_request?) throws -> Bool {
            guard request != nil else { return true }
            var done: Int32 = 0
            let status = diffuse_mpi_test(&request, &done)
            guard status == 0 else {
                throw DataParallelError.communication(operation: operation, reason: MPIGroup.text(of: status) + unresponsiveSuffix())
            }
            if done != 0 { request = nil }
            return done != 0
        }

        /// Waits for `request`: polls (MPI progresses only inside MPI calls), yielding the
        /// core in between, and throws at the deadline naming the ranks that never arrived.
        func callAsFunction(_ request: inout diffuse_mpi_request?) throws {
            var polls = 0
            while try !poll(&request) {
                polls += 1
                if polls < 2000 { sched_yield() } else { usleep(50) }
                if polls % 64 == 0 && diffuse_mpi_seconds() > deadline {
                    let missing = arrivals()
                    if missing.isEmpty { throw DataParallelError.stalled(operation: operation, seconds: timeout) }
                    throw DataParallelError.unresponsive(ranks: missing, operation: operation, seconds: timeout)
                }
            }
        }

        private func unresponsiveSuffix() -> String {
            let missing = arrivals()
            return missing.isEmpty ? "" : " (rank\(missing.count == 1 ? "" : "s") \(missing.map(String.init).joined(separator: ", ")) did not reach it)"
        }
    }
}

/// Time and volume of a group's gradient all-reduces.
public struct CommunicationStatistics: Sendable {
    /// Calls of `averageGradients`.
    public private(set) var calls = 0
    /// Seconds spent in them (packing, all-reduce, unpacking).
    public private(set) var seconds: Double = 0
    /// Floats reduced per call, and buckets per call.
    public private(set) var floats = 0, buckets = 0
    /// Calls whose buckets started during the backward pass, and the seconds their
    /// gradient-ready calls took inside it (packing, starting, testing; not in ``seconds``).
    public private(set) var overlappedCalls = 0, hookSeconds: Double = 0

    mutating func record(seconds: Double, floats: Int, buckets: Int, hookSeconds: Double? = nil) {
        calls += 1
        self.seconds += seconds
        if let hookSeconds {
            overlappedCalls += 1
            self.hookSeconds += hookSeconds
        }
        self.floats = floats
        self.buckets = buckets
    }

    /// One line for the end of a run.
    public var summary: String {
        guard calls > 0 else { return "gradient all-reduce: none" }
        return "gradient all-reduce: \(calls) calls, " + String(format: "%.1f ms each (%.2f MB in ", seconds / Double(calls) * 1000, Double(floats * 4) / 1_048_576)
            + "\(buckets) bucket\(buckets == 1 ? "" : "s")), " + String(format: "%.1f s in all", seconds)
            + (overlappedCalls == 0 ? "" : String(format: "; %d started during the backward pass (%.1f ms each in its hooks)",
                                                  overlappedCalls, hookSeconds / Double(overlappedCalls) * 1000))
    }
}
