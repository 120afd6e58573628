import ArgumentParser
import Diffusion
import Foundation

/// `diffuse toy`: wiring to `ToyTraining`.
struct Toy: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The course's \"diffusion from scratch\" notebook: BasicUNet learns to undo corrupt() on MNIST, then the toy sampler draws digits.",
        discussion: "Uses MNIST when `make data` has fetched it, else Fashion-MNIST. Prints each epoch's average loss and writes the 64-sample grid and the 5-step figure.")

    @Option(help: "mnist, fashion-mnist or an image folder (default: MNIST when fetched).") var dataset: String?
    @Option(help: "Epochs (the notebook: 3).") var epochs = 3
    @Option(help: "Batch size (the notebook: 128).") var batchSize = 128
    @Option(help: "Adam learning rate (the notebook: 1e-3).") var learningRate = 1e-3
    @Option(help: "Use only the first N training images.") var limit: Int?
    @Option(help: "Seed.") var seed: UInt64 = 0
    @Option(help: "Sampler steps of the grid (the notebook: 40).") var steps = 40
    @Option(name: .shortAndLong, help: "The grid PNG (the 5-step figure goes beside it as NAME-steps.png).") var output = "toy.png"

    func run() throws {
        var options = ToyTraining.Options()
        options.dataset = dataset
        options.epochs = epochs
        options.batchSize = batchSize
        options.learningRate = learningRate
        options.limit = limit
        options.seed = seed
        options.samplingSteps = steps
        options.output = output
        try CommandFailure.report {
            let outcome = try ToyTraining.run(options) { line in
                print(line)
                fflush(stdout)
            }
            print("grid:   \(outcome.gridPath)")
            print("steps:  \(outcome.stepsPath) (rows: x, prediction, for each of 5 steps)")
        }
    }
}
