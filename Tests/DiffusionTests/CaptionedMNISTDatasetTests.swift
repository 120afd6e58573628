import Foundation
import Tensors
import XCTest

@testable import Diffusion

final class CaptionedMNISTDatasetTests: XCTestCase {
    /// 20 grey 28×28 "digits" on black (-1): a bright bar whose row depends on the label.
    private func greyDigits() -> InMemoryDataset {
        let count = 20, side = 28
        var values = [Float](repeating: -1, count: count * side * side)
        for index in 0..<count {
            let label = index % 10
            for y in (4 + 2 * label)..<(8 + 2 * label) { for x in 6..<22 { values[index * side * side + y * side + x] = 1 } }
        }
        return InMemoryDataset(images: Tensor(values, shape: [count, 1, side, side]), labels: (0..<count).map { $0 % 10 },
                               classNames: MNIST.classNames)
    }

    func testCaptionsNameEveryDigitInWords() throws {
        XCTAssertEqual(CaptionedMNISTDataset.caption(label: 7), "a handwritten digit seven")
        XCTAssertEqual(CaptionedMNISTDataset.caption(label: 0), "a handwritten digit zero")
        XCTAssertEqual(Set((0..<10).map { CaptionedMNISTDataset.caption(label: $0) }).count, 10)
        let dataset = CaptionedMNISTDataset(base: greyDigits())
        for index in 0..<dataset.count {
            let example = try dataset.example(at: index)
            XCTAssertEqual(example.label, index % 10)
            XCTAssertEqual(example.caption, "a handwritten digit " + ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][index % 10])
        }
        XCTAssertEqual(HandwrittenDigitEvaluation.prompts, (0..<10).map { CaptionedMNISTDataset.caption(label: $0) })
    }

    func testImagesAreGreyOnBlackRGBAtThirtyTwoAsTheTrainerResizesTintedFashionMNIST() throws {
        let base = greyDigits()
        let dataset = CaptionedMNISTDataset(base: base)
        var unused = RandomGenerator(seed: 0)
        for index in [0, 7, 13] {
            let image = try dataset.example(at: index).image
            XCTAssertEqual(image.shape, [3, 32, 32])
            let values = image.toArray()
            let plane = 32 * 32
            XCTAssertEqual(Array(values[0..<plane]), Array(values[plane..<(2 * plane)]), "grey: the three channels are equal")
            XCTAssertEqual(Array(values[0..<plane]), Array(values[(2 * plane)...]))
            XCTAssertEqual(values[0], -1, accuracy: 1e-6, "the corner stays black")
            XCTAssertEqual(values.max()!, 1, accuracy: 1e-5, "the bar's middle stays white")
            // The text-to-image trainer's own path for a 28×28 tinted image (grey on black is white on black tinted).
            let tinted = CaptionedTintedDataset.tint(try base.example(at: index).image, foreground: [1, 1, 1], background: [0, 0, 0])
            let expected = ImageTransforms.standard(size: 32, channels: 3).apply(tinted, generator: &unused).toArray()
            XCTAssertEqual(zip(values, expected).map { abs($0 - $1) }.max()!, 0, accuracy: 1e-5)
            // The bar of label l covers rows 4+2l ..< 8+2l of 28: at 32 its centre moves by 32/28.
            let label = index % 10
            var mass: Float = 0, moment: Float = 0
            for y in 0..<32 {
                for x in 0..<32 {
                    let level: Float = (values[y * 32 + x] + 1) / 2
                    mass += level
                    moment += Float(y) * level
                }
            }
            let expectedCentre = Float(6 + 2 * label) * 32 / 28
            XCTAssertEqual(moment / mass + 0.5, expectedCentre, accuracy: 0.05)
        }
        XCTAssertEqual(try CaptionedMNISTDataset(base: base, size: 28).example(at: 3).image.shape, [3, 28, 28])
    }

    func testTheTextToImageTrainerKnowsTheName() throws {
        XCTAssertTrue(CaptionedMNISTDataset.isNamed("captioned-mnist"))
        XCTAssertTrue(CaptionedMNISTDataset.isNamed("Captioned_MNIST"))
        XCTAssertFalse(CaptionedMNISTDataset.isNamed("mnist"))
        var options = TextToImageTrainingOptions()
        options.dataset = "captioned-mnist"
        options.maxTrainSamples = 12
        let dataset: Dataset
        do {
            dataset = try TextToImageSetup.dataset(options)
        } catch DatasetError.notInstalled {
            throw XCTSkip("MNIST is not in data/mnist (make data)")
        }
        XCTAssertTrue(dataset is CaptionedMNISTDataset)
        XCTAssertEqual(dataset.count, 12)
        let example = try dataset.example(at: 0)
        XCTAssertEqual(example.image.shape, [3, 32, 32])
        XCTAssertEqual(example.caption, CaptionedMNISTDataset.caption(label: example.label!))
    }

    func testABaseWithoutDigitLabelsIsRefused() {
        let base = InMemoryDataset(images: Tensor.zeros([2, 1, 28, 28]), labels: [3, 12], classNames: [])
        let dataset = CaptionedMNISTDataset(base: base)
        XCTAssertNoThrow(try dataset.example(at: 0))
        XCTAssertThrowsError(try dataset.example(at: 1))
        let colour = CaptionedMNISTDataset(base: InMemoryDataset(images: Tensor.zeros([1, 3, 28, 28]), labels: [1]))
        XCTAssertThrowsError(try colour.example(at: 0))
    }
}
