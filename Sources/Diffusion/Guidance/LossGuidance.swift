import Foundation
import Tensors

/// A differentiable loss on the predicted clean images x0 that guidance lowers
/// while sampling: the public API for custom guidance.
///
/// `callAsFunction` receives x0 as `[N, C, H, W]` in the model's data range
/// (about [-1, 1]) and returns one loss per image, `[N]`. Guidance sums the
/// per-image losses before differentiating, so an image's guidance does not
/// depend on how many images are sampled together.
///
/// ```swift
/// // Bright images: lower the mean distance to white.
/// let brightness = ClosureGuidanceLoss(name: "brightness") { x0 in (x0 - 1).abs().mean(axes: [1, 2, 3]) }
/// let guidance = LossGuidance(loss: brightness, scale: 200, mode: .shortcut)
/// ```
public protocol GuidanceLoss {
    /// A short name for logs (`colour loss`).
    var name: String { get }
    /// One loss per image of `predictedOriginal` (`[N, C, H, W]`), as a `[N]` tensor,
    /// differentiable in `predictedOriginal`.
    func callAsFunction(_ predictedOriginal: Tensor) -> Tensor
}

/// A ``GuidanceLoss`` made of a closure.
public struct ClosureGuidanceLoss: GuidanceLoss {
    /// A short name for logs.
    public let name: String
    private let body: (Tensor) -> Tensor

    /// - Parameter body: maps x0 `[N, C, H, W]` to per-image losses `[N]`.
    public init(name: String = "custom loss", _ body: @escaping (Tensor) -> Tensor) {
        self.name = name
        self.body = body
    }

    public func callAsFunction(_ predictedOriginal: Tensor) -> Tensor { body(predictedOriginal) }
}

/// Where the gradient of a guidance loss is taken.
public enum GuidanceMode: String, CaseIterable, Sendable {
    /// The model output is computed without gradients; the loss is
    /// differentiated through the scheduler's x0 only (the notes' variant 1:
    /// cheaper, less accurate).
    case shortcut
    /// x requires gradients before the model call, so the gradient flows
    /// through the UNet too (the notes' variant 2: more accurate, keeps the
    /// model's activations for one backward pass per step).
    case full
}

/// Loss guidance: before every scheduler step, x_t moves by
/// −scale · ∇ₓ Σᵢ lossᵢ(x0(x_t)), then the scheduler steps from the moved x_t
/// with the model output of the unmoved one (as in the notes).
///
/// The notes compute `color_loss(x0) * scale` as one mean over the whole
/// batch; Diffuse sums per-image means instead, so its `scale` on a batch of
/// N images is the notes' `scale` · N (on one image they are the same).
public struct LossGuidance {
    /// The loss to lower.
    public var loss: any GuidanceLoss
    /// The step size multiplying the gradient.
    public var scale: Float
    /// Gradient through the scheduler's x0 only, or through the model too.
    public var mode: GuidanceMode

    /// Guidance lowering `loss` with step size `scale`, differentiated in `mode`.
    public init(loss: any GuidanceLoss, scale: Float, mode: GuidanceMode = .shortcut) {
        self.loss = loss
        self.scale = scale
        self.mode = mode
    }

    /// The per-image losses `[N]` of x0 and d(scale · Σ losses)/d `sample`, where
    /// x0 = the scheduler's prediction from `modelOutput` at `sample` (a leaf that
    /// requires gradients; in `full` mode `modelOutput` was computed from it with gradients on).
    public func gradient(sample: Tensor, modelOutput: Tensor, timestep: Float, scheduler: any Scheduler) throws -> (losses: Tensor, gradient: Tensor) {
        let predictedOriginal = try scheduler.predictedOriginalForGuidance(modelOutput, timestep: timestep, sample: sample)
        let losses = loss(predictedOriginal)
        guard losses.rank == 1, losses.shape[0] == sample.shape[0] else {
            throw GuidanceError("the \(loss.name) returned shape \(losses.shape); a guidance loss returns one value per image, [\(sample.shape[0])]")
        }
        let total = losses.sum() * scale
        guard !total.isLeaf else {
            throw GuidanceError("the \(loss.name) does not depend on the predicted x0 (no gradient reaches the sample)")
        }
        let gradient = Tensors.gradients(of: total, withRespectTo: [sample])[0]
        return (losses.detach(), gradient)
    }
}

/// A guidance request that cannot run, with the reason.
public struct GuidanceError: Error, CustomStringConvertible, Equatable {
    /// What is wrong and what to do instead.
    public let message: String
    /// An error with `message`.
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
