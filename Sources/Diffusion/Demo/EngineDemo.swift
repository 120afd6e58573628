import Foundation
import Tensors

/// A small engine benchmark (used by the memory test): a small conv
/// denoiser learns to remove Gaussian noise from real Fashion-MNIST images,
/// and every step's forward and backward time is printed.
public enum EngineDemo {
    /// One step's numbers.
    public struct Step {
        public let index: Int
        public let loss: Float
        public let forwardMilliseconds: Double
        public let backwardMilliseconds: Double
    }

    /// Trains for `steps` steps on batches of `batchSize` images and returns the per-step numbers.
    public static func run(steps: Int = 30, batchSize: Int = 64, noiseLevel: Float = 0.5, learningRate: Float = 0.05,
                           images: Tensor, report: (Step) -> Void) -> [Step] {
        let network = TinyConvNet(channels: images.shape[1], seed: 0)
        var generator = RandomGenerator(seed: 1)
        var results: [Step] = []
        let available = images.shape[0]
        for step in 0..<steps {
            let start = (step * batchSize) % Swift.max(available - batchSize + 1, 1)
            let clean = images.narrowed(axis: 0, start: start, length: Swift.min(batchSize, available)).contiguous()
            let noise = Tensor.randn(clean.shape, generator: &generator)
            let noisy = clean + noise * noiseLevel
            let forwardStart = DispatchTime.now().uptimeNanoseconds
            let prediction = network(noisy)
            let loss = Tensor.mseLoss(prediction, noise)
            let backwardStart = DispatchTime.now().uptimeNanoseconds
            loss.backward()
            network.sgdStep(learningRate: learningRate)
            let end = DispatchTime.now().uptimeNanoseconds
            let record = Step(index: step + 1, loss: loss.item,
                              forwardMilliseconds: Double(backwardStart - forwardStart) / 1e6,
                              backwardMilliseconds: Double(end - backwardStart) / 1e6)
            results.append(record)
            report(record)
        }
        return results
    }
}
