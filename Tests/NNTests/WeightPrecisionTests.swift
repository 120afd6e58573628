import Foundation
import NN
import Tensors
import XCTest

/// 16-bit parameters: loaded as the file stores them (mapped, not copied), widened one layer at
/// a time as ops read them, so outputs equal those of the same weights widened to float32.
final class WeightPrecisionTests: XCTestCase {
    /// A small model touching the ops a UNet's parameters go through: convolution, group norm,
    /// linear, layer norm, embedding.
    final class Model: Module {
        let convolution = Conv2d(3, 8, kernelSize: 3, padding: 1)
        let pointwise = Conv2d(8, 8, kernelSize: 1)
        let groupNorm = GroupNorm(groupCount: 4, channels: 8)
        let linear = Linear(8, 6)
        let layerNorm = LayerNorm(6)
        let embedding = Embedding(5, 6)

        func callAsFunction(_ input: Tensor) -> Tensor {
            let features = groupNorm(pointwise(convolution(input)).silu())           // [N, 8, H, W]
            let tokens = features.reshaped([input.shape[0], 8, -1]).transposed(1, 2)  // [N, H·W, 8]
            return layerNorm(linear(tokens)) + embedding([1, 3]).reshaped([2, 1, 6])
        }
    }

    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("weight-precision-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: folder)
    }

    func input() -> Tensor {
        var generator = RandomGenerator(seed: 1)
        return Tensor.randn([2, 3, 6, 6], generator: &generator)
    }

    func testSixteenBitWeightsAsStoredGiveTheWidenedOutputs() throws {
        Initialization.seed(4)
        let path = folder.appendingPathComponent("model.safetensors").path
        try Model().saveSafetensors(path: path, dataType: .bfloat16)

        let widened = Model()
        try widened.loadSafetensors(path: path)
        XCTAssertTrue(widened.parameters().allSatisfy { $0.dataType == .float32 })

        let kept = Initialization.withoutInitialValues { Model() }
        try kept.loadSafetensors(path: path, precision: .asStored)
        XCTAssertTrue(kept.parameters().allSatisfy { $0.dataType == .bfloat16 && $0.storage.isBorrowed && !$0.requiresGrad })
        XCTAssertEqual(kept.parameterBytes * 2, widened.parameterBytes)

        let expected = noGrad { widened(input()) }.toArray(), found = noGrad { kept(input()) }.toArray()
        XCTAssertEqual(found, expected, "16-bit weights widened by the ops must give exactly the float32-widened model's output")
    }

    func testConversionAndCopyOnWrite() throws {
        Initialization.seed(5)
        let model = Model()
        let path = folder.appendingPathComponent("float16.safetensors").path
        try model.saveSafetensors(path: path, dataType: .float16)
        let reference = noGrad { model(input()) }

        // Converting in memory rounds like saving in float16 and loading widened.
        let roundTrip = Model()
        try roundTrip.loadSafetensors(path: path)
        model.convertParameters(to: .float16)
        XCTAssertTrue(model.parameters().allSatisfy { $0.dataType == .float16 })
        XCTAssertEqual(noGrad { model(input()) }.toArray(), noGrad { roundTrip(input()) }.toArray())
        let difference = (noGrad { model(input()) } - reference).abs().max().item
        XCTAssertGreaterThan(difference, 0, "float16 rounding must change the output a little")
        XCTAssertLessThan(difference, 0.05)

        // Writing into a mapped parameter copies its page and leaves the file as it was.
        let mapped = Model()
        try mapped.loadSafetensors(path: path, precision: .bfloat16)  // float16 file → converted, not mapped
        XCTAssertTrue(mapped.parameters().allSatisfy { $0.dataType == .bfloat16 && !$0.storage.isBorrowed })
        let asStored = Model()
        try asStored.loadSafetensors(path: path, precision: .asStored)
        let weight = asStored.linear.weight
        XCTAssertTrue(weight.storage.isBorrowed)
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        weight.storage.halfWords[0] ^= 0x8000
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), before)

        // Back to float32 for training.
        asStored.convertParameters(to: .float32)
        XCTAssertTrue(asStored.parameters().allSatisfy { $0.dataType == .float32 && !$0.storage.isBorrowed })
    }
}
