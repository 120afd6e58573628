import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// Parameter counts and names of `BasicUNet` and `UNet2DModel`, BasicUNet parity,
/// and the forward pass's bookkeeping (timestep broadcasting, no graph under `noGrad`).
final class UNetModelTests: XCTestCase {
    static func courseConfiguration() -> UNet2DConfiguration {
        var configuration = UNet2DConfiguration()
        configuration.sampleSize = .square(28)
        configuration.inChannels = 1
        configuration.outChannels = 1
        configuration.layersPerBlock = 2
        configuration.blockOutChannels = [32, 64, 64]
        configuration.downBlockTypes = [.downBlock, .attentionDownBlock, .attentionDownBlock]
        configuration.upBlockTypes = [.attentionUpBlock, .attentionUpBlock, .upBlock]
        return configuration
    }

    func testBasicUNetHas309057Parameters() {
        let model = BasicUNet(inChannels: 1, outChannels: 1)
        XCTAssertEqual(model.parameterCount, 309_057)
        XCTAssertEqual(model.namedParameters().map(\.name), [
            "down_layers.0.weight", "down_layers.0.bias", "down_layers.1.weight", "down_layers.1.bias",
            "down_layers.2.weight", "down_layers.2.bias", "up_layers.0.weight", "up_layers.0.bias",
            "up_layers.1.weight", "up_layers.1.bias", "up_layers.2.weight", "up_layers.2.bias",
        ])
    }

    func testCourseUNet2DModelHas1707009Parameters() throws {
        let model = try UNet2DModel(configuration: Self.courseConfiguration())
        XCTAssertEqual(model.parameterCount, 1_707_009)
    }

    /// The names, in order, are those of diffusers' `state_dict()` (recorded by the golden script).
    func testStateDictNamesMatchDiffusersExactly() throws {
        for name in ["course", "four_level", "scale_shift", "class_conditional", "fourier", "variants"] {
            let golden = try SafetensorsFixture.load("io", subdirectory: "unet/\(name)")
            let configuration = try UNet2DConfiguration.load(
                contentsOf: UNetParityTests.fixtures.appendingPathComponent(name).appendingPathComponent("config.json"))
            let model = try UNet2DModel(configuration: configuration)
            let expected = try golden.string("state_dict_names").split(separator: ",").map(String.init)
            XCTAssertEqual(model.namedParameters().map(\.name), expected, name)
            XCTAssertEqual(model.parameterCount, try golden.int("parameters"), name)
        }
        let golden = try SafetensorsFixture.load("io", subdirectory: "unet/basic_unet")
        XCTAssertEqual(BasicUNet().namedParameters().map(\.name), try golden.string("state_dict_names").split(separator: ",").map(String.init))
    }

    func testBasicUNetMatchesPyTorch() throws {
        let golden = try SafetensorsFixture.load("io", subdirectory: "unet/basic_unet")
        let model = BasicUNet()
        UNetHashedWeights.fill(model)
        let output = model(try golden.tensor("sample"))
        var errors = UNetParityTests.Errors()
        errors.output = UNetParityTests.relativeError(output, try golden.tensor("output"))
        let loss = Tensor.mseLoss(output, try golden.tensor("target"))
        loss.backward()
        UNetParityTests.compareGradients(model, golden: golden, name: "basic_unet", errors: &errors)
        print(String(format: "BasicUNet parity: output %.2e, whole gradients %.2e, projected gradients %.2e",
                     errors.output, errors.gradient, errors.projection))
        XCTAssertLessThan(errors.output, 1e-4)
        XCTAssertLessThan(errors.gradient, 1e-3)
        XCTAssertLessThan(errors.projection, 1e-3)
    }

    private func smallModel() throws -> UNet2DModel {
        var configuration = UNet2DConfiguration()
        configuration.inChannels = 1
        configuration.outChannels = 1
        configuration.blockOutChannels = [8, 16]
        configuration.layersPerBlock = 1
        configuration.normGroupCount = 4
        configuration.attentionHeadDimension = 4
        configuration.downBlockTypes = [.downBlock, .attentionDownBlock]
        configuration.upBlockTypes = [.attentionUpBlock, .upBlock]
        return try UNet2DModel(configuration: configuration)
    }

    func testOneTimestepIsBroadcastOverTheBatch() throws {
        let model = try smallModel()
        var generator = RandomGenerator(seed: 4)
        let sample = Tensor.randn([3, 1, 8, 8], generator: &generator)
        noGrad {
            let broadcast = model(sample, timestep: 250)
            let explicit = model(sample, timesteps: [250, 250, 250])
            let fromTensor = model(sample, timesteps: Tensor(scalar: 250))
            XCTAssertEqual(broadcast.toArray(), explicit.toArray())
            XCTAssertEqual(fromTensor.toArray(), explicit.toArray())
            XCTAssertEqual(broadcast.shape, [3, 1, 8, 8])
        }
    }

    func testInferenceUnderNoGradRecordsNoGraph() throws {
        let model = try smallModel()
        var generator = RandomGenerator(seed: 5)
        let sample = Tensor.randn([2, 1, 8, 8], generator: &generator)
        let output = noGrad { model(sample, timesteps: [10, 900]) }
        XCTAssertTrue(output.isLeaf, "no backward graph is kept under noGrad")
        let trained = model(sample, timesteps: [10, 900])
        XCTAssertFalse(trained.isLeaf)
    }

    func testInvalidConfigurationsNameTheKey() {
        var configuration = Self.courseConfiguration()
        configuration.upBlockTypes = [.upBlock]
        XCTAssertThrowsError(try UNet2DModel(configuration: configuration)) { error in
            XCTAssertEqual(error as? UNet2DConfigurationError, .invalid(key: "up_block_types", reason: "has 1 entries but down_block_types has 3"))
        }
        configuration = Self.courseConfiguration()
        configuration.normGroupCount = 24
        XCTAssertThrowsError(try UNet2DModel(configuration: configuration)) { error in
            guard case .invalid(let key, _)? = error as? UNet2DConfigurationError else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "norm_num_groups")
        }
        configuration = Self.courseConfiguration()
        configuration.timeEmbeddingType = .learned
        XCTAssertThrowsError(try UNet2DModel(configuration: configuration)) { error in
            guard case .invalid(let key, _)? = error as? UNet2DConfigurationError else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "num_train_timesteps")
        }
    }
}
