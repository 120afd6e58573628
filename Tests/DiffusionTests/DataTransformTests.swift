import Diffusion
import Foundation
import Tensors
import XCTest

final class DataTransformTests: XCTestCase {
    private var generator = RandomGenerator(seed: 1)

    func testResizeMatchesPillowBilinear() throws {
        let fixture = try DataFixtures.json("resize.json")
        let (width, height) = (try XCTUnwrap(fixture["width"] as? Int), try XCTUnwrap(fixture["height"] as? Int))
        let values = try XCTUnwrap(fixture["values"] as? [Double]).map(Float.init)
        let image = Tensor(values, shape: [1, height, width])
        let outputs = try XCTUnwrap(fixture["outputs"] as? [[String: Any]])
        for output in outputs {
            let (newWidth, newHeight) = (try XCTUnwrap(output["width"] as? Int), try XCTUnwrap(output["height"] as? Int))
            let expected = try XCTUnwrap(output["values"] as? [Double]).map(Float.init)
            let resized = Resize(height: newHeight, width: newWidth).apply(image, generator: &generator)
            XCTAssertEqual(resized.shape, [1, newHeight, newWidth])
            let worst = zip(resized.toArray(), expected).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThan(worst, 1e-5, "\(newWidth)×\(newHeight)")
        }
    }

    func testResizeWithoutAntialiasIsPyTorchBilinear() {
        var source = RandomGenerator(seed: 3)
        let image = Tensor.rand([2, 9, 7], low: -1, high: 1, generator: &source)
        for (height, width) in [(4, 3), (13, 17), (9, 2)] {
            let ours = Resize(height: height, width: width, antialias: false).apply(image, generator: &generator)
            let reference = image.reshaped([1, 2, 9, 7]).resizedBilinear(height: height, width: width)
            let worst = zip(ours.toArray(), reference.toArray()).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThan(worst, 1e-5, "\(height)×\(width)")
        }
    }

    func testResizeShorterSideKeepsAspect() {
        let wide = Tensor.zeros([3, 10, 25])
        XCTAssertEqual(Resize(shorterSide: 4).apply(wide, generator: &generator).shape, [3, 4, 10])
        let tall = Tensor.zeros([1, 30, 7])
        XCTAssertEqual(Resize(shorterSide: 5).apply(tall, generator: &generator).shape, [1, 21, 5])
        let constant = Tensor.full(0.3, [1, 30, 7])
        XCTAssertEqual(Resize(shorterSide: 3).apply(constant, generator: &generator).toArray().map { ($0 * 1e5).rounded() / 1e5 },
                       [Float](repeating: 0.3, count: 3 * 12))
    }

    func testCenterCropOffsetsAndPadding() {
        // 1×5×6 with value 10·row + column; crop 2×3: top round(1.5) = 2 (half to even), left round(1.5) = 2.
        let image = Tensor((0..<30).map { Float($0 / 6 * 10 + $0 % 6) }, shape: [1, 5, 6])
        XCTAssertEqual(CenterCrop(height: 2, width: 3).apply(image, generator: &generator).toArray(), [22, 23, 24, 32, 33, 34])
        XCTAssertEqual(CenterCrop(height: 3, width: 2).apply(image, generator: &generator).toArray(), [12, 13, 22, 23, 32, 33])
        // Larger than the image: padded with -1, the image at ((4 - 2) / 2, (5 - 3) / 2).
        let small = Tensor([1, 2, 3, 4, 5, 6], shape: [1, 2, 3])
        XCTAssertEqual(CenterCrop(height: 4, width: 5).apply(small, generator: &generator).toArray(),
                       [-1, -1, -1, -1, -1,
                        -1, 1, 2, 3, -1,
                        -1, 4, 5, 6, -1,
                        -1, -1, -1, -1, -1])
    }

    func testFlips() {
        let image = Tensor([1, 2, 3, 4, 5, 6, 7, 8], shape: [2, 2, 2])
        XCTAssertEqual(HorizontalFlip().apply(image, generator: &generator).toArray(), [2, 1, 4, 3, 6, 5, 8, 7])
        XCTAssertEqual(RandomHorizontalFlip(probability: 0).apply(image, generator: &generator).toArray(), image.toArray())
        XCTAssertEqual(RandomHorizontalFlip(probability: 1).apply(image, generator: &generator).toArray(), [2, 1, 4, 3, 6, 5, 8, 7])
        // With probability 0.5 about half flip, and the same seed gives the same choices.
        func choices(seed: UInt64) -> [Bool] {
            var random = RandomGenerator(seed: seed)
            return (0..<200).map { _ in RandomHorizontalFlip().apply(image, generator: &random)[0, 0, 0] == 2 }
        }
        XCTAssertEqual(choices(seed: 5), choices(seed: 5))
        XCTAssertNotEqual(choices(seed: 5), choices(seed: 6))
        XCTAssertEqual(Double(choices(seed: 5).filter { $0 }.count), 100, accuracy: 25)
    }

    func testChannelConversion() {
        let grey = Tensor([0.5, -1], shape: [1, 1, 2])
        XCTAssertEqual(ConvertChannels(3).apply(grey, generator: &generator).toArray(), [0.5, -1, 0.5, -1, 0.5, -1])
        let rgb = Tensor([1, -1, -1, 1, 0, 0], shape: [3, 1, 2])
        let luma = ConvertChannels(1).apply(rgb, generator: &generator).toArray()
        XCTAssertEqual(luma[0], 0.299 * 1 + 0.587 * -1 + 0.114 * 0, accuracy: 1e-6)
        XCTAssertEqual(luma[1], 0.299 * -1 + 0.587 * 1 + 0.114 * 0, accuracy: 1e-6)
        XCTAssertTrue(ConvertChannels(3).apply(rgb, generator: &generator) === rgb)
    }

    func testRescaleAndComposition() {
        let image = Tensor([0, 0.25, 1, 0.5], shape: [1, 2, 2])
        XCTAssertEqual(Rescale().apply(image, generator: &generator).toArray(), [-1, -0.5, 1, 0])
        let chain = ComposedTransform([Rescale(), HorizontalFlip(), CenterCrop(height: 1, width: 2)])
        XCTAssertEqual(chain.apply(image, generator: &generator).toArray(), [-0.5, -1])
        let standard = ImageTransforms.standard(size: 8, channels: 3, randomFlip: true)
        XCTAssertEqual(standard.apply(Tensor.zeros([1, 12, 20]), generator: &generator).shape, [3, 8, 8])
    }
}
