import Tensors

/// The average over the ranks of one optimizer step's gradients, as every trainer takes it:
/// started during the backward pass of the step's last micro-batch when the group overlaps
/// (``DataParallelGroup/startAveragingGradients(of:)``, `DIFFUSE_MPI_BACKWARD_OVERLAP`), taken
/// after it otherwise (``DataParallelGroup/averageGradients(of:)``). Both give the same gradients.
///
/// ```swift
/// let average = StepGradientAverage(group: group, parameters: trainable)
/// // every micro-batch of a step:
/// try average.backward(loss, isLast: index == accumulation - 1)
/// // after the last one, before clipping:
/// try average.finish()
/// ```
///
/// A step whose last micro-batch makes several backward passes (CLIP's gathered features) calls
/// ``start()`` before the passes whose leaves no later pass reaches, ``backward(_:gradient:)`` for
/// each, and ``gradientsAreFinal(_:)`` for parameters an earlier pass finished.
/// With one process, or a group that does not overlap, the backward passes are the plain ones.
public final class StepGradientAverage {
    /// The processes whose gradients are averaged.
    public let group: any DataParallelGroup
    /// The trainable parameters, in the order every rank uses.
    public let parameters: [Tensor]
    /// The average started during this step's backward pass, if any.
    private var started: (any GradientAveraging)?

    /// Averages `parameters`' gradients over `group`.
    public init(group: any DataParallelGroup, parameters: [Tensor]) {
        self.group = group
        self.parameters = parameters
    }

    /// True while an average started by ``start()`` waits for ``finish()``.
    public var isStarted: Bool { started != nil }

    /// Asks the group to start averaging during the backward passes that follow (nil when it
    /// does not overlap). Call it once per step, before the last micro-batch's backward pass and
    /// after every other collective call of the step that precedes ``finish()``.
    public func start() throws {
        precondition(started == nil, "StepGradientAverage.start() called twice in one step")
        started = try group.startAveragingGradients(of: parameters)
    }

    /// `root.backward(gradient)`, reporting each parameter whose gradient becomes final to a
    /// started average. Only for passes after which no other pass adds to those gradients.
    public func backward(_ root: Tensor, gradient: Tensor? = nil) {
        guard let started else { return root.backward(gradient) }
        root.backward(gradient, gradientReady: { started.gradientReady($0) })
    }

    /// The backward pass of one micro-batch's loss; on the step's last micro-batch (`isLast`)
    /// the average starts during it.
    public func backward(_ loss: Tensor, isLast: Bool) throws {
        if isLast { try start() }
        backward(loss)
    }

    /// Reports parameters whose gradients an earlier backward pass of this step made final
    /// (no later pass reaches them) to a started average.
    public func gradientsAreFinal(_ finished: [Tensor]) {
        guard let started else { return }
        for parameter in finished { started.gradientReady(parameter) }
    }

    /// Replaces every parameter's gradient with its mean over the ranks: waits for the started
    /// average, or (none started, e.g. an epoch's last partial accumulation) averages now.
    public func finish() throws {
        if let started {
            self.started = nil
            try started.finish()
        } else {
            try group.averageGradients(of: parameters)
        }
    }
}
