import Foundation
import Tensors

/// `diffuse evaluate-lora-digits`: what a LoRA trained on ``CaptionedMNISTDataset``
/// taught a small Stable Diffusion, and what it cost.
///
/// 1. ``HandwrittenDigitEvaluation`` on the pipeline as it is (before) and with the
///    LoRA loaded and fused (after), the same noise for every digit before and after;
/// 2. with a Fashion-MNIST judge, ``CaptionedTintedEvaluation`` of the text demo's
///    prompts with the LoRA, beside the base pipeline's scores (read from the text
///    demo's `evaluation.json`, or measured here when none is given).
///
/// Generation settings are the text demo's (DPM-Solver++, 20 steps, seed + 1), so the
/// Fashion scores before and after compare like with like.
public enum LoRADigitsEvaluation {
    /// What to evaluate.
    public struct Options: Sendable {
        /// The Stable Diffusion pipeline folder (the text demo's `pipeline/`).
        public var pipeline: String
        /// The LoRA file (`pytorch_lora_weights.safetensors`) and its scale.
        public var lora: String
        public var loraScale: Float = 1
        /// A clean MNIST classifier folder.
        public var digitJudge: String
        /// A clean Fashion-MNIST classifier folder (nil: no Fashion evaluation).
        public var fashionJudge: String?
        /// The base pipeline's Fashion evaluation (`evaluation.json` of `diffuse demo --text --evaluate`);
        /// nil: measured here before the LoRA is loaded.
        public var fashionBaseline: String?
        /// Where grids and `evaluation.json` go.
        public var outputDir = "output/lora-digits"
        /// Samples per digit, and per Fashion prompt.
        public var digitSamples = 16
        public var fashionSamples = 16
        public var guidanceScales = [1.0, 3.0, 7.5]
        /// DPM-Solver++ steps.
        public var samplingSteps = 20
        /// Generation seed (the text demo draws with seed + 1).
        public var seed: UInt64 = 0
        /// The Fashion prompts' colours and held-out pairs (the text demo's).
        public var fashionColors: [NamedColor] = [.red, .green, .blue, .yellow]
        public var heldOutPairs = CaptionedTintedDataset.demoHeldOutPairs
        /// MNIST test images (``CaptionedMNISTDataset``, 32×32 RGB) the judge reads first, through the same
        /// conversions as the samples: its accuracy on real digits at the samples' size (0: none).
        public var referenceCount = 1000

        public init(pipeline: String, lora: String, digitJudge: String) {
            self.pipeline = pipeline
            self.lora = lora
            self.digitJudge = digitJudge
        }

        func path(_ name: String) -> String { (outputDir as NSString).appendingPathComponent(name) }
    }

    /// The Fashion rates of all prompts at one scale.
    public struct FashionRates: Equatable, Sendable {
        public var guidanceScale: Double
        public var item: Double, foreground: Double, background: Double, all: Double
    }

    /// What the evaluation found.
    public struct Outcome {
        /// The judge on real captioned MNIST test digits, per reading (empty when not measured).
        public var reference: [HandwrittenDigitEvaluation.Reading: HandwrittenDigitEvaluation.Score] = [:]
        public var before: [HandwrittenDigitEvaluation.Result] = []
        public var after: [HandwrittenDigitEvaluation.Result] = []
        /// The Fashion prompts' rates without and with the LoRA (empty without a Fashion judge).
        public var fashionBefore: [FashionRates] = []
        public var fashionAfter: [FashionRates] = []
        /// Where the Fashion rates before came from.
        public var fashionBaselineSource = ""
        /// Each phase and its seconds.
        public var phases: [(name: String, seconds: Double)] = []
        /// The files written.
        public var files: [String] = []

        /// What to tell a person (Markdown tables).
        public var reportLines: [String] {
            var lines = phases.map { $0.name.padding(toLength: 22, withPad: " ", startingAt: 0) + String(format: " %6.0f s", $0.seconds) }
            for reading in HandwrittenDigitEvaluation.Reading.allCases {
                if let score = reference[reading] {
                    lines.append("judge on \(score.count) real MNIST test digits at 32×32 RGB, \(reading.rawValue) reading: "
                                 + HandwrittenDigitEvaluation.percent(score.rate))
                }
            }
            lines += ["", "Share of samples the MNIST judge reads as the prompted digit (chance 10%):", ""]
            lines += HandwrittenDigitEvaluation.table(before: before, after: after)
            lines += ["", "Per digit (luminance reading):", ""]
            lines += HandwrittenDigitEvaluation.digitTable(before: before, after: after, reading: .luminance)
            if !fashionAfter.isEmpty {
                lines += ["", "Fashion prompts, all 40, before (\(fashionBaselineSource)) → after the LoRA:", ""]
                lines += LoRADigitsEvaluation.fashionTable(before: fashionBefore, after: fashionAfter)
            }
            lines += [""] + files.map { "wrote \($0)" }
            return lines
        }
    }

    /// Runs the evaluation; `message` receives progress lines.
    public static func run(_ options: Options, message: @escaping (String) -> Void = { print($0) }) throws -> Outcome {
        var outcome = Outcome()
        try FileManager.default.createDirectory(atPath: options.outputDir, withIntermediateDirectories: true)
        let pipeline = try StableDiffusionPipeline.load(URL(fileURLWithPath: options.pipeline))
        let digitJudge = try NoiseAwareClassifier.load(folder: URL(fileURLWithPath: options.digitJudge))
        let fashionJudge = try options.fashionJudge.map { try NoiseAwareClassifier.load(folder: URL(fileURLWithPath: $0)) }
        var request = StableDiffusionRequest(pipeline: options.pipeline, prompt: "")
        request.steps = options.samplingSteps
        request.scheduler = SchedulerKind.dpmSolverMultistep.rawValue
        request.seed = options.seed &+ 1
        let fashionPrompts = CaptionedTintedEvaluation.prompts(colors: options.fashionColors, heldOut: options.heldOutPairs)
        func timed<T>(_ name: String, _ body: () throws -> T) rethrows -> T {
            message("— \(name) —")
            let start = Date()
            let value = try body()
            outcome.phases.append((name, Date().timeIntervalSince(start)))
            return value
        }
        func progress(_ done: Int, _ total: Int) { if done % 10 == 0 || done == total { message("  \(done)/\(total) prompts") } }

        if options.referenceCount > 0 {
            do {
                let digits = try CaptionedMNISTDataset.mnist(training: false, limit: options.referenceCount, size: pipeline.defaultSize.height)
                outcome.reference = try judgeReference(digits, classifier: digitJudge)
            } catch DatasetError.notInstalled(_, let hint) {
                message("no reference accuracy: \(hint)")
            }
        }
        let before = try timed("digits before") {
            try HandwrittenDigitEvaluation.run(pipeline: pipeline, classifier: digitJudge, samplesPerPrompt: options.digitSamples,
                                               guidanceScales: options.guidanceScales, request: request, progress: progress)
        }
        outcome.before = before
        if let fashionJudge {
            if let baseline = options.fashionBaseline {
                outcome.fashionBefore = try readFashionRates(baseline)
                outcome.fashionBaselineSource = baseline
            } else {
                let results = try timed("fashion before") {
                    try CaptionedTintedEvaluation.run(pipeline: pipeline, classifier: fashionJudge, prompts: fashionPrompts,
                                                      samplesPerPrompt: options.fashionSamples, guidanceScales: options.guidanceScales,
                                                      request: request, progress: progress)
                }
                outcome.fashionBefore = results.map(fashionRates)
                outcome.fashionBaselineSource = "measured in this run"
                try write(CaptionedTintedEvaluation.json(results, prompts: fashionPrompts), to: options.path("fashion-before.json"), outcome: &outcome)
            }
        }

        let report = try pipeline.loadLoRA(path: options.lora, scale: options.loraScale, name: "digits")
        if let warning = report.warning { message("warning: " + warning) }
        pipeline.fuseLoRA()
        let after = try timed("digits after") {
            try HandwrittenDigitEvaluation.run(pipeline: pipeline, classifier: digitJudge, samplesPerPrompt: options.digitSamples,
                                               guidanceScales: options.guidanceScales, request: request, progress: progress)
        }
        outcome.after = after
        for (stage, results) in [("before", outcome.before), ("after", outcome.after)] {
            for result in results {
                let path = options.path("digits-\(stage)-scale-\(CaptionedTintedEvaluation.scaleName(result.guidanceScale)).png")
                try PNG.write(makeGrid(images: result.samples, columns: options.digitSamples), to: path)
                outcome.files.append(path)
            }
        }
        var fashionAfterResults: [CaptionedTintedEvaluation.Result] = []
        if let fashionJudge {
            fashionAfterResults = try timed("fashion after") {
                try CaptionedTintedEvaluation.run(pipeline: pipeline, classifier: fashionJudge, prompts: fashionPrompts,
                                                  samplesPerPrompt: options.fashionSamples, guidanceScales: options.guidanceScales,
                                                  request: request, progress: progress)
            }
            outcome.fashionAfter = fashionAfterResults.map(fashionRates)
            try write(CaptionedTintedEvaluation.json(fashionAfterResults, prompts: fashionPrompts), to: options.path("fashion-after.json"),
                      outcome: &outcome)
            for result in fashionAfterResults {
                let path = options.path("fashion-after-scale-\(CaptionedTintedEvaluation.scaleName(result.guidanceScale)).png")
                try PNG.write(makeGrid(images: result.samples, columns: options.fashionSamples), to: path)
                outcome.files.append(path)
            }
        }
        try write(json(outcome, options: options), to: options.path("evaluation.json"), outcome: &outcome)
        return outcome
    }

    /// The judge's reading of real digits (`dataset` examples, 3 × H × W), as a score per reading.
    static func judgeReference(_ dataset: Dataset, classifier: NoiseAwareClassifier) throws
        -> [HandwrittenDigitEvaluation.Reading: HandwrittenDigitEvaluation.Score] {
        var scores: [HandwrittenDigitEvaluation.Reading: HandwrittenDigitEvaluation.Score] = [:]
        var start = 0
        while start < dataset.count {
            let end = Swift.min(dataset.count, start + 100)
            let examples = try (start..<end).map { try dataset.example(at: $0) }
            let batch = Tensor.stack(examples.map(\.image), axis: 0)
            for (reading, labels) in HandwrittenDigitEvaluation.judge(batch, classifier: classifier) {
                for (example, label) in zip(examples, labels) { scores[reading, default: .init()].add(prompted: example.label ?? 0, read: label) }
            }
            start = end
        }
        return scores
    }

    private static func write(_ text: String, to path: String, outcome: inout Outcome) throws {
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        outcome.files.append(path)
    }

    static func fashionRates(_ result: CaptionedTintedEvaluation.Result) -> FashionRates {
        let score = result.overall
        return FashionRates(guidanceScale: result.guidanceScale, item: score.itemRate, foreground: score.foregroundRate,
                            background: score.backgroundRate, all: score.allRate)
    }

    /// The overall rates of every scale in an `evaluation.json` written by ``CaptionedTintedEvaluation/json(_:prompts:)``.
    public static func readFashionRates(_ path: String) throws -> [FashionRates] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let results = object["results"] as? [[String: Any]] else {
            throw TrainingError.data("\(path) is not an evaluation.json of diffuse demo --text --evaluate (no \"results\")")
        }
        return try results.map { result in
            guard let scale = result["guidance_scale"] as? Double, let overall = result["overall"] as? [String: Any],
                  let item = overall["item"] as? Double, let foreground = overall["foreground"] as? Double,
                  let background = overall["background"] as? Double, let all = overall["all"] as? Double else {
                throw TrainingError.data("\(path): a result without guidance_scale and overall item/foreground/background/all rates")
            }
            return FashionRates(guidanceScale: scale, item: item, foreground: foreground, background: background, all: all)
        }
    }

    /// A Markdown table of the Fashion rates before → after, per scale present in both.
    public static func fashionTable(before: [FashionRates], after: [FashionRates]) -> [String] {
        var lines = ["| guidance | item (judge) | foreground colour | background colour | all three |", "|---|---|---|---|---|"]
        let percent = HandwrittenDigitEvaluation.percent
        for second in after {
            guard let first = before.first(where: { $0.guidanceScale == second.guidanceScale }) else { continue }
            lines.append("| \(CaptionedTintedEvaluation.scaleName(second.guidanceScale)) | \(percent(first.item)) → \(percent(second.item)) | "
                         + "\(percent(first.foreground)) → \(percent(second.foreground)) | \(percent(first.background)) → \(percent(second.background)) | "
                         + "\(percent(first.all)) → \(percent(second.all)) |")
        }
        return lines
    }

    static func json(_ outcome: Outcome, options: Options) throws -> String {
        func rates(_ list: [FashionRates]) -> [[String: Any]] {
            list.map { ["guidance_scale": $0.guidanceScale, "item": $0.item, "foreground": $0.foreground, "background": $0.background, "all": $0.all] }
        }
        let object: [String: Any] = [
            "pipeline": options.pipeline, "lora": options.lora, "lora_scale": Double(options.loraScale),
            "digit_prompts": HandwrittenDigitEvaluation.prompts, "samples_per_digit": options.digitSamples,
            "digits_before": outcome.before.map(HandwrittenDigitEvaluation.jsonObject),
            "digits_after": outcome.after.map(HandwrittenDigitEvaluation.jsonObject),
            "fashion_before": rates(outcome.fashionBefore), "fashion_before_source": outcome.fashionBaselineSource,
            "fashion_after": rates(outcome.fashionAfter),
            "judge_reference": Dictionary(uniqueKeysWithValues: outcome.reference.map { ($0.key.rawValue, ["count": $0.value.count, "rate": $0.value.rate]) }),
        ]
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}
