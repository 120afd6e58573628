import ArgumentParser
import Diffusion
import Foundation

/// `diffuse demo` (what `make demo` runs): wiring to `DemoRun`.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a small class-conditional model on Fashion-MNIST for a few minutes, then sample one row per class with classifier-free guidance.",
        discussion: "Needs the Debian package dataset-fashion-mnist (make demo installs it). Ctrl-C writes a checkpoint; --resume continues.")

    @Option(help: "Where the pipeline, checkpoints, samples and logs go.") var outputDir = "output/demo"
    @Option(help: "Training steps (batches of 64).") var steps = 600
    @Option(help: "Classifier-free guidance scale of the final grid.") var guidanceScale = 3.0
    @Flag(help: "Continue an interrupted demo from its latest checkpoint.") var resume = false
    @Flag(help: "No live progress line.") var noProgress = false

    func run() throws {
        var options = DemoRun.Options()
        options.outputDir = outputDir
        options.steps = steps
        options.guidanceScale = guidanceScale
        options.resume = resume
        try CommandFailure.report {
            let outcome = try DemoRun.run(options) { trainer in
                if noProgress { trainer.progressOutput = nil }
            }
            print("")
            outcome.reportLines.forEach { print($0) }
        }
    }
}
