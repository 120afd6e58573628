import Foundation
@testable import Tensors
import XCTest

/// `backward(gradientReady:)`: every leaf reported once, as soon as its gradient is final
/// (before the backward pass reaches the first layers), with the same gradients as a plain
/// backward pass, also when gradients accumulate and through a checkpointed block.
final class AutogradGradientReadyTests: XCTestCase {
    private func leaf(_ shape: [Int], seed: UInt64, scale: Float = 0.3) -> Tensor {
        var generator = RandomGenerator(seed: seed)
        let tensor = (Tensor.randn(shape, generator: &generator) * scale).contiguousCopy()
        tensor.requiresGrad = true
        return tensor
    }

    /// Three layers; `shared` is used by the first and the last (its gradient is final only at the end).
    private struct Network {
        let layers: [(weight: Tensor, bias: Tensor)]
        let shared: Tensor
        let unused: Tensor
        var parameters: [Tensor] { layers.flatMap { [$0.weight, $0.bias] } + [shared, unused] }

        func loss(_ input: Tensor, checkpointed: Bool) -> Tensor {
            var hidden = input * shared
            for (index, layer) in layers.enumerated() {
                let apply: (Tensor) -> Tensor = { $0.linear(weight: layer.weight, bias: layer.bias).tanh() }
                hidden = checkpointed && index == 1 ? checkpoint([hidden], parameters: [layer.weight, layer.bias]) { apply($0[0]) } : apply(hidden)
            }
            return (hidden * shared).square().mean()
        }
    }

    private func network(_ test: AutogradGradientReadyTests) -> Network {
        var layers: [(weight: Tensor, bias: Tensor)] = []
        for index in 0..<3 {
            let seed = UInt64(2 * index + 1)
            layers.append((weight: test.leaf([8, 8], seed: seed), bias: test.leaf([8], seed: seed + 1, scale: 0.1)))
        }
        return Network(layers: layers, shared: test.leaf([8], seed: 40, scale: 1), unused: test.leaf([3], seed: 41))
    }

    private func input() -> Tensor {
        var generator = RandomGenerator(seed: 7)
        return Tensor.randn([5, 8], generator: &generator)
    }

    /// Gradients of a plain backward pass (`passes` of them, accumulated), and with the hook: the
    /// order of the reports and each leaf's gradient as the hook saw it.
    private func run(passes: Int, checkpointed: Bool) -> (plain: [[Float]], hooked: [[Float]], reports: [Int], seenAtReport: [[Float]?], gradientsWhenFirstReported: [Bool]) {
        let plainNetwork = network(self), hookedNetwork = network(self)
        for _ in 0..<passes { plainNetwork.loss(input(), checkpointed: checkpointed).backward() }
        var reports: [Int] = []
        var seen = [[Float]?](repeating: nil, count: hookedNetwork.parameters.count)
        var gradientsWhenFirstReported: [Bool] = []
        for pass in 0..<passes {
            let last = pass == passes - 1
            let parameters = hookedNetwork.parameters
            hookedNetwork.loss(input(), checkpointed: checkpointed).backward(gradientReady: !last ? nil : { leaf in
                guard let index = parameters.firstIndex(where: { $0 === leaf }) else { return XCTFail("a leaf that is no parameter") }
                if reports.isEmpty { gradientsWhenFirstReported = parameters.map { $0.grad != nil } }
                reports.append(index)
                seen[index] = leaf.grad?.toArray()
            })
        }
        func values(_ network: Network) -> [[Float]] { network.parameters.map { $0.grad?.toArray() ?? [] } }
        return (values(plainNetwork), values(hookedNetwork), reports, seen, gradientsWhenFirstReported)
    }

    func testEveryLeafIsReportedOnceWithItsFinalGradientBeforeTheEndOfThePass() {
        let result = run(passes: 1, checkpointed: false)
        XCTAssertEqual(result.hooked, result.plain, "the hook changed the gradients")
        // The unused leaf is not in the graph: never reported. The others exactly once each.
        XCTAssertEqual(result.reports.sorted(), [0, 1, 2, 3, 4, 5, 6])
        for index in 0..<7 { XCTAssertEqual(result.seenAtReport[index], result.plain[index], "parameter \(index)'s gradient was not final when reported") }
        // The last layer is reported first, the first layer after it; the shared leaf (used by the
        // first op of the forward pass) is last.
        XCTAssertLessThan(result.reports.firstIndex(of: 4)!, result.reports.firstIndex(of: 0)!)
        XCTAssertEqual(result.reports.last, 6)
        // When the first leaf was reported, the first layer's gradient had not been written: the
        // report comes during the pass, not after it.
        XCTAssertEqual(result.gradientsWhenFirstReported[0], false)
        XCTAssertEqual(result.gradientsWhenFirstReported[6], false)
    }

    func testAccumulatedGradientsAreReportedFinal() {
        let result = run(passes: 2, checkpointed: false)
        XCTAssertEqual(result.hooked, result.plain)
        XCTAssertEqual(result.reports.sorted(), [0, 1, 2, 3, 4, 5, 6])
        for index in 0..<7 { XCTAssertEqual(result.seenAtReport[index], result.plain[index], "parameter \(index)") }
    }

    func testCheckpointedBlockParametersAreReportedWithTheirGradients() {
        let result = run(passes: 1, checkpointed: true)
        XCTAssertEqual(result.hooked, result.plain)
        XCTAssertEqual(result.reports.sorted(), [0, 1, 2, 3, 4, 5, 6])
        for index in 0..<7 { XCTAssertEqual(result.seenAtReport[index], result.plain[index], "parameter \(index)") }
    }

    func testALeafRootIsReported() {
        let root = leaf([1], seed: 3)
        var reported: [Tensor] = []
        root.backward(gradientReady: { reported.append($0) })
        XCTAssertEqual(reported.count, 1)
        XCTAssertTrue(reported.first === root)
        XCTAssertEqual(root.grad?.toArray(), [1])
    }
}
