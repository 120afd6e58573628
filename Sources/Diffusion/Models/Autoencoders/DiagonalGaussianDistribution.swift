import Foundation
import Tensors

/// diffusers' `DiagonalGaussianDistribution`: the posterior an `AutoencoderKL`
/// encoder produces. Its moments `[batch, 2C, h, w]` split along the channels
/// into the mean and the log-variance, clamped to [−30, 20].
///
/// Every quantity is an ordinary tensor expression, so gradients flow from a
/// sample, the mode or the KL term back to the encoder.
public struct DiagonalGaussianDistribution {
    /// The encoder's output, `[batch, 2C, h, w]` (diffusers' `parameters`).
    public let moments: Tensor
    /// `[batch, C, h, w]`.
    public let mean: Tensor
    /// The clamped log-variance, `[batch, C, h, w]`.
    public let logVariance: Tensor
    /// `exp(logVariance / 2)` (zero when deterministic).
    public let standardDeviation: Tensor
    /// `exp(logVariance)` (zero when deterministic).
    public let variance: Tensor
    /// A point mass at the mean: `sample` is the mean, `kl` and `negativeLogLikelihood` are 0.
    public let isDeterministic: Bool

    public init(moments: Tensor, deterministic: Bool = false) {
        precondition(moments.rank >= 2 && moments.shape[1] % 2 == 0,
                     "DiagonalGaussianDistribution: moments must have an even channel count, got \(moments.shape)")
        self.moments = moments
        let parts = moments.chunked(2, axis: 1)
        mean = parts[0]
        logVariance = parts[1].clamped(min: -30, max: 20)
        isDeterministic = deterministic
        if deterministic {
            standardDeviation = Tensor.zeros(mean.shape)
            variance = Tensor.zeros(mean.shape)
        } else {
            standardDeviation = (logVariance * 0.5).exp()
            variance = logVariance.exp()
        }
    }

    /// `mean + standardDeviation · noise` for a standard normal `noise` of the mean's shape
    /// (the noise diffusers would draw, given explicitly).
    public func sample(noise: Tensor) -> Tensor {
        precondition(noise.shape == mean.shape, "DiagonalGaussianDistribution: noise \(noise.shape) must have the mean's shape \(mean.shape)")
        return mean + standardDeviation * noise
    }

    /// A sample with noise drawn from `generator` (Diffuse's generator: the same
    /// seed does not give PyTorch's numbers).
    public func sample(generator: inout RandomGenerator) -> Tensor {
        sample(noise: Tensor.randn(mean.shape, generator: &generator))
    }

    /// The mean.
    public func mode() -> Tensor { mean }

    /// The KL divergence to the standard normal (or to `other`), summed over
    /// channels, height and width: `[batch]`.
    public func kl(_ other: DiagonalGaussianDistribution? = nil) -> Tensor {
        if isDeterministic { return Tensor.zeros([1]) }
        let terms: Tensor
        if let other {
            terms = (mean - other.mean).square() / other.variance + variance / other.variance - 1 - logVariance + other.logVariance
        } else {
            terms = mean.square() + variance - 1 - logVariance
        }
        return terms.sum(axes: [1, 2, 3]) * 0.5
    }

    /// The negative log-likelihood of `sample`, summed over `axes` (default channels, height, width).
    public func negativeLogLikelihood(_ sample: Tensor, axes: [Int] = [1, 2, 3]) -> Tensor {
        if isDeterministic { return Tensor.zeros([1]) }
        let logTwoPi = Float(Foundation.log(2 * Double.pi))
        return ((sample - mean).square() / variance + logVariance + logTwoPi).sum(axes: axes) * 0.5
    }
}
