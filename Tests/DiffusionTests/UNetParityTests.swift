import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// `UNet2DModel` against diffusers on six configurations (`Scripts/make-unet-goldens`):
/// same output for the same weights, input and timesteps, and the same parameter
/// gradients of an MSE loss.
///
/// The weights are not stored in the fixtures: both sides fill every parameter
/// from an integer hash of its name (`UNetHashedWeights`, reproduced bit for bit
/// from the script). Gradients of tensors up to 512 elements are compared whole;
/// larger ones through three projections on hash-random vectors, their L2 norm
/// and their largest magnitude.
final class UNetParityTests: XCTestCase {
    static let fixtures = SafetensorsFixture.directory.deletingLastPathComponent().appendingPathComponent("unet")

    struct Errors {
        /// max |ours − diffusers| / max |diffusers| of the output.
        var output: Float = 0
        /// The largest per-tensor max |Δg| / max |g| over whole gradients.
        var gradient: Float = 0
        /// The largest relative error of the projection summaries (|Δp| / (‖g‖·rms r)).
        var projection: Double = 0
        var worstGradient = ""
        var worstProjected = ""
    }

    static func maxAbs(_ values: [Float]) -> Float { values.reduce(0) { max($0, abs($1)) } }

    static func relativeError(_ ours: Tensor, _ reference: Tensor) -> Float {
        let (a, b) = (ours.toArray(), reference.toArray())
        precondition(a.count == b.count, "shapes \(ours.shape) and \(reference.shape) differ")
        let difference = zip(a, b).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        return difference / max(maxAbs(b), 1e-30)
    }

    /// Runs configuration `name` and compares with the golden.
    static func check(_ name: String) throws -> Errors {
        let folder = fixtures.appendingPathComponent(name)
        let configuration = try UNet2DConfiguration.load(contentsOf: folder.appendingPathComponent("config.json"))
        let golden = try SafetensorsFixture.load("io", subdirectory: "unet/\(name)")
        let model = try UNet2DModel(configuration: configuration)
        UNetHashedWeights.fill(model)

        let sample = try golden.tensor("sample")
        let timesteps = try golden.tensor("timesteps").toArray()
        let output: Tensor
        if let labels = golden.tensors["class_labels"], configuration.classEmbeddingType == nil {
            output = model(sample, timesteps: timesteps, classLabels: labels.toArray().map { Int($0) })
        } else if let labels = golden.tensors["class_labels"] {
            output = model(sample, timesteps: timesteps, classCondition: labels)
        } else if let condition = golden.tensors["class_condition"] {
            output = model(sample, timesteps: timesteps, classCondition: condition)
        } else {
            output = model(sample, timesteps: timesteps)
        }
        var errors = Errors()
        errors.output = relativeError(output, try golden.tensor("output"))
        let loss = Tensor.mseLoss(output, try golden.tensor("target"))
        XCTAssertEqual(loss.item, try golden.tensor("loss").item, accuracy: 1e-4 * max(1, abs(loss.item)), "\(name) loss")
        loss.backward()

        compareGradients(model, golden: golden, name: name, errors: &errors)
        print(String(format: "UNet parity %@: output %.2e, whole gradients %.2e (worst %@), projected gradients %.2e (worst %@)",
                     name, errors.output, errors.gradient, errors.worstGradient, errors.projection, errors.worstProjected))
        return errors
    }

    /// Compares every trainable parameter's gradient with the golden's `grad.*` or `gradsummary.*`.
    static func compareGradients(_ model: Module, golden: GoldenCase, name: String, errors: inout Errors) {
        var compared = 0
        // Each gradient is measured against its own largest entry, but not below 1e-3 of
        // the model's largest gradient entry: some gradients are zero in exact arithmetic
        // and both sides hold only rounding noise there (`to_k.bias`, as softmax ignores a
        // shift shared by a query's scores; `time_emb_proj` and `conv1.bias` of resnets
        // whose group norm has one channel per group, which removes any per-channel shift).
        let largest = golden.tensors.compactMap { key, value -> Float? in
            if key.hasPrefix("grad.") { return maxAbs(value.toArray()) }
            if key.hasPrefix("gradsummary.") { return value.toArray()[4] }
            return nil
        }.max() ?? 1
        let floor = 1e-3 * largest
        for (parameterName, parameter) in model.namedParameters() where parameter.requiresGrad {
            guard let gradient = parameter.grad else {
                XCTFail("\(name): \(parameterName) has no gradient")
                continue
            }
            if let reference = golden.tensors["grad." + parameterName] {
                let difference = zip(gradient.toArray(), reference.toArray()).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
                let error = difference / max(maxAbs(reference.toArray()), floor)
                if error > errors.gradient { errors.gradient = error; errors.worstGradient = parameterName }
                compared += 1
            } else if let summary = golden.tensors["gradsummary." + parameterName]?.toArray() {
                let values = gradient.toArray().map(Double.init)
                let norm = max(Double(summary[3]), Double(floor) * Double(values.count).squareRoot())
                // A projection on uniform ±1 weights has the scale ‖g‖·√(1/3).
                let projectionScale = norm * (1.0 / 3.0).squareRoot()
                var error = 0.0
                for k in 0..<3 {
                    let vector = UNetHashedWeights.uniform(seed: UNetHashedWeights.projectionSeed(parameterName, k), count: values.count)
                    var projection = 0.0
                    for index in values.indices { projection += values[index] * Double(vector[index]) }
                    error = max(error, abs(projection - Double(summary[k])) / projectionScale)
                }
                let ourNorm = values.reduce(0) { $0 + $1 * $1 }.squareRoot()
                error = max(error, abs(ourNorm - Double(summary[3])) / norm)
                let ourMax = values.reduce(0) { max($0, abs($1)) }
                error = max(error, abs(ourMax - Double(summary[4])) / max(Double(summary[4]), Double(floor)))
                if error > errors.projection { errors.projection = error; errors.worstProjected = parameterName }
                compared += 1
            } else {
                XCTFail("\(name): the golden has no gradient for \(parameterName)")
            }
        }
        let goldenCount = golden.tensors.keys.filter { $0.hasPrefix("grad.") || $0.hasPrefix("gradsummary.") }.count
        XCTAssertEqual(compared, goldenCount, "\(name): every golden gradient is compared")
    }

    private func assertParity(_ name: String) throws {
        let errors = try Self.check(name)
        XCTAssertLessThan(errors.output, 1e-4, "\(name) output")
        XCTAssertLessThan(errors.gradient, 1e-3, "\(name) gradients (worst \(errors.worstGradient))")
        XCTAssertLessThan(errors.projection, 1e-3, "\(name) projected gradients (worst \(errors.worstProjected))")
    }

    func testCourseConfiguration() throws { try assertParity("course") }
    func testFourLevelThreeChannelConfiguration() throws { try assertParity("four_level") }
    func testScaleShiftWithResnetResampling() throws { try assertParity("scale_shift") }
    func testClassConditional() throws { try assertParity("class_conditional") }
    func testFourierTimeEmbeddingWithTimestepClassEmbedding() throws { try assertParity("fourier") }
    func testResnetBlocksLearnedTimeIdentityClassNoMidBlock() throws { try assertParity("variants") }
}

/// The integer-hash weights of `Scripts/make-unet-goldens` (`hashed_weights`).
enum UNetHashedWeights {
    static func fnv1a(_ name: String) -> UInt32 {
        var value: UInt32 = 0x811C_9DC5
        for byte in name.utf8 { value = (value ^ UInt32(byte)) &* 0x0100_0193 }
        return value
    }

    /// `count` values in [−1, 1) from a hash of (seed, index).
    static func uniform(seed: UInt32, count: Int) -> [Float] {
        (0..<count).map { index in
            var x = UInt32(truncatingIfNeeded: index) &* 0x9E37_79B1 &+ seed &* 0x85EB_CA77 &+ 0x27D4_EB2F
            x ^= x >> 16
            x = x &* 0x7FEB_352D
            x ^= x >> 15
            x = x &* 0x846C_A68B
            x ^= x >> 16
            return Float(x >> 8) * 0x1p-23 - 1
        }
    }

    static func projectionSeed(_ name: String, _ k: Int) -> UInt32 {
        fnv1a(name) ^ (0x5BD1_E995 &* UInt32(k + 1))
    }

    static func values(name: String, shape: [Int]) -> [Float] {
        let raw = uniform(seed: fnv1a(name), count: shape.reduce(1, *))
        if shape.count >= 2 {
            let scale = Float(1.0 / Double(shape.dropFirst().reduce(1, *)).squareRoot())
            return raw.map { $0 * scale }
        }
        if name == "time_proj.weight" { return raw.map { $0 * 16 } }
        let tenth = Float(0.1)
        if name.contains("norm") && name.hasSuffix("weight") { return raw.map { 1 + $0 * tenth } }
        return raw.map { $0 * tenth }
    }

    static func fill(_ module: Module) {
        for (name, parameter) in module.namedParameters() {
            parameter.copyValues(from: Tensor(values(name: name, shape: parameter.shape), shape: parameter.shape))
        }
    }
}
