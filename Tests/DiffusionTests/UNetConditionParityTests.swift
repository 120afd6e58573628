import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// `UNet2DConditionModel` against diffusers on eight small configurations (one on a sample of odd size)
/// (`Scripts/make-unet-condition-goldens`): the same output for the same weights
/// and inputs, and the same gradients of `sum(output · upstream)` with respect
/// to the sample, the context (`encoder_hidden_states`) and every parameter.
///
/// As for `UNet2DModel`, the weights are not stored: both sides fill every
/// parameter from an integer hash of its name (`UNetHashedWeights`).
final class UNetConditionParityTests: XCTestCase {
    static let fixtures = UNetParityTests.fixtures.deletingLastPathComponent().appendingPathComponent("unet-condition")

    struct Errors {
        var output: Float = 0
        var sampleGradient: Float = 0
        var contextGradient: Float = 0
        var parameters = UNetParityTests.Errors()
    }

    /// Runs configuration `name` and compares with the golden.
    static func check(_ name: String) throws -> Errors {
        let configuration = try UNet2DConditionConfiguration.load(contentsOf: fixtures.appendingPathComponent(name).appendingPathComponent("config.json"))
        let golden = try SafetensorsFixture.load("io", subdirectory: "unet-condition/\(name)")
        let model = try UNet2DConditionModel(configuration: configuration)
        UNetHashedWeights.fill(model)
        if let names = golden.metadata["state_dict_names"] {
            XCTAssertEqual(model.namedParameters().map(\.name).sorted(), names.split(separator: ",").map(String.init).sorted(),
                           "\(name): parameter names")
        }

        let sample = try golden.leaf("sample")
        let context = try golden.leaf("encoder_hidden_states")
        let timesteps = try golden.tensor("timesteps").toArray()
        var labels: [Int]?
        var condition: Tensor? = golden.tensors["class_condition"]
        if let given = golden.tensors["class_labels"] {
            if configuration.classEmbeddingType == nil { labels = given.toArray().map { Int($0) } } else { condition = given }
        }
        let output = model(sample, timesteps: timesteps, encoderHiddenStates: context, classLabels: labels, classCondition: condition,
                           encoderAttentionMask: golden.tensors["encoder_attention_mask"],
                           timestepCondition: golden.tensors["timestep_cond"])
        var errors = Errors()
        errors.output = UNetParityTests.relativeError(output, try golden.tensor("output"))
        (output * (try golden.tensor("upstream"))).sum().backward()
        errors.sampleGradient = UNetParityTests.relativeError(try XCTUnwrap(sample.grad), try golden.tensor("grad_input.sample"))
        errors.contextGradient = UNetParityTests.relativeError(try XCTUnwrap(context.grad),
                                                               try golden.tensor("grad_input.encoder_hidden_states"))
        UNetParityTests.compareGradients(model, golden: golden, name: name, errors: &errors.parameters)
        print(String(format: "UNet2DCondition parity %@: output %.2e, d/d sample %.2e, d/d context %.2e, "
                     + "whole parameter gradients %.2e (worst %@), projected %.2e (worst %@)",
                     name, errors.output, errors.sampleGradient, errors.contextGradient, errors.parameters.gradient,
                     errors.parameters.worstGradient, errors.parameters.projection, errors.parameters.worstProjected))
        return errors
    }

    private func assertParity(_ name: String) throws {
        let errors = try Self.check(name)
        XCTAssertLessThan(errors.output, 1e-4, "\(name) output")
        XCTAssertLessThan(errors.sampleGradient, 1e-3, "\(name) d/d sample")
        XCTAssertLessThan(errors.contextGradient, 1e-3, "\(name) d/d encoder_hidden_states")
        XCTAssertLessThan(errors.parameters.gradient, 1e-3, "\(name) gradients (worst \(errors.parameters.worstGradient))")
        XCTAssertLessThan(errors.parameters.projection, 1e-3, "\(name) projected gradients (worst \(errors.parameters.worstProjected))")
    }

    func testStableDiffusion1Layout() throws { try assertParity("sd1") }
    func testSampleSidesNotDivisibleByTheDownsampling() throws { try assertParity("odd_size") }
    func testStableDiffusion2LayoutLinearProjectionHeadList() throws { try assertParity("sd2") }
    func testTransformerLayersOnlyCrossAttentionMaskClassesTimeCondition() throws { try assertParity("options") }
    func testProjectionClassEmbeddingConcatenatedPlainMidBlock() throws { try assertParity("projection") }
    func testTimestepClassEmbeddingWithoutMidBlock() throws { try assertParity("timestep") }
    func testIdentityClassEmbeddingKernelsOnlyCrossAttention() throws { try assertParity("identity") }
    func testSimpleProjectionClassEmbeddingLinearProjectionMask() throws { try assertParity("simple_projection") }

    /// Random weights at Stable Diffusion 1.5's and 2.1's real configurations, written by
    /// `Scripts/make-unet-condition-goldens --large DIR`; runs when `DIFFUSE_SD_LARGE=DIR`
    /// is set. The recorded run: Tests/Fixtures/unet-condition/large-run.txt.
    func testRealConfigurations() throws {
        guard let directory = ProcessInfo.processInfo.environment["DIFFUSE_SD_LARGE"] else {
            throw XCTSkip("set DIFFUSE_SD_LARGE to the folder Scripts/make-unet-condition-goldens --large wrote")
        }
        for name in ["sd15", "sd21"] {
            let folder = URL(fileURLWithPath: directory).appendingPathComponent(name)
            let golden = try Safetensors.load(path: folder.appendingPathComponent("io.safetensors").path)
            let sample = try XCTUnwrap(golden["sample"]), context = try XCTUnwrap(golden["encoder_hidden_states"])
            let timesteps = try XCTUnwrap(golden["timesteps"]).toArray()
            // DIFFUSE_COMPUTE=bf16 measures the bfloat16 inference mode's accuracy cost (bound 3e-2).
            let bfloat16 = ComputeMode.precision == .bfloat16
            for (variant, key, bound) in [(nil, "output", Float(bfloat16 ? 3e-2 : 1e-4)),
                                          ("fp16", "output_fp16_weights", Float(bfloat16 ? 3e-2 : 1e-3))] as [(String?, String, Float)] {
                var started = Date()
                // The fp16 variant stays in 16 bits, mapped from the file.
                let model = try UNet2DConditionModel.load(folder: folder, variant: variant, precision: variant == nil ? .float32 : .asStored)
                let loading = Date().timeIntervalSince(started)
                XCTAssertEqual(model.loadReport?.isClean, true)
                if variant != nil { XCTAssertTrue(model.parameters().allSatisfy { $0.dataType == .float16 && $0.storage.isBorrowed }) }
                model.eval()
                started = Date()
                let output = noGrad { model(sample, timesteps: timesteps, encoderHiddenStates: context) }
                let seconds = Date().timeIntervalSince(started)
                let error = UNetParityTests.relativeError(output, try XCTUnwrap(golden[key]))
                print(String(format: "UNet2DCondition large %@%@%@: %@ max relative error %.3e (bound %.0e), %d parameters (%d MB), load %.1f s, forward %.1f s",
                             name, variant.map { " (\($0) weights kept in 16 bits)" } ?? "", bfloat16 ? ", bfloat16 compute" : "", key, error, bound,
                             model.parameterCount, model.parameterBytes >> 20, loading, seconds))
                XCTAssertLessThan(error, bound, "\(name) \(key)")
            }
        }
    }
}
