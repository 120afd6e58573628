import Foundation
import NN
import Tensors

/// The diffusion course's "from scratch" notebook (unit 1): a `BasicUNet`
/// learns to undo `corrupt(x, amount)` on MNIST, then the toy sampler walks
/// from uniform noise to digits.
///
/// As in the notebook: images in [0, 1], batch 128, Adam with learning rate
/// 1e-3, `amount ~ U(0, 1)` per image, MSE between the prediction and the
/// clean image, 3 epochs; a 5-step sampling figure (x and the prediction at
/// each step) and a 40-step grid of 64 samples.
public enum ToyTraining {
    /// The run's settings.
    public struct Options: Sendable {
        /// `mnist`, `fashion-mnist` or an image folder (nil: MNIST when fetched, else Fashion-MNIST).
        public var dataset: String?
        public var epochs = 3
        public var batchSize = 128
        public var learningRate = 1e-3
        /// Use only the first images of the dataset.
        public var limit: Int?
        public var seed: UInt64 = 0
        /// Sampler steps of the grid.
        public var samplingSteps = 40
        /// Samples in the grid.
        public var sampleCount = 64
        /// The grid PNG; the 5-step figure goes beside it with `-steps`.
        public var output = "toy.png"

        public init() {}
    }

    /// What the run produced.
    public struct Outcome: Sendable {
        public let dataset: String
        public let epochLosses: [Float]
        public let gridPath: String
        public let stepsPath: String
        public let seconds: Double
    }

    /// Trains and samples; `report` receives the notebook's lines ("Finished epoch …").
    public static func run(_ options: Options, report: (String) -> Void) throws -> Outcome {
        let start = Date()
        let name = options.dataset ?? (MNIST.isAvailable ? "mnist" : "fashion-mnist")
        if options.dataset == nil && name == "fashion-mnist" {
            report("MNIST is not fetched (run `make data`); using Fashion-MNIST")
        }
        let dataset = try Datasets.open(name, training: true, limit: options.limit)
        let loader = DataLoader(dataset: dataset, batchSize: options.batchSize, shuffle: true, seed: options.seed,
                                transform: ImageTransforms.standard(size: 28, channels: 1))
        Initialization.seed(options.seed)
        let network = BasicUNet(inChannels: 1, outChannels: 1)
        let optimizer = Adam(parameters: network.parameters(), learningRate: Float(options.learningRate))
        var generator = RandomGenerator(seed: options.seed &+ 1)
        report("BasicUNet, \(network.parameterCount) parameters; \(name), \(dataset.count) images, batch \(options.batchSize)")
        var epochLosses: [Float] = []
        for epoch in 0..<options.epochs {
            var losses: [Float] = []
            let epochStart = Date()
            while let batch = try loader.nextBatch() {
                let clean = noGrad { batch.images * 0.5 + 0.5 }
                let amount = Tensor.rand([clean.shape[0]], generator: &generator)
                let noisy = ToyDiffusion.corrupt(clean, amount: amount, generator: &generator)
                let loss = Tensor.mseLoss(network(noisy), clean)
                losses.append(loss.item)
                loss.backward()
                optimizer.step()
                optimizer.zeroGradients()
            }
            let average = losses.reduce(0, +) / Float(Swift.max(losses.count, 1))
            epochLosses.append(average)
            report(String(format: "Finished epoch %d. Average loss for this epoch: %.6f (%d batches, %.0f s)",
                          epoch, average, losses.count, Date().timeIntervalSince(epochStart)))
        }
        network.eval()
        let model: (Tensor, Float) -> Tensor = { sample, _ in network(sample) }

        // The notebook's figure: 5 steps from 8 noise images, x and the prediction at each step.
        var history: [Tensor] = []
        var predictions: [Tensor] = []
        let figureStart = Tensor.rand([8, 1, 28, 28], generator: &generator)
        let figureEnd = ToyDiffusion.sample(initial: figureStart, steps: 5, model: model) { step in
            history.append(step.sample)
            predictions.append(step.prediction)
        }
        history.append(figureEnd)
        predictions.append(figureEnd)
        // Rows: each step's x (left half) then its prediction; columns: the 8 images.
        let rows = zip(history, predictions).flatMap { [$0.0, $0.1] }
        let figure = noGrad { Tensor.concatenate(rows, axis: 0).clamped(min: 0, max: 1) * 2 - 1 }
        let stepsPath = URL(fileURLWithPath: options.output).deletingPathExtension().path + "-steps.png"
        try savePNG(figure, path: stepsPath, columns: 8)

        let start64 = Tensor.rand([options.sampleCount, 1, 28, 28], generator: &generator)
        let samples = ToyDiffusion.sample(initial: start64, steps: options.samplingSteps, model: model)
        try savePNG(noGrad { samples.clamped(min: 0, max: 1) * 2 - 1 }, path: options.output, columns: 8)
        return Outcome(dataset: name, epochLosses: epochLosses, gridPath: options.output, stepsPath: stepsPath,
                       seconds: Date().timeIntervalSince(start))
    }
}

extension MNIST {
    /// True when `make data` has put the MNIST files in place.
    public static var isAvailable: Bool { (try? dataset(training: true, limit: 1)) != nil }
}
