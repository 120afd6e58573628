import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// CLIP guidance's pieces: the great-circle loss, the cut-outs, and the
/// gradient of the whole loss with respect to the predicted x0.
final class CLIPGuidanceTests: XCTestCase {
    static let clipFolder = SafetensorsFixture.directory.deletingLastPathComponent().appendingPathComponent("clip/clip")

    /// For unit vectors at angle θ the loss is 2·(θ/2)² = θ²/2.
    func testSphericalDistanceOfKnownAngles() {
        for angle: Float in [0.1, 0.7, 1.5, 2.5, 3.0] {
            let a = Tensor([1, 0, 0], shape: [1, 3])
            let b = Tensor([Foundation.cos(angle), Foundation.sin(angle), 0], shape: [1, 3])
            let loss = CLIPGuidanceLoss.sphericalDistance(a, b).item
            XCTAssertEqual(loss, angle * angle / 2, accuracy: 1e-4 * max(1, angle * angle), "angle \(angle)")
        }
        let points = Tensor([0.6, 0.8, 0, 0, 0.6, 0.8, 0.8, 0, 0.6], shape: [3, 3])
        let target = Tensor([0, 0, 1], shape: [1, 3])
        GradientCheck.check([points], step: 1e-3) { inputs in
            CLIPGuidanceLoss.sphericalDistance(CLIPModel.normalized(inputs[0]), target)
        }
    }

    func testCutoutsAreReproducibleAndShaped() {
        var draws = RandomGenerator(seed: 3)
        let images = Tensor.rand([2, 3, 28, 28], generator: &draws)
        let cutouts = CLIPCutouts(count: 5)
        var first = RandomGenerator(seed: 9), second = RandomGenerator(seed: 9), third = RandomGenerator(seed: 10)
        let a = cutouts(images, size: 32, generator: &first)
        let b = cutouts(images, size: 32, generator: &second)
        let c = cutouts(images, size: 32, generator: &third)
        XCTAssertEqual(a.shape, [10, 3, 32, 32])
        XCTAssertEqual(a.toArray(), b.toArray())
        XCTAssertNotEqual(a.toArray(), c.toArray())
        // A crop of a constant image is that constant.
        var constant = RandomGenerator(seed: 4)
        let flat = cutouts(Tensor.full(0.25, [1, 3, 40, 40]), size: 16, generator: &constant)
        XCTAssertEqual(flat.toArray().map { ($0 * 1e5).rounded() / 1e5 }, Array(repeating: 0.25, count: 5 * 3 * 16 * 16))
    }

    func loss(_ model: CLIPModel, seed: UInt64 = 5) -> CLIPGuidanceLoss {
        CLIPGuidanceLoss(model: model, prompt: "ids", promptIDs: [298, 17, 42, 299], cutouts: CLIPCutouts(count: 3), seed: seed)
    }

    /// d loss / d x0 through the cut-outs, CLIP's normalisation, the vision tower
    /// and the great-circle distance, against central differences along random
    /// directions over all pixels (same cut-outs each time; per-pixel differences
    /// drown in float32 rounding, a direction through every pixel does not).
    func testGradientMatchesFiniteDifferences() throws {
        let model = try CLIPModel.load(folder: Self.clipFolder)
        var draws = RandomGenerator(seed: 6)
        for shape in [[2, 3, 28, 28], [1, 1, 28, 28]] {  // grey images are seen as RGB
            let x0 = Tensor.rand(shape, low: -1, high: 1, generator: &draws)
            x0.requiresGrad = true
            let gradient = Tensors.gradients(of: loss(model)(x0).sum(), withRespectTo: [x0])[0]
            for _ in 0..<3 {
                let direction = Tensor.randn(shape, generator: &draws)
                let analytic = Double(noGrad { (gradient * direction).sum().item })
                let step: Float = 1e-2
                let plus = noGrad { loss(model)(x0.detach() + direction * step).toArray() }.reduce(0.0) { $0 + Double($1) }
                let minus = noGrad { loss(model)(x0.detach() - direction * step).toArray() }.reduce(0.0) { $0 + Double($1) }
                let numeric = (plus - minus) / (2 * Double(step))
                XCTAssertEqual(analytic, numeric, accuracy: 2e-2 * abs(numeric) + 1e-6, "shape \(shape)")
            }
        }
    }

    /// A step against the gradient lowers the loss (same cut-outs); the loss is one value per image.
    func testDescentLowersTheLoss() throws {
        let model = try CLIPModel.load(folder: Self.clipFolder)
        var draws = RandomGenerator(seed: 7)
        let x0 = Tensor.rand([3, 3, 28, 28], low: -1, high: 1, generator: &draws)
        x0.requiresGrad = true
        let before = loss(model)(x0)
        XCTAssertEqual(before.shape, [3])
        let gradient = Tensors.gradients(of: before.sum(), withRespectTo: [x0])[0]
        let scale = 0.05 / max(gradient.abs().max().item, 1e-12)
        let moved = (x0 - gradient * scale).detach()
        let after = noGrad { loss(model)(moved) }
        for (old, new) in zip(before.toArray(), after.toArray()) { XCTAssertLessThan(new, old) }
        // Combined with the colour loss, the total is the weighted sum.
        let color = ColorLoss(red: 1, green: 0, blue: 0)
        let combined = CombinedGuidanceLoss([(loss(model), 2), (color, 1)])
        let expected = noGrad { loss(model)(moved) * 2 + color(moved) }
        assertClose(noGrad { combined(moved) }, expected, relative: 1e-5)
    }

    /// A square of one colour on another: both colours come back; a flat image has no object.
    func testTintEstimation() {
        let (foreground, background): ([Float], [Float]) = ([0.9, 0.1, 0.2], [0.1, 0.3, 0.8])
        var values = [Float](repeating: 0, count: 2 * 3 * 12 * 12)
        for image in 0..<2 {
            for channel in 0..<3 {
                for y in 0..<12 {
                    for x in 0..<12 {
                        let inside = image == 0 && (3..<9).contains(y) && (4..<10).contains(x)
                        let level = inside ? foreground[channel] : background[channel]
                        values[((image * 3 + channel) * 12 + y) * 12 + x] = level * 2 - 1
                    }
                }
            }
        }
        let estimates = TintEstimation.colors(of: Tensor(values, shape: [2, 3, 12, 12]))
        for (found, expected) in [(estimates[0].foreground, foreground), (estimates[0].background, background),
                                  (estimates[1].foreground, background)] {
            XCTAssertLessThan(TintEstimation.distance(found, expected), 1e-5, "\(found) vs \(expected)")
        }
    }
}
