import Foundation
import Tensors

/// Measures whether a text-to-image model draws the digit it is asked for: for
/// every prompt "a handwritten digit {zero…nine}" (``CaptionedMNISTDataset/caption(label:)``),
/// `samplesPerPrompt` samples at each guidance scale, and the share that an
/// independently trained clean MNIST classifier (grey 28×28,
/// `diffuse train-classifier --dataset mnist --clean`) reads as the prompted digit.
///
/// The classifier sees each sample in two ways (``Reading``), because a model
/// that never learnt digits draws coloured Fashion-MNIST-like pictures that plain
/// luminance would show as grey shapes on grey:
/// - ``Reading/luminance``: the sample's luma (0.299 R + 0.587 G + 0.114 B), as
///   grey-on-black MNIST is;
/// - ``Reading/greyLevels``: the sample turned back into grey levels between its
///   estimated background and foreground colours (``CaptionedTintedEvaluation/greyLevels(_:colors:side:)``),
///   which is luminance again for a grey digit on black, and the most favourable
///   reading of a tinted picture.
public enum HandwrittenDigitEvaluation {
    /// How a sample becomes the judge's grey 28×28 input.
    public enum Reading: String, CaseIterable, Sendable {
        /// Luma, resized to 28×28.
        case luminance
        /// The inverse of a tint: 0 at the estimated background colour, 1 at the foreground's.
        case greyLevels = "grey_levels"
    }

    /// The side of the judge's input.
    public static let judgeSide = 28

    /// The ten prompts, by digit.
    public static var prompts: [String] { CaptionedMNISTDataset.digitNames.indices.map { CaptionedMNISTDataset.caption(label: $0) } }

    /// How the judge read the samples of one guidance scale (one reading).
    public struct Score: Equatable, Sendable {
        /// `confusion[prompted][read]`: samples of the prompted digit the judge read as `read`.
        public var confusion = [[Int]](repeating: [Int](repeating: 0, count: 10), count: 10)

        public init() {}

        /// Samples judged.
        public var count: Int { confusion.reduce(0) { $0 + $1.reduce(0, +) } }
        /// Samples read as their prompted digit.
        public var correct: Int { (0..<10).reduce(0) { $0 + confusion[$1][$1] } }
        /// `correct / count` (nan when empty).
        public var rate: Double { count == 0 ? .nan : Double(correct) / Double(count) }
        /// The share of the prompted digit's samples read as it (nan when it has none).
        public func rate(digit: Int) -> Double {
            let total = confusion[digit].reduce(0, +)
            return total == 0 ? .nan : Double(confusion[digit][digit]) / Double(total)
        }
        /// How many samples, over all prompts, the judge read as each digit.
        public var readCounts: [Int] { (0..<10).map { read in confusion.reduce(0) { $0 + $1[read] } } }

        mutating func add(prompted: Int, read: Int) { confusion[prompted][read] += 1 }
    }

    /// The scores at one guidance scale.
    public struct Result {
        public var guidanceScale: Double
        /// The score of each reading.
        public var scores: [Reading: Score] = [:]
        /// The samples, `[10 × samplesPerPrompt, 3, H, W]` in [-1, 1], digit-major.
        public var samples: Tensor
        public var seconds: Double

        /// The score of `reading` (empty when it was not measured).
        public func score(_ reading: Reading) -> Score { scores[reading] ?? Score() }
    }

    /// The judge's input for `images` (`[N, 3, H, W]` in [-1, 1]): `[N, 1, 28, 28]` in [-1, 1].
    public static func judgeInput(_ images: Tensor, reading: Reading) -> Tensor {
        switch reading {
        case .luminance: return luminance(images, side: judgeSide)
        case .greyLevels:
            return CaptionedTintedEvaluation.greyLevels(images, colors: TintEstimation.colors(of: images), side: judgeSide)
        }
    }

    /// Luma of `images` (`[N, 3, H, W]` in [-1, 1], clamped there), resized with antialiasing: `[N, 1, side, side]`.
    public static func luminance(_ images: Tensor, side: Int) -> Tensor {
        precondition(images.rank == 4 && images.shape[1] == 3, "HandwrittenDigitEvaluation: images must be [N, 3, H, W], got \(images.shape)")
        let (count, height, width) = (images.shape[0], images.shape[2], images.shape[3])
        let plane = height * width
        let values = noGrad { images.clamped(min: -1, max: 1) }.toArray()
        var result: [Float] = []
        result.reserveCapacity(count * side * side)
        for index in 0..<count {
            let base = index * 3 * plane
            let luma = (0..<plane).map { position in
                0.299 * values[base + position] + 0.587 * values[base + plane + position] + 0.114 * values[base + 2 * plane + position]
            }
            result += height == side && width == side ? luma
                : Resampling.resize(luma, planes: 1, height: height, width: width, newHeight: side, newWidth: side, antialias: true)
        }
        return Tensor(result, shape: [count, 1, side, side])
    }

    /// What the judge reads in `images` under every reading.
    public static func judge(_ images: Tensor, classifier: NoiseAwareClassifier) -> [Reading: [Int]] {
        Dictionary(uniqueKeysWithValues: Reading.allCases.map { ($0, classifier.predict(judgeInput(images, reading: $0), timestep: 0)) })
    }

    /// Generates `samplesPerPrompt` images of every digit at every scale (with
    /// ``CaptionedTintedEvaluation/samples(_:samplesPerPrompt:guidanceScale:request:pipeline:onPrompt:)``: the same noise
    /// for a digit at every scale, and before and after a LoRA) and judges them.
    /// - Parameter progress: called after every prompt with (done, total).
    public static func run(pipeline: StableDiffusionPipeline, classifier: NoiseAwareClassifier, samplesPerPrompt: Int,
                           guidanceScales: [Double], request: StableDiffusionRequest,
                           progress: ((Int, Int) -> Void)? = nil) throws -> [Result] {
        let prompts = self.prompts
        var results: [Result] = []
        for (scaleIndex, scale) in guidanceScales.enumerated() {
            let start = Date()
            var scores = Dictionary(uniqueKeysWithValues: Reading.allCases.map { ($0, Score()) })
            let samples = try CaptionedTintedEvaluation.samples(prompts, samplesPerPrompt: samplesPerPrompt, guidanceScale: scale,
                                                                request: request, pipeline: pipeline) { digit, batch in
                for (reading, labels) in judge(batch, classifier: classifier) {
                    for label in labels { scores[reading]?.add(prompted: digit, read: label) }
                }
                progress?(scaleIndex * prompts.count + digit + 1, guidanceScales.count * prompts.count)
            }
            results.append(Result(guidanceScale: scale, scores: scores, samples: samples, seconds: Date().timeIntervalSince(start)))
        }
        return results
    }
}

extension HandwrittenDigitEvaluation {
    /// `12.5%`, or `–` for nan.
    static func percent(_ value: Double) -> String { value.isNaN ? "–" : String(format: "%.1f%%", 100 * value) }

    /// A Markdown table: per scale, the share read as the prompted digit before and after, in both readings.
    public static func table(before: [Result], after: [Result]) -> [String] {
        var lines = ["| guidance | samples | before (luminance) | after (luminance) | before (grey levels) | after (grey levels) |",
                     "|---|---|---|---|---|---|"]
        for (first, second) in zip(before, after) {
            lines.append("| \(CaptionedTintedEvaluation.scaleName(first.guidanceScale)) | \(first.score(.luminance).count) | "
                         + "\(percent(first.score(.luminance).rate)) | \(percent(second.score(.luminance).rate)) | "
                         + "\(percent(first.score(.greyLevels).rate)) | \(percent(second.score(.greyLevels).rate)) |")
        }
        return lines
    }

    /// A Markdown table: per digit (rows) and scale (columns), the share read as it before → after (one reading).
    public static func digitTable(before: [Result], after: [Result], reading: Reading) -> [String] {
        let scales = zip(before, after).map { $0 }
        var lines = ["| digit | " + scales.map { "guidance \(CaptionedTintedEvaluation.scaleName($0.0.guidanceScale)): before → after" }.joined(separator: " | ") + " |",
                     "|---|" + String(repeating: "---|", count: scales.count)]
        for digit in 0..<10 {
            lines.append("| \(digit) | " + scales.map { first, second in
                "\(percent(first.score(reading).rate(digit: digit))) → \(percent(second.score(reading).rate(digit: digit)))"
            }.joined(separator: " | ") + " |")
        }
        return lines
    }

    /// One result as a JSON object: per reading, the rate, the per-digit rates, the confusion matrix and what was read.
    public static func jsonObject(_ result: Result) -> [String: Any] {
        var object: [String: Any] = ["guidance_scale": result.guidanceScale, "seconds": result.seconds]
        for reading in Reading.allCases {
            let score = result.score(reading)
            object[reading.rawValue] = [
                "count": score.count, "correct": score.correct, "rate": score.rate.isNaN ? 0 : score.rate,
                "per_digit": (0..<10).map { score.rate(digit: $0).isNaN ? 0 : score.rate(digit: $0) },
                "read_counts": score.readCounts, "confusion": score.confusion,
            ] as [String: Any]
        }
        return object
    }
}
