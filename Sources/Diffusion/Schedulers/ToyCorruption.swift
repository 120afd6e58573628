import Foundation
import Tensors

/// The "diffusion from scratch" toy pieces of the Hugging Face diffusion course
/// (unit 1): a corruption that mixes an image with uniform noise, and a sampler
/// that walks from noise toward the model's predictions.
public enum ToyDiffusion {
    /// `corrupt(x, amount)`: `x·(1 − amount) + noise·amount` with `noise` uniform
    /// in [0, 1) (the course's `torch.rand_like`); `amount` holds one value per
    /// example (shape [B]) and is broadcast over the other dimensions.
    public static func corrupt(_ x: Tensor, amount: Tensor, generator: inout RandomGenerator) -> Tensor {
        let noise = Tensor.rand(x.shape, generator: &generator)
        return corrupt(x, amount: amount, noise: noise)
    }

    /// `corrupt` with given noise (shaped like `x`).
    public static func corrupt(_ x: Tensor, amount: Tensor, noise: Tensor) -> Tensor {
        precondition(amount.count == x.shape[0], "corrupt: \(amount.count) amounts for a batch of \(x.shape[0])")
        precondition(noise.shape == x.shape, "corrupt: noise shape \(noise.shape) differs from x \(x.shape)")
        let perExample = amount.reshaped([x.shape[0]] + Array(repeating: 1, count: x.rank - 1))
        return x * (1 - perExample) + noise * perExample
    }

    /// One step of the toy sampler's history.
    public struct Step {
        /// 0-based step number.
        public let index: Int
        /// The sample the model saw.
        public let sample: Tensor
        /// The model's prediction of the clean image.
        public let prediction: Tensor
    }

    /// The course's sampler: for i in 0 ..< n, predict the clean image from x,
    /// then move x `1/(n − i)` of the way toward it
    /// (`x = x·(1 − mix) + prediction·mix`), so the last step lands on the prediction.
    ///
    /// The model receives the current sample and the noise amount `1 − i/n`
    /// (a model trained without a noise level, like the course's BasicUNet,
    /// ignores it). The model runs without gradients.
    public static func sample(initial: Tensor, steps: Int, model: (Tensor, Float) -> Tensor,
                              onStep: ((Step) -> Void)? = nil) -> Tensor {
        precondition(steps >= 1, "ToyDiffusion.sample: steps must be at least 1")
        var x = initial
        for index in 0..<steps {
            let amount = 1 - Float(index) / Float(steps)
            let prediction = noGrad { model(x, amount) }
            onStep?(Step(index: index, sample: x, prediction: prediction))
            let mix = 1 / Float(steps - index)
            x = noGrad { x * (1 - mix) + prediction * mix }
        }
        return x
    }
}
