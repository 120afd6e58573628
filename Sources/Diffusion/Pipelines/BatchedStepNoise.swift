import Foundation
import NN
import Tensors

/// The noise a stochastic scheduler's step needs in a batched run: each request's rows drawn from its own generator,
/// exactly when (and as much as) its lone run's step would draw them.
enum BatchedStepNoise {
    /// Steps `probe` (a scheduler like the batch's, on one image's zeros) at `timestep`; when that step drew one
    /// tensor of the image's shape, draws each request's noise of `shapes` from its generator and returns them
    /// stacked; nil when the step draws nothing. Throws when the step draws anything else.
    static func draw(probe: any Scheduler, zeros: Tensor, timestep: Float, shapes: [[Int]],
                     generators: inout [RandomGenerator]) throws -> Tensor? {
        let before = RandomGenerator(seed: 0x5EED)
        var probeGenerator = before
        _ = noGrad { probe.step(zeros, timestep: timestep, sample: zeros, noise: nil, generator: &probeGenerator) }
        guard probeGenerator != before else { return nil }
        var once = before
        _ = Tensor.randn(zeros.shape, generator: &once)
        guard once == probeGenerator else {
            throw StableDiffusionError("\(type(of: probe).className) draws its step noise in a way a batched run cannot reproduce")
        }
        var parts: [Tensor] = []
        for (index, shape) in shapes.enumerated() { parts.append(Tensor.randn(shape, generator: &generators[index])) }
        return noGrad { Tensor.concatenate(parts, axis: 0) }
    }
}
