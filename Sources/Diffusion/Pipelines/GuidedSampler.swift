import Foundation
import NN
import Tensors

/// Sampling from a `UNet2DModel` with any scheduler, optionally class-conditional
/// with classifier-free guidance, recording x_t and the predicted x0 along the way.
///
/// Class-conditional models follow the convention of Diffuse's trainer: the
/// UNet has `num_class_embeds` = classes + 1 and the last index is the
/// unconditional ("null") class the model saw when a label was dropped.
/// Guidance runs the model once per step on a batch of twice the size (the
/// conditional half, then the unconditional half) and combines them as
/// `uncond + s · (cond − uncond)`: a scale of 0 is unconditional sampling, 1
/// plain conditional sampling (both then need only one half).
public enum GuidedSampler {
    /// One recorded step.
    public struct TraceFrame {
        /// 0-based step number.
        public let index: Int
        /// The timestep the model was evaluated at.
        public let timestep: Float
        /// x_t before the step.
        public let sample: Tensor
        /// The scheduler's prediction of x0 at this step.
        public let predictedOriginal: Tensor
    }

    /// What `sample` returns.
    public struct Result {
        /// The final samples, `[count, C, H, W]`, in the model's data range (about [-1, 1]).
        public let samples: Tensor
        /// The recorded steps (every `traceEvery` steps and the last), empty without tracing.
        public let trace: [TraceFrame]
    }

    /// Errors in a sampling request.
    public struct RequestError: Error, CustomStringConvertible, Equatable {
        public let message: String
        public init(_ message: String) { self.message = message }
        public var description: String { message }
    }

    /// The unconditional class index of a class-conditional model (nil for other models).
    public static func nullClass(of unet: UNet2DModel) -> Int? {
        guard unet.configuration.classEmbeddingType == nil, let count = unet.configuration.classEmbeddingCount, count >= 2 else { return nil }
        return count - 1
    }

    /// The model output for `sample` at `timestep` with guidance applied, under `noGrad`.
    ///
    /// - Parameters:
    ///   - labels: one class per example (nil: an unconditional model, or all null classes).
    ///   - guidanceScale: `s` of `uncond + s · (cond − uncond)`.
    public static func guidedOutput(unet: UNet2DModel, sample: Tensor, timestep: Float, labels: [Int]?, guidanceScale: Float) -> Tensor {
        noGrad { conditionedOutput(unet: unet, sample: sample, timestep: timestep, labels: labels, guidanceScale: guidanceScale) }
    }

    /// As `guidedOutput`, recording the graph when gradients are on (full-mode loss guidance).
    public static func conditionedOutput(unet: UNet2DModel, sample: Tensor, timestep: Float, labels: [Int]?, guidanceScale: Float) -> Tensor {
        guard let labels, let null = nullClass(of: unet) else {
            if let null = nullClass(of: unet) {
                return unet(sample, timestep: timestep, classLabels: Array(repeating: null, count: sample.shape[0]))
            }
            return unet(sample, timestep: timestep)
        }
        if guidanceScale == 1 { return unet(sample, timestep: timestep, classLabels: labels) }
        let unconditional = Array(repeating: null, count: labels.count)
        if guidanceScale == 0 { return unet(sample, timestep: timestep, classLabels: unconditional) }
        let batch = sample.shape[0]
        let doubled = Tensor.concatenate([sample, sample], axis: 0)
        let output = unet(doubled, timestep: timestep, classLabels: labels + unconditional)
        let conditionalOutput = output.narrowed(axis: 0, start: 0, length: batch)
        let unconditionalOutput = output.narrowed(axis: 0, start: batch, length: batch)
        return unconditionalOutput + (conditionalOutput - unconditionalOutput) * guidanceScale
    }

    /// Checks labels against the model: every label must be a real class.
    public static func checkLabels(_ labels: [Int]?, unet: UNet2DModel) throws {
        guard let labels else { return }
        guard let null = nullClass(of: unet) else {
            throw RequestError("the model is not class-conditional (its config has no num_class_embeds); sample without --class")
        }
        for label in labels where label < 0 || label >= null {
            throw RequestError("class \(label) is outside the model's classes 0…\(null - 1) (index \(null) is the unconditional class)")
        }
    }

    /// Runs `steps` scheduler steps from `initialNoise` (unit variance; scaled
    /// by the scheduler's `initNoiseSigma`) or from noise drawn from
    /// `generator`, of `count` images of the model's `sample_size`.
    ///
    /// - Parameters:
    ///   - guidance: loss and/or classifier guidance applied to x_t before every step.
    ///   - onGuidance: receives the guidance's periodic reports (the notes' `i loss: …` lines).
    ///   - onStep: (steps done, steps in all) after every step.
    ///   - onState: every step's x_t and predicted x0 (previews); throw to stop sampling.
    public static func sample(unet: UNet2DModel, scheduler: any Scheduler, count: Int, steps: Int, labels: [Int]? = nil,
                              guidanceScale: Float = 1, initialNoise: Tensor? = nil, generator: inout RandomGenerator,
                              guidance: SamplingGuidance? = nil, onGuidance: ((SamplingGuidance.Report) -> Void)? = nil,
                              traceEvery: Int? = nil, onStep: ((Int, Int) -> Void)? = nil,
                              onState: ((SamplingLoop.State) throws -> Void)? = nil) throws -> Result {
        try checkLabels(labels, unet: unet)
        if let labels, labels.count != count {
            throw RequestError("\(labels.count) class labels for \(count) samples; give one label, or one per sample")
        }
        let shape = try sampleShape(unet: unet, count: count)
        let noise: Tensor
        if let initialNoise {
            guard initialNoise.shape == shape else {
                throw RequestError("the initial noise has shape \(initialNoise.shape); this model and count need \(shape)")
            }
            noise = initialNoise.dataType == .float32 ? initialNoise : initialNoise.converted(to: .float32)
        } else {
            noise = Tensor.randn(shape, generator: &generator)
        }
        try guidance?.check(scheduler: scheduler, sampleShape: shape)
        var trace: [TraceFrame] = []
        let model = { (sample: Tensor, timestep: Float) -> Tensor in
            conditionedOutput(unet: unet, sample: sample, timestep: timestep, labels: labels, guidanceScale: guidanceScale)
        }
        var guide: ((Int, Float, Tensor) throws -> (sample: Tensor, modelOutput: Tensor))?
        if let guidance {
            guide = { index, timestep, sample in
                try guidance.step(index: index, count: scheduler.timesteps.count, timestep: timestep, sample: sample, scheduler: scheduler,
                                  model: model, report: onGuidance)
            }
        }
        // Guidance differentiates with respect to x only: no parameter gradients are computed or kept.
        let frozen = [unet as Module] + (guidance?.classifier.map { [$0.classifier as Module] } ?? [])
        let samples = try SamplingGuidance.withFrozenParameters(frozen) { try SamplingLoop.run(
            scheduler: scheduler, initialNoise: noise, steps: steps, generator: &generator,
            model: { sample, timestep in noGrad { model(sample, timestep) } }, guide: guide,
            onStep: { state in
                if let traceEvery, traceEvery > 0, state.index % traceEvery == 0 || state.index == state.count - 1 {
                    trace.append(TraceFrame(index: state.index, timestep: state.timestep,
                                            sample: state.sample.detach(), predictedOriginal: state.predictedOriginal.detach()))
                }
                onStep?(state.index + 1, state.count)
                try onState?(state)
                return nil
            }) }
        return Result(samples: samples, trace: trace)
    }

    /// `[count, in_channels, height, width]` from the configuration's `sample_size`.
    public static func sampleShape(unet: UNet2DModel, count: Int) throws -> [Int] {
        let configuration = unet.configuration
        switch configuration.sampleSize {
        case .square(let side)?: return [count, configuration.inChannels, side, side]
        case .rectangle(let height, let width)?: return [count, configuration.inChannels, height, width]
        case nil: throw RequestError("the UNet's config.json has no sample_size")
        }
    }

    /// A strip of the trace: for each of the first `rows` samples, one row of
    /// x_t and one row of predicted x0, a column per recorded step (values in [-1, 1]).
    public static func traceStrip(_ trace: [TraceFrame], rows: Int = 4) -> (images: Tensor, columns: Int)? {
        guard let first = trace.first else { return nil }
        let shown = Swift.min(rows, first.sample.shape[0])
        var tiles: [Tensor] = []
        for example in 0..<shown {
            for useOriginal in [false, true] {
                for frame in trace {
                    let source = useOriginal ? frame.predictedOriginal : frame.sample
                    tiles.append(source.narrowed(axis: 0, start: example, length: 1).contiguous())
                }
            }
        }
        return (noGrad { Tensor.concatenate(tiles, axis: 0) }, trace.count)
    }
}
