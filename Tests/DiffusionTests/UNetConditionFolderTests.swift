import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// `unet/` folders of Stable Diffusion's UNet: a folder diffusers wrote (float32,
/// the fp16 variant, and sharded) loads with a clean report and gives diffusers'
/// outputs; folders Diffuse writes reload; configurations Diffuse cannot build
/// are errors naming the key.
final class UNetConditionFolderTests: XCTestCase {
    private let fixtures = UNetConditionParityTests.fixtures

    private func output(_ model: UNet2DConditionModel, _ golden: GoldenCase) throws -> Tensor {
        let sample = try golden.tensor("sample"), context = try golden.tensor("encoder_hidden_states")
        let timesteps = try golden.tensor("timesteps")
        return noGrad { model(sample, timesteps: timesteps, encoderHiddenStates: context) }
    }

    func testDiffusersFolderLoadsCleanAndMatches() throws {
        let golden = try SafetensorsFixture.load("folder-io", subdirectory: "unet-condition")
        for name in ["folder", "folder-sharded"] {
            let model = try UNet2DConditionModel.load(folder: fixtures.appendingPathComponent(name))
            XCTAssertEqual(model.loadReport, StateDictReport(), name)
            let error = UNetParityTests.relativeError(try output(model, golden), try golden.tensor("output"))
            print(String(format: "UNet2DCondition %@: output max relative error %.2e", name, error))
            XCTAssertLessThan(error, 1e-4, name)
        }
        let half = try UNet2DConditionModel.load(folder: fixtures.appendingPathComponent("folder"), variant: "fp16")
        XCTAssertEqual(half.loadReport, StateDictReport())
        let error = UNetParityTests.relativeError(try output(half, golden), try golden.tensor("output_fp16_weights"))
        print(String(format: "UNet2DCondition folder fp16 variant: output max relative error %.2e", error))
        XCTAssertLessThan(error, 1e-4)
    }

    /// `config.json` is written back as diffusers wrote it (the version aside).
    func testConfigurationTextRoundTrips() throws {
        for name in ["sd1", "sd2", "options", "projection", "timestep", "identity", "simple_projection", "folder"] {
            let url = fixtures.appendingPathComponent(name).appendingPathComponent("config.json")
            let text = try String(contentsOf: url, encoding: .utf8)
            let configuration = try UNet2DConditionConfiguration(jsonText: text)
            let versionLine = try XCTUnwrap(text.split(separator: "\n").first { $0.contains("\"_diffusers_version\"") })
            let ours = configuration.jsonText.split(separator: "\n").map { $0.contains("\"_diffusers_version\"") ? versionLine : $0 }
            XCTAssertEqual(ours, text.split(separator: "\n"), name)
            XCTAssertEqual(try UNet2DConditionConfiguration(jsonText: configuration.jsonText), configuration, name)
        }
    }

    func testSavedFolderReloadsBothWays() throws {
        Initialization.seed(5)
        let configuration = try UNet2DConditionConfiguration.load(contentsOf: fixtures.appendingPathComponent("folder"))
        let model = try UNet2DConditionModel(configuration: configuration)
        let folder = try temporaryFolderURL("unet-condition-save")
        try model.save(folder: folder)
        try model.save(folder: folder, variant: "fp16")
        let names = try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted()
        XCTAssertEqual(names, ["config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"])
        let reloaded = try UNet2DConditionModel.load(folder: folder)
        let half = try UNet2DConditionModel.load(folder: folder, variant: "fp16")
        XCTAssertEqual(reloaded.configuration, configuration)
        for (((name, original), (_, full)), (_, rounded)) in zip(zip(model.namedParameters(), reloaded.namedParameters()), half.namedParameters()) {
            XCTAssertEqual(full.toArray(), original.toArray(), name)
            XCTAssertEqual(rounded.toArray(), original.converted(to: .float16).converted(to: .float32).toArray(), name)
        }
        let stored = try SafetensorsCheckpoint(path: folder.appendingPathComponent("diffusion_pytorch_model.fp16.safetensors").path)
        XCTAssertEqual(Set(try stored.names.map { try stored.info($0).dataType }), [.float16])
    }

    func testMismatchedWeightsAreReportedByName() throws {
        let folder = try temporaryFolderURL("unet-condition-report")
        let source = fixtures.appendingPathComponent("folder")
        try FileManager.default.copyItem(at: source.appendingPathComponent("config.json"), to: folder.appendingPathComponent("config.json"))
        var tensors = try Safetensors.load(path: source.appendingPathComponent("diffusion_pytorch_model.safetensors").path)
        tensors.removeValue(forKey: "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight")
        tensors["class_embedding.weight"] = Tensor.zeros([10, 32])
        tensors["conv_in.weight"] = Tensor.zeros([8, 3, 3, 3])
        try Safetensors.save(tensors, to: folder.appendingPathComponent("diffusion_pytorch_model.safetensors").path, metadata: ["format": "pt"])
        XCTAssertThrowsError(try UNet2DConditionModel.load(folder: folder)) { error in
            guard let report = error as? StateDictReport else { return XCTFail("\(error)") }
            XCTAssertEqual(report.missing, ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"])
            XCTAssertEqual(report.unexpected, ["class_embedding.weight"])
            XCTAssertEqual(report.mismatched, [.init(name: "conv_in.weight", expected: [8, 4, 3, 3], found: [8, 3, 3, 3])])
        }
        let lenient = try UNet2DConditionModel.load(folder: folder, strict: false)
        XCTAssertEqual(lenient.loadReport?.unexpected, ["class_embedding.weight"])
    }

    /// Options Diffuse does not build are errors that name the key.
    func testUnsupportedConfigurationsNameTheKey() throws {
        let text = try String(contentsOf: fixtures.appendingPathComponent("sd1").appendingPathComponent("config.json"), encoding: .utf8)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        func reading(_ key: String, _ value: String) -> Error? {
            var edited = object
            edited[key] = try! JSONSerialization.jsonObject(with: Data(value.utf8), options: .fragmentsAllowed)
            do {
                let data = try JSONSerialization.data(withJSONObject: edited)
                _ = try UNet2DConditionModel(configuration: UNet2DConditionConfiguration(jsonText: String(decoding: data, as: UTF8.self)))
                return nil
            } catch {
                return error
            }
        }
        typealias Failure = UNet2DConditionConfigurationError
        for (key, value) in [("addition_embed_type", "\"text\""), ("dual_cross_attention", "true"), ("encoder_hid_dim", "32"),
                             ("time_embedding_type", "\"fourier\""), ("attention_type", "\"gated\""), ("timestep_post_act", "\"silu\"")] {
            let error = reading(key, value)
            guard case .unsupportedValue(let named, _, _)? = error as? Failure else { XCTFail("\(key): \(String(describing: error))"); continue }
            XCTAssertEqual(named, key)
            XCTAssertTrue("\(error!)".contains(key))
        }
        XCTAssertEqual(reading("down_block_types", "[\"SimpleCrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"]") as? Failure,
                       .unsupportedValue(key: "down_block_types", value: "SimpleCrossAttnDownBlock2D",
                                         supported: ["CrossAttnDownBlock2D", "DownBlock2D"]))
        XCTAssertEqual(reading("some_future_key", "1") as? Failure, .unsupportedKey("some_future_key"))
        for (key, value) in [("attention_head_dim", "3"), ("attention_head_dim", "[2, 2]"), ("norm_num_groups", "12"),
                             ("transformer_layers_per_block", "[1, 1, 0]"), ("class_embed_type", "\"projection\"")] {
            let error = reading(key, value)
            guard case .invalid(let named, _)? = error as? Failure else { XCTFail("\(key): \(String(describing: error))"); continue }
            XCTAssertEqual(named, key == "class_embed_type" ? "projection_class_embeddings_input_dim" : key)
        }
        // Keys that only configure blocks Diffuse does not build are accepted and written back.
        let inert = try UNet2DConditionConfiguration(jsonText: text.replacingOccurrences(of: "\"resnet_skip_time_act\": false",
                                                                                         with: "\"resnet_skip_time_act\": true"))
        XCTAssertEqual(inert.inertKeys["resnet_skip_time_act"], .bool(true))
        XCTAssertTrue(inert.jsonText.contains("\"resnet_skip_time_act\": true"))
    }

    /// `num_attention_heads` defaults to `attention_head_dim`: Stable Diffusion 1.x's 8 means 8 heads.
    func testHeadCountRule() throws {
        var configuration = UNet2DConditionConfiguration.stableDiffusion15
        configuration.blockOutChannels = [32, 64, 64, 64]
        configuration.normGroupCount = 8
        configuration.crossAttentionDimension = .uniform(16)
        let model = try UNet2DConditionModel(configuration: configuration)
        let attention = try XCTUnwrap((model.downBlocks[1] as? CrossAttnDownBlock2D)?.attentions[0].transformerBlocks[0].attn1)
        XCTAssertEqual(attention.heads, 8)
        XCTAssertEqual(attention.toQuery.outFeatures, 64)
        configuration.attentionHeadCount = .list([2, 4, 4, 4])
        let counted = try UNet2DConditionModel(configuration: configuration)
        XCTAssertEqual((counted.downBlocks[0] as? CrossAttnDownBlock2D)?.attentions[0].transformerBlocks[0].attn1.heads, 2)
        XCTAssertEqual((counted.upBlocks[3] as? CrossAttnUpBlock2D)?.attentions[0].transformerBlocks[0].attn1.heads, 2)
    }
    /// Writes a folder for `Scripts/make-unet-condition-goldens --verify-diffuse-folder` (runs when
    /// `DIFFUSE_UNET_CONDITION_EXPORT=DIR` is set): the `sd2` configuration with random weights,
    /// float32 and fp16 variant, and `diffuse_check.safetensors` with an input and Diffuse's outputs.
    func testWriteFolderForPythonVerification() throws {
        guard let path = ProcessInfo.processInfo.environment["DIFFUSE_UNET_CONDITION_EXPORT"] else {
            throw XCTSkip("set DIFFUSE_UNET_CONDITION_EXPORT to a folder to write")
        }
        let folder = URL(fileURLWithPath: path)
        Initialization.seed(11)
        let configuration = try UNet2DConditionConfiguration.load(contentsOf: fixtures.appendingPathComponent("sd2"))
        let model = try UNet2DConditionModel(configuration: configuration)
        try model.save(folder: folder)
        try model.save(folder: folder, variant: "fp16")
        let half = try UNet2DConditionModel.load(folder: folder, variant: "fp16")
        var draws = RandomGenerator(seed: 12)
        let sample = Tensor.randn([2, 4, 16, 16], generator: &draws), context = Tensor.randn([2, 5, 32], generator: &draws)
        let timesteps = Tensor([999, 10], shape: [2])
        let output = noGrad { model(sample, timesteps: timesteps, encoderHiddenStates: context) }
        let halfOutput = noGrad { half(sample, timesteps: timesteps, encoderHiddenStates: context) }
        try Safetensors.save(["sample": sample, "timesteps": timesteps, "encoder_hidden_states": context, "output": output,
                              "output_fp16_weights": halfOutput],
                             to: folder.appendingPathComponent("diffuse_check.safetensors").path, metadata: ["format": "pt"])
    }
}
