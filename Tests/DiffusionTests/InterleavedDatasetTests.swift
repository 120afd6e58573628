import TestSupport
import Foundation
import NN
import Tensors
import XCTest

@testable import Diffusion

/// Mixed training data: ``InterleavedDataset``'s order, `--dataset a+b` in the text-to-image trainer,
/// and the trainer caching a mixture whose parts come at different sizes.
final class InterleavedDatasetTests: XCTestCase {
    /// `count` captioned `side`×`side` RGB images, image `i` filled with `value + i / 100`, caption "`word` i".
    private func part(_ word: String, count: Int, side: Int = 32, value: Float = 0) -> TextToImageTestDataset {
        var values: [Float] = []
        for index in 0..<count { values += [Float](repeating: value + Float(index) / 100, count: 3 * side * side) }
        return TextToImageTestDataset(images: Tensor(values, shape: [count, 3, side, side]), captions: (0..<count).map { "\(word) \($0)" })
    }

    func testTakesThePartsInTurnAndTheLongerOnesRestAtTheEnd() throws {
        let mixture = InterleavedDataset(parts: [part("digit", count: 3), part("shirt", count: 5)], names: ["digits", "shirts"])
        XCTAssertEqual(mixture.count, 8)
        let captions = try (0..<mixture.count).map { try XCTUnwrap(mixture.example(at: $0).caption) }
        XCTAssertEqual(captions, ["digit 0", "shirt 0", "digit 1", "shirt 1", "digit 2", "shirt 2", "shirt 3", "shirt 4"])
        XCTAssertEqual(mixture.location(of: 6).part, 1)
        XCTAssertEqual(mixture.location(of: 6).index, 3)
        XCTAssertEqual(try mixture.example(at: 5).image.toArray()[0], 0.02, accuracy: 1e-6)
        XCTAssertEqual(mixture.source(of: 1), "shirts: example 0")
        XCTAssertEqual(mixture.classNames, [])
        let three = InterleavedDataset(parts: [part("a", count: 1), part("b", count: 2), part("c", count: 2)])
        XCTAssertEqual(try (0..<three.count).map { try three.example(at: $0).caption! }, ["a 0", "b 0", "c 0", "b 1", "c 1"])
    }

    func testTheTrainerMixesNamedDatasetsDeterministicallyAndLimitsTheMixture() throws {
        var options = TextToImageTrainingOptions()
        options.dataset = "captioned-mnist+captioned-tinted-fashion-mnist"
        options.maxTrainSamples = 10
        let first: Dataset, second: Dataset
        do {
            first = try TextToImageSetup.dataset(options)
            second = try TextToImageSetup.dataset(options)
        } catch DatasetError.notInstalled {
            throw XCTSkip("MNIST (make data) or Fashion-MNIST is not installed")
        }
        XCTAssertEqual(first.count, 10)
        var digits = 0, clothes = 0
        for index in 0..<first.count {
            let example = try first.example(at: index)
            let caption = try XCTUnwrap(example.caption)
            XCTAssertEqual(caption, try second.example(at: index).caption)
            XCTAssertEqual(example.image.toArray(), try second.example(at: index).image.toArray())
            if caption.hasPrefix("a handwritten digit ") {
                digits += 1
                XCTAssertEqual(index % 2, 0, "digits come first in every turn")
                XCTAssertEqual(example.image.shape, [3, 32, 32])
            } else {
                clothes += 1
                XCTAssertTrue(CaptionedTintedDataset.itemNames.contains { caption.contains($0) }, caption)
                XCTAssertEqual(example.image.shape, [3, 28, 28])
            }
        }
        XCTAssertEqual(digits, 5)
        XCTAssertEqual(clothes, 5)
        options.maxTrainSamples = nil
        options.dataset = "captioned-mnist+"
        XCTAssertThrowsError(try TextToImageSetup.dataset(options))
    }

    func testTheTrainerBringsEveryPartToItsResolution() throws {
        let mixture = InterleavedDataset(parts: [part("a red shirt", count: 3), part("a blue dress", count: 3, side: 28, value: 0.5)])
        let trainer = try TextToImageFixtures.trainer(TextToImageFixtures.options(outputDir: try temporaryFolderPath("t2i")),
                                                      dataset: mixture)
        XCTAssertEqual(trainer.latentCache.mean.shape[0], 6)
        XCTAssertEqual(trainer.captions, (0..<6).map { ($0 % 2 == 0 ? "a red shirt " : "a blue dress ") + "\($0 / 2)" })
        let resized = ImageTransforms.standard(size: 32, channels: 3)
        var unused = RandomGenerator(seed: 0)
        let image = resized.apply(try mixture.example(at: 1).image, generator: &unused)
        XCTAssertEqual(image.shape, [3, 32, 32])
        let direct = noGrad { trainer.pipeline.vae.encode(Tensor.stack([image], axis: 0)).mean }
        let cached = trainer.latentCache.mean.narrowed(axis: 0, start: 1, length: 1).toArray()
        XCTAssertEqual(cached.count, direct.toArray().count)
        XCTAssertLessThan(zip(cached, direct.toArray()).map { abs($0 - $1) }.max() ?? 1, 1e-4, "the 28×28 image was resized to 32×32 before encoding")
    }
}
