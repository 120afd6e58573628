import Foundation
import Tensors
import XCTest

@testable import Diffusion

final class HandwrittenDigitEvaluationTests: XCTestCase {
    func testScoresCountTheDigitsReadAsPrompted() {
        var score = HandwrittenDigitEvaluation.Score()
        XCTAssertTrue(score.rate.isNaN)
        // Digit 7: 3 of 4 read as 7, one as 1; digit 2: 1 of 2 read as 2, one as 7.
        for read in [7, 7, 1, 7] { score.add(prompted: 7, read: read) }
        for read in [2, 7] { score.add(prompted: 2, read: read) }
        XCTAssertEqual(score.count, 6)
        XCTAssertEqual(score.correct, 4)
        XCTAssertEqual(score.rate, 4.0 / 6, accuracy: 1e-12)
        XCTAssertEqual(score.rate(digit: 7), 0.75, accuracy: 1e-12)
        XCTAssertEqual(score.rate(digit: 2), 0.5, accuracy: 1e-12)
        XCTAssertTrue(score.rate(digit: 0).isNaN)
        XCTAssertEqual(score.readCounts, [0, 1, 1, 0, 0, 0, 0, 4, 0, 0])
    }

    func testBothReadingsGiveAGreyDigitOnBlackBackAtTwentyEight() {
        // A 28×28 grey "digit" (a bright cross on black) made 32×32 RGB as the captioned dataset makes it.
        var grey = [Float](repeating: -1, count: 28 * 28)
        for i in 6..<22 { grey[14 * 28 + i] = 1; grey[i * 28 + 14] = 1; grey[15 * 28 + i] = 1; grey[i * 28 + 13] = 1 }
        let base = InMemoryDataset(images: Tensor(grey, shape: [1, 1, 28, 28]), labels: [4], classNames: MNIST.classNames)
        let image = try! CaptionedMNISTDataset(base: base).example(at: 0).image
        let batch = image.reshaped([1, 3, 32, 32])
        for reading in HandwrittenDigitEvaluation.Reading.allCases {
            let input = HandwrittenDigitEvaluation.judgeInput(batch, reading: reading)
            XCTAssertEqual(input.shape, [1, 1, 28, 28])
            let values = input.toArray()
            // Up and down again blurs the edges a little; the digit and the background stay where they were.
            let mean = zip(values, grey).map { abs($0 - $1) }.reduce(0, +) / Float(values.count)
            XCTAssertLessThan(mean, 0.08, "\(reading): mean difference \(mean)")
            XCTAssertEqual(values[0], -1, accuracy: 1e-4, "\(reading): the corner is black")
            XCTAssertGreaterThan(values[14 * 28 + 10], 0.5, "\(reading): the stroke is bright")
        }
    }

    func testLuminanceWeighsTheChannelsAsLuma() {
        // One 2×2 image: red, green, blue, white pixels (channels in [0, 1] → [-1, 1]).
        let rgb: [[Float]] = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]
        var values = [Float](repeating: 0, count: 12)
        for (pixel, colour) in rgb.enumerated() { for channel in 0..<3 { values[channel * 4 + pixel] = colour[channel] * 2 - 1 } }
        let luma = HandwrittenDigitEvaluation.luminance(Tensor(values, shape: [1, 3, 2, 2]), side: 2).toArray()
        for (value, expected) in zip(luma, [0.299, 0.587, 0.114, 1.0] as [Float]) { XCTAssertEqual((value + 1) / 2, expected, accuracy: 1e-5) }
    }

    func testTablesPutBeforeBesideAfter() {
        func result(_ scale: Double, correct: Int) -> HandwrittenDigitEvaluation.Result {
            var score = HandwrittenDigitEvaluation.Score()
            for index in 0..<10 { score.add(prompted: index, read: index < correct ? index : (index + 1) % 10) }
            return .init(guidanceScale: scale, scores: [.luminance: score, .greyLevels: score], samples: Tensor.zeros([1]), seconds: 0)
        }
        let table = HandwrittenDigitEvaluation.table(before: [result(1, correct: 1), result(7.5, correct: 2)],
                                                     after: [result(1, correct: 8), result(7.5, correct: 10)])
        XCTAssertEqual(table.count, 4)
        XCTAssertEqual(table[2], "| 1 | 10 | 10.0% | 80.0% | 10.0% | 80.0% |")
        XCTAssertEqual(table[3], "| 7.5 | 10 | 20.0% | 100.0% | 20.0% | 100.0% |")
        let digits = HandwrittenDigitEvaluation.digitTable(before: [result(3, correct: 1)], after: [result(3, correct: 2)], reading: .luminance)
        XCTAssertEqual(digits.count, 12)
        XCTAssertEqual(digits[2], "| 0 | 100.0% → 100.0% |")
        XCTAssertEqual(digits[3], "| 1 | 0.0% → 100.0% |")
        XCTAssertEqual(digits[4], "| 2 | 0.0% → 0.0% |")
    }

    func testFashionRatesComeBackFromTheTextDemosEvaluationJSON() throws {
        var score = CaptionedTintedEvaluation.Score()
        let prompt = CaptionedTintedEvaluation.Prompt(label: 7, foreground: .red, background: .green, heldOut: false)
        score.add(.init(predictedLabel: 7, foreground: .red, background: .blue), for: prompt)
        score.add(.init(predictedLabel: 1, foreground: .red, background: .green), for: prompt)
        score.add(.init(predictedLabel: 7, foreground: .red, background: .green), for: prompt)
        score.add(.init(predictedLabel: 7, foreground: .blue, background: .green), for: prompt)
        var result = CaptionedTintedEvaluation.Result(guidanceScale: 3, samples: Tensor.zeros([1]), seconds: 1)
        result.overall = score
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("lora-digits-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try CaptionedTintedEvaluation.json([result], prompts: [prompt]).write(toFile: path, atomically: true, encoding: .utf8)
        let rates = try LoRADigitsEvaluation.readFashionRates(path)
        XCTAssertEqual(rates, [.init(guidanceScale: 3, item: 0.75, foreground: 0.75, background: 0.75, all: 0.25)])
        XCTAssertEqual(LoRADigitsEvaluation.fashionRates(result), rates[0])
        let after = LoRADigitsEvaluation.FashionRates(guidanceScale: 3, item: 0.5, foreground: 0.25, background: 1, all: 0)
        XCTAssertEqual(LoRADigitsEvaluation.fashionTable(before: rates, after: [after]).last,
                       "| 3 | 75.0% → 50.0% | 75.0% → 25.0% | 75.0% → 100.0% | 25.0% → 0.0% |")
        try "{}".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try LoRADigitsEvaluation.readFashionRates(path))
    }
}
