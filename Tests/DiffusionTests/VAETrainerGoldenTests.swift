import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// The VAE training loss against PyTorch + diffusers (`Scripts/make-vae-training-goldens`):
/// the same weights, batch and posterior noise give the same loss, terms and gradients.
final class VAETrainerGoldenTests: XCTestCase {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").appendingPathComponent("vae-training")
    /// The script's KL_WEIGHT.
    static let klWeight = 0.25

    func testLossAndGradientsMatchDiffusersTrainingScript() throws {
        let model = try AutoencoderKL.load(folder: Self.folder.appendingPathComponent("model"))
        let golden = try Safetensors.load(path: Self.folder.appendingPathComponent("loss.safetensors").path)
        let images = try XCTUnwrap(golden["images"]), noise = try XCTUnwrap(golden["noise"])
        model.train()
        for kind in VAEReconstructionLoss.allCases {
            let name = kind == .l1 ? "l1" : "mse"
            for parameter in model.parameters() { parameter.grad = nil }
            let terms = VAETrainer.loss(model: model, images: images, noise: noise, reconstruction: kind, klWeight: Self.klWeight)
            for (value, key) in [(terms.loss, "loss"), (terms.reconstruction, "reconstruction"), (terms.kl, "kl")] {
                let expected = try XCTUnwrap(golden["\(name).\(key)"]).item
                XCTAssertEqual(value.item, expected, accuracy: Swift.abs(expected) * 2e-6, "\(name) \(key)")
            }
            terms.loss.backward()
            var worst = (name: "", error: Float(0))
            var checked = 0
            for (parameterName, parameter) in model.namedParameters() {
                let expected = try XCTUnwrap(golden["\(name).grad.\(parameterName)"], "no golden gradient for \(parameterName)")
                let gradient = try XCTUnwrap(parameter.grad, "no gradient for \(parameterName)")
                let ours = gradient.toArray(), theirs = expected.toArray()
                XCTAssertEqual(ours.count, theirs.count, parameterName)
                let scale = Swift.max(theirs.map(Swift.abs).max() ?? 0, 1e-3)
                let error = zip(ours, theirs).map { Swift.abs($0 - $1) }.max() ?? 0
                // Within 1e-4 of the tensor's largest gradient.
                XCTAssertLessThanOrEqual(error, 1e-4 * scale, "\(name) gradient of \(parameterName): max |Δ| \(error), max |g| \(scale)")
                if error / scale > worst.error { worst = (parameterName, error / scale) }
                checked += 1
            }
            XCTAssertEqual(checked, model.namedParameters().count)
            print("VAE \(name) loss golden: \(checked) gradients, worst relative max |Δ| \(worst.error) (\(worst.name))")
        }
    }
}
