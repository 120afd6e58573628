import Foundation
import Tensors

/// Measures whether a text-to-image model trained on captioned tinted
/// Fashion-MNIST draws what it is asked for: for prompts "a {colour} {item} on
/// a {colour} background", the share of samples that
/// - an independently trained clean Fashion-MNIST classifier (grey 28×28,
///   `diffuse train-classifier --clean`) reads as the prompted item,
/// - have the prompted foreground colour, and
/// - have the prompted background colour,
/// each split between colour–item pairs the training captions showed and pairs
/// held out of them (``CaptionedTintedDataset/heldOutPairs``).
///
/// Colours come from ``TintEstimation`` (border median = background, the pixels
/// far from it = foreground), mapped to the nearest ``NamedColor``. The item
/// classifier sees the sample turned back into a grey level: every pixel's
/// position between the two estimated colours, `g = (p − bg)·(fg − bg) / |fg − bg|²`
/// clamped to [0, 1] (the inverse of the dataset's tint), resized to 28×28.
public enum CaptionedTintedEvaluation {
    /// One prompt of the evaluation.
    public struct Prompt: Equatable, Sendable {
        /// The item's class label, and its foreground and background colours.
        public var label: Int, foreground: NamedColor, background: NamedColor
        /// True when the training data never showed this foreground colour on this item.
        public var heldOut: Bool
        /// "a red sneaker on a blue background".
        public var text: String {
            CaptionedTintedDataset.CaptionTemplate.foregroundOnBackground.caption(
                item: CaptionedTintedDataset.itemNames[label], foreground: foreground, background: background)
        }
    }

    /// Every item in every colour of `colors`, each on the next colour of the list as its background.
    public static func prompts(colors: [NamedColor], heldOut: Set<CaptionedTintedDataset.ColoredItem>) -> [Prompt] {
        precondition(colors.count >= 2, "CaptionedTintedEvaluation: at least two colours")
        var prompts: [Prompt] = []
        for label in CaptionedTintedDataset.itemNames.indices {
            for (index, foreground) in colors.enumerated() {
                let background = colors[(index + 1) % colors.count]
                prompts.append(Prompt(label: label, foreground: foreground, background: background,
                                      heldOut: heldOut.contains(.init(color: foreground, label: label))))
            }
        }
        return prompts
    }

    /// What the judges say about one sample.
    public struct Verdict: Equatable, Sendable {
        public var predictedLabel: Int
        public var foreground: NamedColor, background: NamedColor
    }

    /// Shares of samples judged right.
    public struct Score: Equatable, Sendable {
        public var count = 0
        public var item = 0, foreground = 0, background = 0, all = 0
        public var itemRate: Double { rate(item) }
        public var foregroundRate: Double { rate(foreground) }
        public var backgroundRate: Double { rate(background) }
        /// Item and both colours right.
        public var allRate: Double { rate(all) }
        private func rate(_ value: Int) -> Double { count == 0 ? .nan : Double(value) / Double(count) }

        mutating func add(_ verdict: Verdict, for prompt: Prompt) {
            let (item, foreground, background) = (verdict.predictedLabel == prompt.label, verdict.foreground == prompt.foreground,
                                                  verdict.background == prompt.background)
            count += 1
            self.item += item ? 1 : 0
            self.foreground += foreground ? 1 : 0
            self.background += background ? 1 : 0
            all += item && foreground && background ? 1 : 0
        }
    }

    /// The scores at one guidance scale.
    public struct Result {
        public var guidanceScale: Double
        /// Every prompt, the pairs seen in training, the held-out pairs.
        public var overall = Score(), seen = Score(), heldOut = Score()
        /// Per item label.
        public var perItem = [Score](repeating: Score(), count: CaptionedTintedDataset.itemNames.count)
        /// The samples, `[prompts × samplesPerPrompt, 3, H, W]` in [-1, 1], prompt-major.
        public var samples: Tensor
        public var seconds: Double
    }

    /// The verdicts on `images` (`[N, 3, H, W]` in [-1, 1]).
    public static func judge(_ images: Tensor, classifier: NoiseAwareClassifier) -> [Verdict] {
        let colours = TintEstimation.colors(of: images)
        let grey = greyLevels(images, colors: colours, side: 28)
        let labels = classifier.predict(grey, timestep: 0)
        return zip(labels, colours).map { label, colour in
            Verdict(predictedLabel: label, foreground: NamedColor.nearest(to: colour.foreground),
                    background: NamedColor.nearest(to: colour.background))
        }
    }

    /// Tinted images turned back into grey levels `[N, 1, side, side]` in [-1, 1] (0 = background, 1 = foreground).
    public static func greyLevels(_ images: Tensor, colors: [(foreground: [Float], background: [Float])], side: Int) -> Tensor {
        let (count, height, width) = (images.shape[0], images.shape[2], images.shape[3])
        let plane = height * width
        let values = noGrad { images.clamped(min: -1, max: 1) }.toArray().map { ($0 + 1) / 2 }
        var result: [Float] = []
        result.reserveCapacity(count * side * side)
        for index in 0..<count {
            let (foreground, background) = colors[index]
            let direction = zip(foreground, background).map { $0 - $1 }
            let length = direction.reduce(0) { $0 + $1 * $1 }
            var levels = [Float](repeating: 0, count: plane)
            if length > 1e-6 {
                for position in 0..<plane {
                    var dot: Float = 0
                    for channel in 0..<3 {
                        dot += (values[(index * 3 + channel) * plane + position] - background[channel]) * direction[channel]
                    }
                    levels[position] = Swift.min(1, Swift.max(0, dot / length))
                }
            }
            let resized = height == side && width == side ? levels
                : Resampling.resize(levels, planes: 1, height: height, width: width, newHeight: side, newWidth: side, antialias: true)
            result += resized.map { $0 * 2 - 1 }
        }
        return Tensor(result, shape: [count, 1, side, side])
    }

    /// Generates `samplesPerPrompt` images for every prompt at every scale and judges them.
    /// - Parameters:
    ///   - request: the generation settings (steps, scheduler, size, seed); its prompt, count and scale are set here.
    ///   - progress: called after every prompt with (done, total).
    public static func run(pipeline: StableDiffusionPipeline, classifier: NoiseAwareClassifier, prompts: [Prompt],
                           samplesPerPrompt: Int, guidanceScales: [Double], request: StableDiffusionRequest,
                           progress: ((Int, Int) -> Void)? = nil) throws -> [Result] {
        var results: [Result] = []
        let total = prompts.count * guidanceScales.count
        for (scaleIndex, scale) in guidanceScales.enumerated() {
            let start = Date()
            var result = Result(guidanceScale: scale, samples: Tensor.zeros([1]), seconds: 0)
            let samples = try samples(prompts.map(\.text), samplesPerPrompt: samplesPerPrompt, guidanceScale: scale, request: request,
                                      pipeline: pipeline) { promptIndex, batch in
                let prompt = prompts[promptIndex]
                for verdict in judge(batch, classifier: classifier) {
                    result.overall.add(verdict, for: prompt)
                    if prompt.heldOut { result.heldOut.add(verdict, for: prompt) } else { result.seen.add(verdict, for: prompt) }
                    result.perItem[prompt.label].add(verdict, for: prompt)
                }
                progress?(scaleIndex * prompts.count + promptIndex + 1, total)
            }
            result.samples = samples
            result.seconds = Date().timeIntervalSince(start)
            results.append(result)
        }
        return results
    }

    /// Generates `samplesPerPrompt` images of every prompt at one guidance scale, the same noise for a prompt at
    /// every scale (prompt `i` is seeded with `request.seed + i · 1,000,003`), different noise for different prompts.
    /// - Parameters:
    ///   - request: the generation settings (steps, scheduler, size, seed); its prompt, count and scale are set here.
    ///   - onPrompt: called after every prompt with its index and its images `[samplesPerPrompt, 3, H, W]` in [-1, 1].
    /// - Returns: every sample, `[prompts × samplesPerPrompt, 3, H, W]`, prompt-major.
    public static func samples(_ prompts: [String], samplesPerPrompt: Int, guidanceScale: Double, request: StableDiffusionRequest,
                               pipeline: StableDiffusionPipeline, onPrompt: ((Int, Tensor) throws -> Void)? = nil) throws -> Tensor {
        var pixels: [Float] = []
        var shape: [Int] = []
        for (promptIndex, prompt) in prompts.enumerated() {
            var single = request
            single.prompt = prompt
            single.count = samplesPerPrompt
            single.guidanceScale = guidanceScale
            single.seed = request.seed &+ UInt64(promptIndex) &* 1_000_003
            let images = try StableDiffusionRun.generate(single, pipeline: pipeline).images.map { $0.tensor() }
            shape = images[0].shape
            let batch = Tensor(images.flatMap { $0.toArray() }, shape: [images.count] + shape)
            try onPrompt?(promptIndex, batch)
            pixels += batch.toArray()
        }
        return Tensor(pixels, shape: [prompts.count * samplesPerPrompt] + shape)
    }
}

extension CaptionedTintedEvaluation {
    /// `1`, `3`, `7.5`: a scale as file names and tables show it.
    public static func scaleName(_ scale: Double) -> String {
        scale == scale.rounded() ? String(Int(scale)) : String(scale)
    }

    /// A Markdown table: one row per scale and group (all prompts, seen pairs, held-out pairs).
    public static func table(_ results: [Result]) -> [String] {
        var lines = ["| guidance | prompts | samples | item (judge) | foreground colour | background colour | all three |",
                     "|---|---|---|---|---|---|---|"]
        for result in results {
            for (name, score) in [("all", result.overall), ("seen pairs", result.seen), ("held-out pairs", result.heldOut)] where score.count > 0 {
                lines.append(tableRow(scaleName(result.guidanceScale), name, score))
            }
        }
        return lines
    }

    /// One row of ``table(_:)``: the first two columns, then the score's count and rates.
    static func tableRow(_ scale: String, _ name: String, _ score: Score) -> String {
        func percent(_ value: Double) -> String { value.isNaN ? "–" : String(format: "%.1f%%", 100 * value) }
        return "| \(scale) | \(name) | \(score.count) | \(percent(score.itemRate)) | "
            + "\(percent(score.foregroundRate)) | \(percent(score.backgroundRate)) | \(percent(score.allRate)) |"
    }

    /// The results as JSON (rates by scale and group, per item, and the prompts).
    public static func json(_ results: [Result], prompts: [Prompt], reference: Reference? = nil) throws -> String {
        var object: [String: Any] = [
            "prompts": prompts.map { ["text": $0.text, "held_out": $0.heldOut] },
            "results": results.map { result in
                ["guidance_scale": result.guidanceScale, "seconds": result.seconds, "overall": jsonScore(result.overall),
                 "seen": jsonScore(result.seen), "held_out": jsonScore(result.heldOut),
                 "per_item": Dictionary(uniqueKeysWithValues: result.perItem.enumerated().map { (CaptionedTintedDataset.itemNames[$0.offset], jsonScore($0.element)) })]
            },
        ]
        if let reference { object["reference"] = jsonObject(reference) }
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    /// A score as JSON values (a rate of no samples as 0).
    static func jsonScore(_ score: Score) -> [String: Any] {
        func rate(_ value: Double) -> Double { value.isNaN ? 0 : value }
        return ["count": score.count, "item": rate(score.itemRate), "foreground": rate(score.foregroundRate),
                "background": rate(score.backgroundRate), "all": rate(score.allRate)]
    }
}
