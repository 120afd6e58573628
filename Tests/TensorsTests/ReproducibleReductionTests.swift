@testable import Tensors
import XCTest

/// The sums the workers split between them (weight and bias gradients, the depth-split products,
/// the private copies of a batch-1 data gradient, tiled attention's dK and dV) give the same bits
/// whichever thread ran which part: each run below is repeated with the worker thread held back
/// (`WorkerPool.testingWorkerDelayMicroseconds`), so that the calling thread takes most of the
/// work, as it does when the system deschedules a worker. With blocks claimed as they came, these
/// sums followed the timing, and two identical training runs' losses differed from step 3.
final class ReproducibleReductionTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipIf(Parallel.threadCount < 2, "needs two worker threads (DIFFUSE_NUM_THREADS)")
    }

    /// The gradients of `inputs` (leaves) under `loss`, as flat arrays.
    private func gradients(_ inputs: [Tensor], _ loss: ([Tensor]) -> Tensor) -> [[Float]] {
        let leaves = inputs.map { input -> Tensor in
            let leaf = input.contiguousCopy()
            leaf.requiresGrad = true
            return leaf
        }
        loss(leaves).backward()
        return leaves.map { $0.grad!.toArray() }
    }

    /// `loss`'s gradients with the worker free, with it held back, and with the pool's chunks handed
    /// out last first: bit for bit the same.
    private func assertSameBitsWithALateWorker(_ inputs: [Tensor], _ what: String, file: StaticString = #filePath, line: UInt = #line,
                                               _ loss: ([Tensor]) -> Tensor) {
        let free = gradients(inputs, loss)
        WorkerPool.testingWorkerDelayMicroseconds = 20_000
        let late = gradients(inputs, loss)
        WorkerPool.testingWorkerDelayMicroseconds = 0
        WorkerPool.testingReversesChunks = true
        let reversed = gradients(inputs, loss)
        WorkerPool.testingReversesChunks = false
        for (name, other) in [("a late worker", late), ("chunks in reverse", reversed)] {
            for (index, (a, b)) in zip(free, other).enumerated() {
                XCTAssertEqual(a.count, b.count, file: file, line: line)
                let differing = zip(a, b).filter { $0.0.bitPattern != $0.1.bitPattern }.count
                XCTAssertEqual(differing, 0, "\(what), \(name): gradient \(index) differs in \(differing) of \(a.count) elements",
                               file: file, line: line)
            }
        }
    }

    private func randn(_ shape: [Int], seed: UInt64) -> Tensor {
        var generator = RandomGenerator(seed: seed)
        return Tensor.randn(shape, generator: &generator)
    }

    /// A Linear layer's weight gradient over 4,096 rows (`SkinnyGemm.summedOverDepth`) and its bias gradient.
    func testLinearWeightAndBiasGradients() {
        let upstream = randn([4096, 64], seed: 3)
        assertSameBitsWithALateWorker([randn([4096, 64], seed: 1), randn([64, 64], seed: 2), randn([64], seed: 4)], "linear") { xs in
            (xs[0].linear(weight: xs[1], bias: xs[2]) * upstream).sum()
        }
    }

    /// Winograd's weight gradient (tile blocks summed per share) and the bias gradient of a 3×3 convolution.
    func testWinogradWeightGradient() {
        let upstream = randn([8, 32, 24, 24], seed: 7)
        assertSameBitsWithALateWorker([randn([8, 32, 24, 24], seed: 5), randn([32, 32, 3, 3], seed: 6), randn([32], seed: 8)], "winograd") { xs in
            (xs[0].conv2d(weight: xs[1], bias: xs[2], padding: 1) * upstream).sum()
        }
    }

    /// The im2col weight gradient (a strided convolution over several row blocks) and, at batch 1, its
    /// data gradient's private copies.
    func testIm2colGradients() {
        let saved = Convolution.im2colBlockBytes
        Convolution.im2colBlockBytes = 16_384
        defer { Convolution.im2colBlockBytes = saved }
        let upstream = randn([1, 16, 32, 32], seed: 11)
        assertSameBitsWithALateWorker([randn([1, 8, 64, 64], seed: 9), randn([16, 8, 3, 3], seed: 10)], "im2col") { xs in
            (xs[0].conv2d(weight: xs[1], stride: 2, padding: 1) * upstream).sum()
        }
    }

    /// Tiled attention's backward with a batch of one: its query blocks split over several tasks whose
    /// dK and dV are added (heads of 40 take the tiled kernel).
    func testTiledAttentionKeyAndValueGradients() {
        let upstream = randn([1, 1, 512, 40], seed: 15)
        assertSameBitsWithALateWorker([randn([1, 1, 512, 40], seed: 12), randn([1, 1, 512, 40], seed: 13), randn([1, 1, 512, 40], seed: 14)],
                                      "attention") { xs in
            (Tensor.scaledDotProductAttention(query: xs[0], key: xs[1], value: xs[2]) * upstream).sum()
        }
    }
}
