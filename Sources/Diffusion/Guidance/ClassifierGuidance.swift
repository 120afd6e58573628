import Foundation
import Tensors

/// Classifier guidance (Dhariwal & Nichol, 2021, as in the notes): before every
/// scheduler step, x_t moves by +scale · ∇ₓ Σᵢ log p(yᵢ | x_t, t) of a
/// ``NoiseAwareClassifier``, then the scheduler steps from the moved x_t with
/// the model output of the unmoved one. Scale 0 is unguided sampling.
public struct ClassifierGuidance {
    /// The noise-aware classifier.
    public let classifier: NoiseAwareClassifier
    /// The requested class of each sample.
    public let labels: [Int]
    /// The step size multiplying ∇ log p.
    public let scale: Float

    /// Checks the request against the classifier: every label must be one of its classes.
    public init(classifier: NoiseAwareClassifier, labels: [Int], scale: Float) throws {
        let names = classifier.configuration.classNames
        for label in labels where label < 0 || label >= names.count {
            throw GuidanceError("class \(label) is not one of the classifier's \(names.count) classes (0…\(names.count - 1): "
                                + names.joined(separator: ", ") + ")")
        }
        guard classifier.configuration.noiseAware else {
            throw GuidanceError("the classifier was trained on clean images only (noise_aware false); guidance needs one trained on "
                                + "noised images (`diffuse train-classifier` without --clean)")
        }
        self.classifier = classifier
        self.labels = labels
        self.scale = scale
    }

    /// Checks that the classifier fits the images and the noise of `scheduler`.
    public func checkCompatible(sampleShape: [Int], scheduler: any Scheduler) throws {
        let configuration = classifier.configuration
        guard sampleShape.count == 4, sampleShape[1] == configuration.inChannels else {
            throw GuidanceError("the classifier takes \(configuration.inChannels)-channel images; the model makes \(sampleShape.dropFirst().map(String.init).joined(separator: "×"))")
        }
        guard labels.count == sampleShape[0] else {
            throw GuidanceError("\(labels.count) classes for \(sampleShape[0]) samples; give one class, or one per sample")
        }
        let trained = try DDPMScheduler(configuration: configuration.schedulerConfiguration).noiseSchedule.alphasCumprod
        let sampling = scheduler.noiseSchedule.alphasCumprod
        let matches = trained.count == sampling.count && zip(trained, sampling).allSatisfy { Swift.abs($0 - $1) <= 1e-6 }
        guard matches else {
            throw GuidanceError("the classifier was trained on noise of beta_schedule \(configuration.betaSchedule) "
                                + "(\(configuration.betaStart)…\(configuration.betaEnd), \(configuration.numTrainTimesteps) steps), "
                                + "which is not the sampling scheduler's; train it with --pipeline pointing at this model")
        }
    }

    /// The per-image log p(y | x_t) `[N]` and d(scale · Σ log p)/d `sample`
    /// (a leaf that requires gradients), the classifier seeing the scheduler's
    /// model input at `timestep`.
    public func gradient(sample: Tensor, timestep: Float, scheduler: any Scheduler) -> (logProbabilities: Tensor, gradient: Tensor) {
        let logits = classifier(scheduler.scaleModelInput(sample, timestep: timestep), timestep: timestep)
        let count = sample.shape[0]
        let classes = logits.shape[1]
        var mask = [Float](repeating: 0, count: count * classes)
        for (row, label) in labels.enumerated() { mask[row * classes + label] = 1 }
        let picked = (logits.logSoftmax(axis: 1) * Tensor(mask, shape: [count, classes])).sum(axes: [1])
        let gradient = Tensors.gradients(of: picked.sum() * scale, withRespectTo: [sample])[0]
        return (picked.detach(), gradient)
    }
}
