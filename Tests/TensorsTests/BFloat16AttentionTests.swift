import Foundation
@testable import Tensors
import XCTest

/// The bfloat16 attention kernel (`BFloat16Attention`, VDPBF16PS) against a float64 model of
/// the same scheme: Q·scale·log₂ e, K and V rounded to bfloat16, the softmax run block by block
/// over 64 keys with each block's probabilities rounded to bfloat16 after the running maximum
/// is updated, the sums of the unrounded ones. What remains is float32 accumulation and the
/// exponential's polynomial, and a probability whose float32 score rounds to the other side of a bfloat16 tie (measured ≤ 4e-5 of the scale; the bound is 2e-4). Also against the float32 kernels: different
/// by bfloat16's rounding (so the test can tell which ran), and not by more. Runs only where
/// the CPU has AVX512-BF16 (it says so otherwise).
final class BFloat16AttentionTests: XCTestCase {
    override func setUpWithError() throws {
        guard BFloat16Attention.isAvailable else {
            print("BFloat16AttentionTests: skipped, this CPU (\(CPUFeatures.modelName)) has no AVX512-BF16")
            throw XCTSkip("no AVX512-BF16 on this CPU")
        }
        print("BFloat16AttentionTests: running on \(CPUFeatures.modelName) (\(CPUFeatures.summary))")
    }

    override func tearDown() { ComputeMode.precision = .float32 }

    static func bfloat16(_ value: Float) -> Double { Double(HalfPrecision.float(fromBFloat16: HalfPrecision.bfloat16Bits(value))) }

    /// The scheme in float64 for items `[B, L, E]`, `[B, S, E]`, `[B, S, Ev]` (dense).
    static func model(query: [Float], key: [Float], value: [Float], items: Int, L: Int, S: Int, E: Int, Ev: Int, scale: Float) -> [Double] {
        let log2e: Float = 1.4426950408889634
        var output = [Double](repeating: 0, count: items * L * Ev)
        for item in 0..<items {
            for row in 0..<L {
                let q = (0..<E).map { bfloat16(scale * log2e * query[(item * L + row) * E + $0]) }
                let scores = (0..<S).map { s in (0..<E).reduce(0.0) { $0 + q[$1] * bfloat16(key[(item * S + s) * E + $1]) } }
                var maximum = -Double.infinity, sum = 0.0
                var accumulator = [Double](repeating: 0, count: Ev)
                for start in stride(from: 0, to: S, by: 64) {
                    let block = start..<min(S, start + 64)
                    let largest = max(maximum, block.map { scores[$0] }.max()!)
                    let correction = Foundation.exp2(maximum - largest)
                    sum *= correction
                    for d in 0..<Ev { accumulator[d] *= correction }
                    for s in block {
                        let p = Foundation.exp2(scores[s] - largest)
                        sum += p
                        let rounded = bfloat16(Float(p))
                        for d in 0..<Ev { accumulator[d] += rounded * bfloat16(value[(item * S + s) * Ev + d]) }
                    }
                    maximum = largest
                }
                for d in 0..<Ev { output[(item * L + row) * Ev + d] = accumulator[d] / sum }
            }
        }
        return output
    }

    func testMatchesTheModelOfItsRounding() {
        var generator = RandomGenerator(seed: 11)
        // (items, L, S, E, Ev): Stable Diffusion's heads (40, 80, 160), cross-attention to 77 tokens,
        // odd lengths and depths (partial tiles, padded pairs), a single partial query block.
        let cases: [(Int, Int, Int, Int, Int)] = [
            (2, 200, 200, 40, 40), (1, 300, 77, 40, 40), (1, 130, 129, 80, 80), (1, 128, 128, 160, 160),
            (2, 150, 131, 33, 21), (1, 20, 1000, 64, 64),
        ]
        for (items, L, S, E, Ev) in cases {
            let query = Tensor.randn([items, L, E], generator: &generator) * 1.5
            let key = Tensor.randn([items, S, E], generator: &generator)
            let value = Tensor.randn([items, S, Ev], generator: &generator)
            let scale = 1 / Float(E).squareRoot()
            ComputeMode.precision = .bfloat16
            let problemTakesPath = noGrad { () -> Bool in
                let problem = AttentionProblem(batchShape: [items], queryLength: L, keyLength: S, depth: E, valueDepth: Ev, scale: scale,
                                               query: AttentionOperand(query, batchShape: [items]),
                                               key: AttentionOperand(key, batchShape: [items]),
                                               value: AttentionOperand(value, batchShape: [items]), mask: nil)
                return BFloat16Attention.applies(to: problem, recording: false)
            }
            let fast = noGrad { Tensor.scaledDotProductAttention(query: query, key: key, value: value) }
            ComputeMode.precision = .float32
            let float32 = noGrad { Tensor.scaledDotProductAttention(query: query, key: key, value: value) }
            let label = "items \(items), L \(L), S \(S), E \(E), Ev \(Ev)"
            XCTAssertTrue(problemTakesPath, "\(label): the bfloat16 kernel does not apply")
            let expected = Self.model(query: query.toArray(), key: key.toArray(), value: value.toArray(),
                                      items: items, L: L, S: S, E: E, Ev: Ev, scale: scale)
            let (a, b) = (fast.contiguous().toArray(), float32.contiguous().toArray())
            let scale64 = expected.map(abs).max() ?? 1
            let error = zip(a, expected).map { abs(Double($0) - $1) }.max() ?? 0
            let fromFloat32 = zip(a, b).map { abs(Double($0) - Double($1)) }.max() ?? 0
            print("BFloat16AttentionTests: \(label): \(error / scale64) of the scale from the model, \(fromFloat32 / scale64) from float32")
            XCTAssertLessThan(error / scale64, 2e-4, label)
            XCTAssertGreaterThan(fromFloat32 / scale64, 1e-4, "\(label): no bfloat16 rounding visible, the float32 kernel ran")
            XCTAssertLessThan(fromFloat32 / scale64, 3e-2, "\(label): further from float32 than bfloat16 rounding explains")
        }
    }

    /// Heads split from a `[B, L, heads · E]` projection (the query a strided view): the output
    /// lands in the query's layout and equals the dense case.
    func testStridedHeadsMatchDense() {
        var generator = RandomGenerator(seed: 12)
        let (batch, heads, L, E) = (2, 3, 150, 40)
        let projection = Tensor.randn([batch, L, heads * E], generator: &generator)
        let key = Tensor.randn([batch, heads, L, E], generator: &generator)
        let value = Tensor.randn([batch, heads, L, E], generator: &generator)
        let query = projection.reshaped([batch, L, heads, E]).transposed(1, 2)
        ComputeMode.precision = .bfloat16
        let strided = noGrad { Tensor.scaledDotProductAttention(query: query, key: key, value: value) }
        let dense = noGrad { Tensor.scaledDotProductAttention(query: query.contiguous(), key: key, value: value) }
        ComputeMode.precision = .float32
        XCTAssertEqual(strided.contiguous().toArray(), dense.toArray())
    }

    /// What still takes float32: a recorded graph, a mask.
    func testRecordingAndMasksTakeFloat32() {
        var generator = RandomGenerator(seed: 13)
        let query = Tensor.randn([1, 200, 40], generator: &generator)
        query.requiresGrad = true
        let key = Tensor.randn([1, 200, 40], generator: &generator)
        let value = Tensor.randn([1, 200, 40], generator: &generator)
        ComputeMode.precision = .bfloat16
        let recorded = Tensor.scaledDotProductAttention(query: query, key: key, value: value)
        let masked = noGrad { Tensor.scaledDotProductAttention(query: query, key: key, value: value, mask: Tensor.zeros([200, 200])) }
        ComputeMode.precision = .float32
        let reference = noGrad { Tensor.scaledDotProductAttention(query: query, key: key, value: value) }
        XCTAssertEqual(recorded.toArray(), reference.toArray())
        XCTAssertEqual(masked.toArray(), reference.toArray())
    }
}
