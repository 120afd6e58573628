import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// `UNet2DConditionModel.gradientCheckpointing`: the same output and the same gradients
/// (sample, context, every parameter, LoRA adapters) as without it, on the small
/// configurations of the diffusers parity tests, and a graph that holds less.
final class UNet2DConditionCheckpointTests: XCTestCase {
    struct Run {
        var output: Tensor
        var gradients: [(name: String, gradient: Tensor?)]
        var graphBytes: Int
    }

    /// One forward and backward pass of `sum(output · upstream)` on configuration `name` of the parity fixtures.
    static func run(_ name: String, checkpointed: Bool, lora: Bool = false) throws -> Run {
        let folder = UNetConditionParityTests.fixtures.appendingPathComponent(name)
        let configuration = try UNet2DConditionConfiguration.load(contentsOf: folder.appendingPathComponent("config.json"))
        let golden = try SafetensorsFixture.load("io", subdirectory: "unet-condition/\(name)")
        let model = try UNet2DConditionModel(configuration: configuration)
        UNetHashedWeights.fill(model)
        var adapters: [(String, LoRAAdapter)] = []
        if lora {
            model.freeze()
            for (path, module) in model.namedModules() {
                guard let linear = module as? Linear, ["to_q", "to_k", "to_v", "to_out.0"].contains(where: { path.hasSuffix($0) }) else { continue }
                let adapter = LoRAAdapter(inFeatures: linear.inFeatures, outFeatures: linear.outFeatures, rank: 4)
                // The same factors in both runs (the adapter's own A comes from the global initialiser),
                // and B not zero, so that A's gradient is not zero.
                var generator = RandomGenerator(seed: UInt64(adapters.count + 1))
                for factor in [adapter.down, adapter.up] {
                    let values = Tensor.randn(factor.shape, generator: &generator) * 0.1
                    factor.floatPointer.update(from: values.floatPointer, count: values.count)
                }
                linear.attachLoRA(adapter)
                adapters.append((path, adapter))
            }
        }
        model.gradientCheckpointing = checkpointed

        let sample = try golden.leaf("sample")
        let context = try golden.leaf("encoder_hidden_states")
        var labels: [Int]?
        var condition: Tensor? = golden.tensors["class_condition"]
        if let given = golden.tensors["class_labels"] {
            if configuration.classEmbeddingType == nil { labels = given.toArray().map { Int($0) } } else { condition = given }
        }
        let output = model(sample, timesteps: try golden.tensor("timesteps").toArray(), encoderHiddenStates: context,
                           classLabels: labels, classCondition: condition,
                           encoderAttentionMask: golden.tensors["encoder_attention_mask"],
                           timestepCondition: golden.tensors["timestep_cond"])
        let loss = (output * (try golden.tensor("upstream"))).sum()
        let graphBytes = GraphMemory.report(for: loss).reduce(0) { $0 + $1.bytes }
        loss.backward()
        var gradients: [(String, Tensor?)] = [("sample", sample.grad), ("encoder_hidden_states", context.grad)]
        if lora {
            for (path, adapter) in adapters {
                gradients.append(("\(path).lora_A", adapter.down.grad))
                gradients.append(("\(path).lora_B", adapter.up.grad))
            }
        } else {
            gradients += model.namedParameters().map { ($0.name, $0.tensor.grad) }
        }
        return Run(output: output.detach(), gradients: gradients, graphBytes: graphBytes)
    }

    static func relativeDifference(_ lhs: Tensor, _ rhs: Tensor) -> Float {
        let left = lhs.toArray(), right = rhs.toArray()
        let scale = max(left.map(abs).max() ?? 0, 1e-12)
        return (zip(left, right).map { abs($0 - $1) }.max() ?? 0) / scale
    }

    func compare(_ name: String, lora: Bool = false) throws {
        let plain = try Self.run(name, checkpointed: false, lora: lora)
        let checkpointed = try Self.run(name, checkpointed: true, lora: lora)
        XCTAssertEqual(Self.relativeDifference(plain.output, checkpointed.output), 0, accuracy: 1e-5, "\(name): output")
        XCTAssertEqual(plain.gradients.count, checkpointed.gradients.count)
        var worst: (name: String, difference: Float) = ("", 0)
        var missing = 0
        for (lhs, rhs) in zip(plain.gradients, checkpointed.gradients) {
            XCTAssertEqual(lhs.name, rhs.name)
            guard let left = lhs.gradient else { continue }
            guard let right = rhs.gradient else { missing += 1; XCTFail("\(name): no gradient for \(rhs.name) with checkpointing"); continue }
            let difference = Self.relativeDifference(left, right)
            if difference > worst.difference { worst = (lhs.name, difference) }
        }
        let compared = plain.gradients.filter { $0.gradient != nil }.count
        print(String(format: "UNet2DCondition checkpointing %@%@: %d gradients, worst relative difference %.2e (%@); graph %d B plain, %d B checkpointed",
                     name, lora ? " (LoRA)" : "", compared, worst.difference, worst.name, plain.graphBytes, checkpointed.graphBytes))
        XCTAssertGreaterThan(compared, lora ? 4 : 20)
        XCTAssertEqual(missing, 0)
        XCTAssertLessThan(worst.difference, 1e-5, "\(name): worst gradient \(worst.name)")
        XCTAssertLessThan(checkpointed.graphBytes, plain.graphBytes, "\(name): the checkpointed graph holds less")
    }

    func testStableDiffusion1Layout() throws { try compare("sd1") }
    func testTransformerLayersOnlyCrossAttentionMaskClassesTimeCondition() throws { try compare("options") }
    func testPlainMidBlock() throws { try compare("projection") }
    func testLoRAAdaptersOnAFrozenBase() throws { try compare("sd1", lora: true) }
}
