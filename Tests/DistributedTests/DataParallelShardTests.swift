import Diffusion
import Distributed
import Foundation
import Tensors
import XCTest

/// Random draws per example: every rank draws the global batch and keeps its rows, so the
/// ranks' rows put together are the one-process draw and every generator ends in the same state.
final class DataParallelShardTests: XCTestCase {
    func testRanksRowsPutTogetherAreTheSingleProcessDraws() {
        var single = RandomGenerator(seed: 5)
        let noise = Tensor.randn([6, 1, 2, 3], generator: &single)
        let timesteps = (0..<6).map { _ in single.integer(below: 1000) }
        let amounts = Tensor.rand([6], generator: &single)
        var noiseRows: [Float] = [], timestepRows: [Int] = [], amountRows: [Float] = []
        var states: [[UInt64]] = []
        for rank in 0..<3 {
            var generator = RandomGenerator(seed: 5)
            let shard = DataParallelShard(rank: rank, size: 3, localCount: 2)
            let part = shard.randn([1, 2, 3], generator: &generator)
            XCTAssertEqual(part.shape, [2, 1, 2, 3])
            XCTAssertTrue(part.isContiguous)
            noiseRows += part.toArray()
            timestepRows += shard.draw { generator.integer(below: 1000) }
            amountRows += shard.rand([], generator: &generator).toArray()
            states.append(generator.state)
        }
        XCTAssertEqual(noiseRows, noise.toArray())
        XCTAssertEqual(timestepRows, timesteps)
        XCTAssertEqual(amountRows, amounts.toArray())
        XCTAssertEqual(Set(states).count, 1)
        XCTAssertEqual(states[0], single.state)
    }

    func testOneRankIsTheWholeBatch() {
        let shard = SingleProcessGroup().shard(localCount: 4)
        XCTAssertEqual(shard.rows, 0..<4)
        XCTAssertEqual(shard.slice([1, 2, 3, 4]), [1, 2, 3, 4])
    }

    func testBucketsFollowTheParameterOrderAndSplitLargeParameters() {
        let plan = GradientBuckets(counts: [3, 10, 2, 1], bucketFloats: 4)
        XCTAssertEqual(plan.buckets.map(\.floatCount), [4, 4, 4, 4])
        XCTAssertEqual(plan.floatCount, 16)
        let pieces = plan.buckets.flatMap { $0.members.map { [$0.parameter, $0.start, $0.count, $0.offset] } }
        XCTAssertEqual(pieces, [[0, 0, 3, 0], [1, 0, 1, 3], [1, 1, 4, 0], [1, 5, 4, 0], [1, 9, 1, 0], [2, 0, 2, 1], [3, 0, 1, 3]])
        XCTAssertEqual(GradientBuckets(counts: [3, 10], bucketFloats: 0).buckets.count, 1)
        XCTAssertEqual(GradientBuckets(counts: [], bucketFloats: 8).buckets.count, 0)
    }

    func testErrorsNameTheRank() {
        let error = DataParallelError.unresponsive(ranks: [1], operation: "the gradient all-reduce (collective call #12)", seconds: 30)
        XCTAssertEqual(error.description, "rank 1 did not reach the gradient all-reduce (collective call #12) within 30 s: "
                       + "the process died or hangs; stopping every rank (the last checkpoint is intact)")
        XCTAssertTrue(DataParallelError.unresponsive(ranks: [2, 3], operation: "x", seconds: 1).description.hasPrefix("ranks 2, 3 did not reach x"))
    }
}

/// The order in which buckets start during the backward pass: reverse bucket order, each
/// only once all its parameters are ready and the later buckets started, whatever the
/// order of the readiness calls.
final class BucketStartOrderTests: XCTestCase {
    // Parameters 0…3 of 3, 10, 2, 1 floats in buckets of 4: [0 0 0 1] [1 1 1 1] [1 1 1 1] [1 2 2 3].
    private let plan = GradientBuckets(counts: [3, 10, 2, 1], bucketFloats: 4)

    func testBucketsStartInReverseOrderWhenCompleteAndTheLaterOnesStarted() {
        XCTAssertEqual(plan.buckets.count, 4)
        var order = BucketStartOrder(plan, parameterCount: 4)
        XCTAssertEqual(order.ready(0), [], "bucket 0 waits for parameter 1 and for buckets 3…1")
        XCTAssertEqual(order.ready(3), [], "bucket 3 waits for parameters 1 and 2")
        XCTAssertEqual(order.ready(2), [])
        XCTAssertEqual(order.ready(2), [], "a repeated report changes nothing")
        XCTAssertEqual(order.ready(1), [3, 2, 1, 0])
        XCTAssertEqual(order.rest(), [])
    }

    func testEveryReadinessOrderStartsTheSameSequence() {
        var sequences = Set<[Int]>()
        for permutation in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 2, 0], [2, 0, 3, 1]] {
            var order = BucketStartOrder(plan, parameterCount: 4)
            var started: [Int] = []
            for parameter in permutation { started += order.ready(parameter) }
            sequences.insert(started)
        }
        XCTAssertEqual(sequences, [[3, 2, 1, 0]])
    }

    func testUnreachedParametersLeaveTheirBucketsToTheEnd() {
        let plan = GradientBuckets(counts: [4, 4, 4], bucketFloats: 4)
        var order = BucketStartOrder(plan, parameterCount: 3)
        XCTAssertEqual(order.ready(2), [2])
        XCTAssertEqual(order.ready(0), [], "bucket 0 waits behind bucket 1, whose parameter was not reached")
        XCTAssertEqual(order.rest(), [1, 0])
        XCTAssertEqual(order.rest(), [])
    }

    func testEnvironmentValues() {
        XCTAssertEqual(BackwardOverlap(environmentValue: "0"), .off)
        XCTAssertEqual(BackwardOverlap(environmentValue: "test"), .polling)
        XCTAssertEqual(BackwardOverlap(environmentValue: "END"), .startOnly)
        XCTAssertNil(BackwardOverlap(environmentValue: "sometimes"))
    }
}
