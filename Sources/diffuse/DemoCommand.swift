import ArgumentParser
import Diffusion
import Foundation

/// `diffuse demo` (what `make demo` runs): wiring to `DemoRun`; `--text` (`make demo-text`): wiring to `TextDemoRun`.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a small class-conditional model on Fashion-MNIST for a few minutes, then sample one row per class with classifier-free guidance.",
        discussion: """
        Needs the Debian package dataset-fashion-mnist (make demo installs it). Ctrl-C writes a checkpoint; --resume continues.

        --text builds a small Stable Diffusion from scratch instead (make demo-text): a CLIP, a VAE with 4 latent \
        channels and a cross-attention UNet on captioned tinted Fashion-MNIST at 32×32, some colour–item pairs held out \
        of all training captions, then grids of every item in four colours at guidance scales 1, 3 and 7.5; with \
        --evaluate it trains a Fashion-MNIST judge and scores the samples (item, foreground and background colour). \
        Needs the CLIP vocabulary (make clip-vocab).
        """)

    @Option(help: "Where the pipeline, checkpoints, samples and logs go (default output/demo, or output/demo-text with --text).")
    var outputDir: String?
    @Option(help: "Training steps (batches of 64).") var steps = 600
    @Option(help: "Classifier-free guidance scale of the final grid.") var guidanceScale = 3.0
    @Flag(help: "Continue an interrupted demo from its latest checkpoint.") var resume = false
    @Flag(help: "No live progress line.") var noProgress = false

    @Flag(help: "The text-to-image demo: a small Stable Diffusion from scratch (CLIP, VAE, UNet).") var text = false
    @Option(help: "--text: CLIP steps (batches of 128).") var clipSteps: Int?
    @Option(help: "--text: VAE steps (batches of 32).") var vaeSteps: Int?
    @Option(help: "--text: UNet steps (batches of 64).") var unetSteps: Int?
    @Flag(help: "--text: train a Fashion-MNIST judge (when absent) and score the samples.") var evaluate = false
    @Option(help: ArgumentHelp("--text: judge the samples with this clean classifier folder (diffuse train-classifier --clean).", valueName: "dir"))
    var judge: String?

    func run() throws {
        try CommandFailure.report {
            if text { return try runText() }
            var options = DemoRun.Options()
            options.outputDir = outputDir ?? "output/demo"
            options.steps = steps
            options.guidanceScale = guidanceScale
            options.resume = resume
            let outcome = try DemoRun.run(options) { trainer in
                if noProgress { trainer.progressOutput = nil }
            }
            print("")
            outcome.reportLines.forEach { print($0) }
        }
    }

    private func runText() throws {
        var options = TextDemoRun.Options()
        options.outputDir = outputDir ?? "output/demo-text"
        if let clipSteps { options.clipSteps = clipSteps }
        if let vaeSteps { options.vaeSteps = vaeSteps }
        if let unetSteps { options.unetSteps = unetSteps }
        options.judge = judge
        options.trainJudge = evaluate && judge == nil
        options.resume = resume
        options.progress = !noProgress
        let outcome = try TextDemoRun.run(options) { print($0) }
        print("")
        outcome.reportLines.forEach { print($0) }
    }
}
