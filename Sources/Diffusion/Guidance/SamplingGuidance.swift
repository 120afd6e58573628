import Foundation
import NN
import Tensors

/// The gradient guidance of one sampling run: loss guidance, classifier
/// guidance, or both, applied to x_t before every scheduler step (see
/// ``SamplingLoop``). Classifier-free guidance is separate: it changes the
/// model output (``GuidedSampler/guidedOutput(unet:sample:timestep:labels:guidanceScale:)``)
/// and combines with either.
public struct SamplingGuidance {
    /// Loss guidance (nil: none).
    public var loss: LossGuidance?
    /// Classifier guidance (nil: none).
    public var classifier: ClassifierGuidance?
    /// Report every this many steps (and the last); 0 never.
    public var reportEvery: Int

    /// Guidance by `loss`, `classifier`, or both, reporting every `reportEvery` steps.
    public init(loss: LossGuidance? = nil, classifier: ClassifierGuidance? = nil, reportEvery: Int = 10) {
        self.loss = loss
        self.classifier = classifier
        self.reportEvery = reportEvery
    }

    /// What a guided step measured, for the log the notes print (`0 loss: 27.4`).
    public struct Report: Sendable {
        /// 0-based step number and the number of steps.
        public let index: Int, count: Int
        /// The mean per-image guidance loss of x0 before the move (nil: no loss guidance).
        public let loss: Float?
        /// The loss times the scale, what the notes print.
        public let scaledLoss: Float?
        /// The mean log p(y | x_t) before the move (nil: no classifier guidance).
        public let logProbability: Float?

        /// One line: `step 10/25  colour loss 0.3121 (× 40 = 12.48)  log p(y|x_t) -1.92`.
        public func line(lossName: String = "loss") -> String {
            var parts = ["step \(index)/\(count)"]
            if let loss, let scaledLoss { parts.append(String(format: "%@ %.4f (× scale = %.4g)", lossName, loss, scaledLoss)) }
            if let logProbability { parts.append(String(format: "log p(y|x_t) %.3f (p %.3f)", logProbability, Foundation.exp(logProbability))) }
            return parts.joined(separator: "  ")
        }
    }

    /// Runs `body` with every parameter of `modules` not requiring gradients
    /// (restored afterwards), so a guidance backward pass computes d/dx only.
    public static func withFrozenParameters<Result>(_ modules: [Module], _ body: () throws -> Result) rethrows -> Result {
        let parameters = modules.flatMap { $0.parameters() }.filter(\.requiresGrad)
        parameters.forEach { $0.requiresGrad = false }
        defer { parameters.forEach { $0.requiresGrad = true } }
        return try body()
    }

    /// True when the model must run with gradients (loss guidance in `full` mode).
    public var needsModelGradient: Bool { loss?.mode == .full }

    /// Checks the request before sampling: the scheduler must expose x0 for loss guidance.
    public func check(scheduler: any Scheduler, sampleShape: [Int]) throws {
        if loss != nil {
            guard !(scheduler is HeunDiscreteScheduler) else {
                throw GuidanceError("--guide needs the scheduler's predicted x0 before each step; HeunDiscreteScheduler's depends on which "
                                    + "of its two stages runs. Use ddim, ddpm, pndm, lms, euler, euler-ancestral, dpm or unipc")
            }
        }
        try classifier?.checkCompatible(sampleShape: sampleShape, scheduler: scheduler)
    }

    /// One guided step: the model output at x_t (with gradients in `full`
    /// mode) and x_t moved by −∇ loss and +∇ log p. `model` is the denoiser
    /// *without* `noGrad`, `(scaled input, timestep) -> output`.
    public func step(index: Int, count: Int, timestep: Float, sample: Tensor, scheduler: any Scheduler,
                     model: (Tensor, Float) -> Tensor, report: ((Report) -> Void)? = nil) throws -> (sample: Tensor, modelOutput: Tensor) {
        let leaf = sample.detach()
        leaf.requiresGrad = true
        let output: Tensor
        if needsModelGradient {
            output = model(scheduler.scaleModelInput(leaf, timestep: timestep), timestep)
        } else {
            output = noGrad { model(scheduler.scaleModelInput(sample, timestep: timestep), timestep) }
        }
        var moved = sample
        var meanLoss: Float?
        if let loss {
            let (losses, gradient) = try loss.gradient(sample: leaf, modelOutput: output, timestep: timestep, scheduler: scheduler)
            meanLoss = noGrad { losses.mean().item }
            moved = noGrad { moved - gradient }
        }
        var meanLogProbability: Float?
        if let classifier {
            let classifierLeaf = sample.detach()
            classifierLeaf.requiresGrad = true
            let (logProbabilities, gradient) = classifier.gradient(sample: classifierLeaf, timestep: timestep, scheduler: scheduler)
            meanLogProbability = noGrad { logProbabilities.mean().item }
            moved = noGrad { moved + gradient }
        }
        if let report, reportEvery > 0, index % reportEvery == 0 || index == count - 1 {
            report(Report(index: index, count: count, loss: meanLoss, scaledLoss: meanLoss.map { $0 * (loss?.scale ?? 0) },
                          logProbability: meanLogProbability))
        }
        return (moved.detach(), output.detach())
    }
}
