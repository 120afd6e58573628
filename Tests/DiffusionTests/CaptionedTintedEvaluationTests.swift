import Foundation
import NN
import Tensors
import XCTest

@testable import Diffusion

final class CaptionedTintedEvaluationTests: XCTestCase {
    /// 400 grey 8×8 images with labels 0…9: a bright square on black, a different square per label.
    func greyBase() -> InMemoryDataset {
        let count = 400, side = 8
        var values = [Float](repeating: -1, count: count * side * side)
        for index in 0..<count {
            let label = index % 10
            for y in 2..<6 { for x in (label % 4)..<(label % 4 + 4) { values[index * side * side + y * side + x] = 1 } }
        }
        return InMemoryDataset(images: Tensor(values, shape: [count, 1, side, side]), labels: (0..<count).map { $0 % 10 },
                               classNames: CaptionedTintedDataset.itemNames)
    }

    func testHeldOutPairsNeverAppearAndLeaveOtherExamplesAlone() throws {
        let base = greyBase()
        let plain = CaptionedTintedDataset(base: base, seed: 3, itemNames: CaptionedTintedDataset.itemNames)
        let held = CaptionedTintedDataset(base: base, seed: 3, itemNames: CaptionedTintedDataset.itemNames,
                                          heldOutPairs: CaptionedTintedDataset.demoHeldOutPairs)
        var moved = 0
        for index in 0..<base.count {
            let before = try plain.description(of: index), after = try held.description(of: index)
            let pair = CaptionedTintedDataset.ColoredItem(color: before.foreground, label: before.label)
            XCTAssertFalse(CaptionedTintedDataset.demoHeldOutPairs.contains(.init(color: after.foreground, label: after.label)),
                           "example \(index) shows a held-out pair: \(after.caption)")
            if CaptionedTintedDataset.demoHeldOutPairs.contains(pair) {
                moved += 1
                XCTAssertNotEqual(after.foreground, before.foreground)
                XCTAssertNotEqual(after.background, after.foreground)
                XCTAssertFalse(after.caption.contains("\(before.foreground.name) \(before.item)"))
            } else {
                XCTAssertEqual(after, before, "example \(index) changed though its pair is not held out")
            }
        }
        XCTAssertGreaterThan(moved, 0, "the test data never drew a held-out pair, so it checks nothing")
    }

    func testJudgesRecoverTheColoursAndTheGreyImageOfTintedExamples() throws {
        let base = greyBase()
        let dataset = CaptionedTintedDataset(base: base, seed: 1, colorJitter: 0, itemNames: CaptionedTintedDataset.itemNames)
        var images: [Float] = []
        var descriptions: [CaptionedTintedDataset.Description] = []
        for index in 0..<40 {
            images += try dataset.example(at: index).image.toArray()
            descriptions.append(try dataset.description(of: index))
        }
        let batch = Tensor(images, shape: [40, 3, 8, 8])
        let colours = TintEstimation.colors(of: batch)
        for (colour, description) in zip(colours, descriptions) {
            XCTAssertEqual(NamedColor.nearest(to: colour.foreground), description.foreground)
            XCTAssertEqual(NamedColor.nearest(to: colour.background), description.background)
        }
        let grey = CaptionedTintedEvaluation.greyLevels(batch, colors: colours, side: 8).toArray()
        let original = Array(base.images.toArray()[0..<(40 * 64)])
        let worst = zip(grey, original).map { abs($0 - $1) }.max() ?? 1
        XCTAssertLessThan(worst, 1e-3, "grey levels are the inverse of the tint")
    }

    func testPromptsCoverEveryItemAndColourAndMarkTheHeldOutPairs() {
        let colours: [NamedColor] = [.red, .green, .blue, .yellow]
        let prompts = CaptionedTintedEvaluation.prompts(colors: colours, heldOut: CaptionedTintedDataset.demoHeldOutPairs)
        XCTAssertEqual(prompts.count, 40)
        XCTAssertEqual(prompts.filter(\.heldOut).count, 4)
        XCTAssertTrue(prompts.allSatisfy { $0.foreground != $0.background })
        XCTAssertEqual(prompts.first { $0.label == 7 && $0.foreground == .red }?.text, "a red sneaker on a green background")
        XCTAssertTrue(prompts.first { $0.label == 7 && $0.foreground == .red }!.heldOut)
    }
}

extension CaptionedTintedEvaluationTests {
    /// The reference judges each real image against its own colours and label: with no jitter every colour is
    /// right; a random VAE's reconstructions lose them (so the two rows are computed from different images).
    func testReferenceScoresRealImagesAgainstTheirOwnDescriptions() throws {
        let dataset = CaptionedTintedDataset(base: greyBase(), seed: 5, colorJitter: 0, itemNames: CaptionedTintedDataset.itemNames)
        var classifierConfiguration = NoiseAwareClassifierConfiguration()
        classifierConfiguration.inChannels = 1
        classifierConfiguration.sampleSize = 28
        classifierConfiguration.blockOutChannels = [8, 16]
        classifierConfiguration.normGroupCount = 4
        classifierConfiguration.classNames = CaptionedTintedDataset.itemNames
        Initialization.seed(3)
        let classifier = try NoiseAwareClassifier(configuration: classifierConfiguration)
        var vaeConfiguration = AutoencoderKLConfiguration()
        vaeConfiguration.blockOutChannels = [8, 16]
        vaeConfiguration.downBlockTypes = [.downEncoderBlock, .downEncoderBlock]
        vaeConfiguration.upBlockTypes = [.upDecoderBlock, .upDecoderBlock]
        vaeConfiguration.normGroupCount = 4
        let vae = try AutoencoderKL(configuration: vaeConfiguration)
        let reference = try CaptionedTintedEvaluation.reference(classifier: classifier, vae: vae, resolution: 8, dataset: dataset,
                                                                batchSize: 64)
        XCTAssertEqual(reference.testImages.count, 400)
        XCTAssertEqual(reference.reconstructions.count, 400)
        XCTAssertEqual(reference.testImages.foregroundRate, 1)
        XCTAssertEqual(reference.testImages.backgroundRate, 1)
        XCTAssertLessThan(reference.reconstructions.backgroundRate, 0.5, "a random VAE cannot keep the colours")
        let rows = CaptionedTintedEvaluation.tableRows(reference)
        XCTAssertEqual(rows.count, 2)
        XCTAssertTrue(rows[0].contains("| real test images | 400 |") && rows[0].contains("100.0%"), rows[0])
    }
}
