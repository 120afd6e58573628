import ArgumentParser
import Diffusion
import Foundation

/// `diffuse evaluate-lora-digits`: wiring from flags to ``LoRADigitsEvaluation``.
struct EvaluateLoRADigits: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evaluate-lora-digits",
        abstract: "Score a digits LoRA: prompted digits read by an MNIST judge before and after, and the Fashion prompts after.",
        discussion: """
        For "a handwritten digit zero" … "nine", --samples images each at every --guidance-scale, from the pipeline \
        as it is and with --lora loaded and fused (the same noise before and after); a clean MNIST classifier \
        (`diffuse train-classifier --dataset mnist --clean`) reads each. With --fashion-judge, the text demo's 40 \
        Fashion prompts are scored with the LoRA too, beside --fashion-baseline (the demo's evaluation.json) or, \
        without it, beside the base pipeline measured here. Writes grids (one row per digit) and evaluation.json.
        """)

    @Argument(help: ArgumentHelp("The Stable Diffusion pipeline folder.", valueName: "pipeline")) var pipeline: String
    @Option(help: ArgumentHelp("The LoRA file and its scale.", valueName: "file[:scale]")) var lora: String
    @Option(help: ArgumentHelp("A clean MNIST classifier folder.", valueName: "folder")) var judge: String
    @Option(help: ArgumentHelp("A clean Fashion-MNIST classifier folder (scores the Fashion prompts).", valueName: "folder")) var fashionJudge: String?
    @Option(help: ArgumentHelp("The base pipeline's evaluation.json from `diffuse demo --text --evaluate`.", valueName: "file"))
    var fashionBaseline: String?
    @Option(help: "Grids and evaluation.json go here.") var outputDir = "output/lora-digits"
    @Option(help: "Images per digit prompt.") var samples = 16
    @Option(help: "Images per Fashion prompt.") var fashionSamples = 16
    @Option(help: "A classifier-free guidance scale (repeatable; default 1, 3 and 7.5).") var guidanceScale: [Double] = []
    @Option(help: "DPM-Solver++ steps.") var steps = 20
    @Option(help: "MNIST test digits the judge reads first, made 32×32 RGB as the samples are (0: none).") var referenceCount = 1000
    @Option(help: "Seed (the samples are drawn with seed + 1, as the text demo's).") var seed: UInt64 = 0

    func run() throws {
        try CommandFailure.report {
            guard let request = LoRARequest(argument: lora) else { throw ValidationError("--lora \(lora): give FILE or FILE:SCALE") }
            var options = LoRADigitsEvaluation.Options(pipeline: pipeline, lora: request.path, digitJudge: judge)
            options.loraScale = request.scale
            options.fashionJudge = fashionJudge
            options.fashionBaseline = fashionBaseline
            options.outputDir = outputDir
            options.digitSamples = samples
            options.fashionSamples = fashionSamples
            if !guidanceScale.isEmpty { options.guidanceScales = guidanceScale }
            options.samplingSteps = steps
            options.seed = seed
            options.referenceCount = referenceCount
            let outcome = try LoRADigitsEvaluation.run(options)
            outcome.reportLines.forEach { print($0) }
        }
    }
}
