import Foundation
import Tensors

/// The denoising loop every pipeline shares: start from noise, ask the model,
/// let the scheduler step; after each step a callback sees the step number,
/// the timestep, the current sample x_t and the predicted clean sample x0, so
/// the caller can visualise, log, or guide.
///
/// ```swift
/// let scheduler = try DPMSolverMultistepScheduler(configuration: trained.configuration)
/// var generator = RandomGenerator(seed: 0)
/// let images = try SamplingLoop.run(scheduler: scheduler, shape: [4, 1, 28, 28], steps: 20,
///                                   generator: &generator, model: { x, t in unet(x, t) }) { state in
///     print(state.index, state.timestep, state.predictedOriginal.mean().item)
///     return nil
/// }
/// ```
///
/// Guidance: with `guidance: true` the sample handed to the step is a leaf that
/// requires gradients, and the step runs with gradients on, so the callback can
/// differentiate a loss on `state.predictedOriginal` with respect to
/// `state.sample` and return an adjusted next sample. The model itself always
/// runs without gradients.
///
/// Guidance before the step (the notes' loss and classifier guidance): a
/// `guide` replaces the model call; it gets the step number, the timestep and
/// x_t, and returns the x_t to step from (moved along a gradient) with the
/// model output to step with. See ``SamplingGuidance``.
public enum SamplingLoop {
    /// What the callback sees after each scheduler step.
    public struct State {
        /// 0-based position in `scheduler.timesteps`.
        public let index: Int
        /// How many steps the loop takes (`scheduler.timesteps.count`).
        public let count: Int
        /// The timestep the model was evaluated at.
        public let timestep: Float
        /// x_t: the sample at this timestep (before the scheduler's input scaling).
        public let sample: Tensor
        /// The scheduler's prediction of x0 from this step's model output.
        public let predictedOriginal: Tensor
        /// x_{t−1}: what the scheduler produced; the next step starts from it
        /// unless the callback returns a replacement.
        public let previousSample: Tensor
        /// The raw model output.
        public let modelOutput: Tensor
    }

    /// Runs the loop from `initialNoise` (standard normal; it is scaled by the
    /// scheduler's `initNoiseSigma` here). Returns the final sample.
    ///
    /// - Parameters:
    ///   - model: the denoiser, `(sample, timestep) -> output`, called without gradients.
    ///   - guide: when given, called instead of `model` before every step with
    ///     (step number, timestep, x_t); returns the x_t to step from and the model output.
    ///   - onStep: called after every step; return a tensor to replace the next
    ///     sample (e.g. after guidance), or nil to keep the scheduler's; throw to stop
    ///     the loop (a cancelled server job).
    public static func run(scheduler: any Scheduler, initialNoise: Tensor, steps: Int,
                           generator: inout RandomGenerator, guidance: Bool = false,
                           model: (Tensor, Float) -> Tensor,
                           guide: ((Int, Float, Tensor) throws -> (sample: Tensor, modelOutput: Tensor))? = nil,
                           onStep: ((State) throws -> Tensor?)? = nil) throws -> Tensor {
        try scheduler.setTimesteps(steps)
        let timesteps = scheduler.timesteps
        var sample = noGrad { initialNoise * scheduler.initNoiseSigma }
        for (index, timestep) in timesteps.enumerated() {
            let output: Tensor
            if let guide {
                let guided = try guide(index, timestep, sample)
                sample = guided.sample.detach()
                output = guided.modelOutput.detach()
            } else {
                output = noGrad { model(scheduler.scaleModelInput(sample, timestep: timestep), timestep) }
            }
            let current: Tensor
            if guidance {
                current = sample.detach()
                current.requiresGrad = true
            } else {
                current = sample
            }
            let result: SchedulerStepOutput
            if guidance {
                result = scheduler.step(output, timestep: timestep, sample: current, noise: nil, generator: &generator)
            } else {
                result = noGrad { scheduler.step(output, timestep: timestep, sample: current, noise: nil, generator: &generator) }
            }
            let state = State(index: index, count: timesteps.count, timestep: timestep, sample: current,
                              predictedOriginal: result.predOriginalSample, previousSample: result.prevSample, modelOutput: output)
            let replacement = try onStep?(state)
            sample = (replacement ?? result.prevSample).detach()
        }
        return sample
    }

    /// Runs the loop from fresh standard normal noise of `shape` drawn from `generator`.
    public static func run(scheduler: any Scheduler, shape: [Int], steps: Int,
                           generator: inout RandomGenerator, guidance: Bool = false,
                           model: (Tensor, Float) -> Tensor,
                           onStep: ((State) throws -> Tensor?)? = nil) throws -> Tensor {
        let noise = Tensor.randn(shape, generator: &generator)
        return try run(scheduler: scheduler, initialNoise: noise, steps: steps, generator: &generator,
                       guidance: guidance, model: model, guide: nil, onStep: onStep)
    }
}
