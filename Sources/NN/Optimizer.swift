import CDiffuseSystem
import Foundation
import Tensors

/// What every optimizer shares: the parameters it updates, a learning rate,
/// and per-parameter state that can be saved and restored.
open class Optimizer {
    /// The tensors updated by `step()`, in a fixed order (state is keyed by position).
    public let parameters: [Tensor]
    /// The current learning rate (an LR schedule sets it before each step).
    public var learningRate: Float
    /// Number of `step()` calls so far.
    public internal(set) var stepCount = 0

    public init(parameters: [Tensor], learningRate: Float) {
        self.parameters = parameters
        self.learningRate = learningRate
    }

    /// Applies one update from each parameter's `grad` (parameters without a gradient are skipped).
    /// Optimizers with an elementwise `rangeUpdate` are stepped as one job over all parameters,
    /// cut into equal pieces for the workers, so the many small tensors (biases, norms, 64×64
    /// projections) are not each run on one thread.
    public func step() {
        stepCount += 1
        noGrad {
            var pieces: [(body: (Range<Int>) -> Void, elements: Range<Int>)] = []
            var gradients: [Tensor] = []
            for (index, parameter) in parameters.enumerated() {
                guard let gradient = parameter.grad?.contiguousData() else { continue }
                guard let body = rangeUpdate(index: index, parameter: parameter, gradient: gradient) else {
                    update(index: index, parameter: parameter, gradient: gradient)
                    continue
                }
                gradients.append(gradient)
                var start = 0
                while start < parameter.count {
                    let end = Swift.min(parameter.count, start + Optimizer.pieceElements)
                    pieces.append((body, start..<end))
                    start = end
                }
            }
            withExtendedLifetime(gradients) {
                Parallel.forEachTask(pieces.count) { piece in pieces[piece].body(pieces[piece].elements) }
            }
        }
        ComputeMode.weightsChanged()
    }

    /// Elements of one piece of a step's job.
    static let pieceElements = 16384

    /// For elementwise optimizers: prepares parameter `index` on the calling thread (its state
    /// created) and returns what updates a range of its elements; the ranges are disjoint and may
    /// run on any thread. nil (the default) updates the parameter with `update` instead.
    open func rangeUpdate(index: Int, parameter: Tensor, gradient: Tensor) -> ((Range<Int>) -> Void)? { nil }

    /// Clears the gradients of all parameters.
    public func zeroGradients() {
        for parameter in parameters { parameter.grad = nil }
    }

    /// Updates one parameter in place. Subclasses implement the algorithm.
    open func update(index: Int, parameter: Tensor, gradient: Tensor) {
        fatalError("Optimizer.update must be overridden")
    }

    /// Per-parameter buffers by name (`"3.exp_avg"`), plus `"step"`; the tensors
    /// themselves, so save them before the next step.
    open var state: [String: Tensor] {
        ["step": Tensor([Float(stepCount)])]
    }

    /// Restores what `state` returned (same parameters, same order).
    open func load(state: [String: Tensor]) throws {
        guard let step = state["step"] else { throw OptimizerStateError.missing("step") }
        stepCount = Int(step.item)
    }

    /// A zero buffer shaped like parameter `index`, created on first use.
    func buffer(_ buffers: inout [Int: Tensor], _ index: Int) -> Tensor {
        if let existing = buffers[index] { return existing }
        let created = Tensor.zeros(parameters[index].shape)
        buffers[index] = created
        return created
    }

    func export(_ buffers: [Int: Tensor], as name: String, into result: inout [String: Tensor]) {
        for (index, tensor) in buffers { result["\(index).\(name)"] = tensor }
    }

    func restore(_ name: String, from state: [String: Tensor]) throws -> [Int: Tensor] {
        var result: [Int: Tensor] = [:]
        for (key, tensor) in state where key.hasSuffix(".\(name)") {
            guard let index = Int(key.dropLast(name.count + 1)), parameters.indices.contains(index) else {
                throw OptimizerStateError.unknownParameter(key)
            }
            guard tensor.shape == parameters[index].shape else {
                throw OptimizerStateError.shapeMismatch(key, expected: parameters[index].shape, found: tensor.shape)
            }
            result[index] = tensor.contiguousCopy()
        }
        return result
    }
}

/// Problems restoring optimizer state.
public enum OptimizerStateError: Error, CustomStringConvertible {
    case missing(String)
    case unknownParameter(String)
    case shapeMismatch(String, expected: [Int], found: [Int])

    public var description: String {
        switch self {
        case .missing(let key): return "optimizer state has no \(key)"
        case .unknownParameter(let key): return "optimizer state entry \(key) names no parameter of this optimizer"
        case let .shapeMismatch(key, expected, found): return "optimizer state \(key) has shape \(found), the parameter has \(expected)"
        }
    }
}

/// Stochastic gradient descent with PyTorch's `torch.optim.SGD` rules
/// (momentum with dampening, Nesterov, L2 weight decay).
public final class SGD: Optimizer {
    public var momentum: Float
    public var dampening: Float
    public var nesterov: Bool
    public var weightDecay: Float
    private var momentumBuffers: [Int: Tensor] = [:]

    public init(parameters: [Tensor], learningRate: Float, momentum: Float = 0, dampening: Float = 0, nesterov: Bool = false, weightDecay: Float = 0) {
        self.momentum = momentum
        self.dampening = dampening
        self.nesterov = nesterov
        self.weightDecay = weightDecay
        super.init(parameters: parameters, learningRate: learningRate)
    }

    public override func update(index: Int, parameter: Tensor, gradient: Tensor) {
        rangeUpdate(index: index, parameter: parameter, gradient: gradient)!(0..<parameter.count)
    }

    public override func rangeUpdate(index: Int, parameter: Tensor, gradient: Tensor) -> ((Range<Int>) -> Void)? {
        let (values, slope) = (parameter.floatPointer, gradient.floatPointer)
        let isFirst = momentumBuffers[index] == nil
        let buffer = momentum != 0 ? self.buffer(&momentumBuffers, index).floatPointer : nil
        let (momentum, dampening, nesterov, weightDecay, learningRate) = (momentum, dampening, nesterov, weightDecay, learningRate)
        return { range in
            for element in range {
                var g = slope[element]
                if weightDecay != 0 { g += weightDecay * values[element] }
                if let buffer {
                    buffer[element] = isFirst ? g : momentum * buffer[element] + (1 - dampening) * g
                    g = nesterov ? g + momentum * buffer[element] : buffer[element]
                }
                values[element] -= learningRate * g
            }
        }
    }

    public override var state: [String: Tensor] {
        var result = super.state
        export(momentumBuffers, as: "momentum_buffer", into: &result)
        return result
    }

    public override func load(state: [String: Tensor]) throws {
        try super.load(state: state)
        momentumBuffers = try restore("momentum_buffer", from: state)
    }
}

/// Adam (`torch.optim.Adam`, L2 weight decay) and AdamW (`torch.optim.AdamW`,
/// decoupled weight decay), with PyTorch's bias correction and eps placement:
/// `p ← p − lr/(1−β₁ᵗ) · m / (√v / √(1−β₂ᵗ) + ε)`.
public final class Adam: Optimizer {
    public var beta1: Float
    public var beta2: Float
    public var epsilon: Float
    public var weightDecay: Float
    /// True for AdamW: decay is `p ← p·(1 − lr·λ)` before the Adam step.
    public let decoupledWeightDecay: Bool
    private var firstMoments: [Int: Tensor] = [:]
    private var secondMoments: [Int: Tensor] = [:]

    public init(parameters: [Tensor], learningRate: Float = 1e-3, beta1: Float = 0.9, beta2: Float = 0.999,
                epsilon: Float = 1e-8, weightDecay: Float = 0, decoupledWeightDecay: Bool = false) {
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.decoupledWeightDecay = decoupledWeightDecay
        super.init(parameters: parameters, learningRate: learningRate)
    }

    /// AdamW with PyTorch's defaults (weight decay 0.01).
    public static func adamW(parameters: [Tensor], learningRate: Float = 1e-3, beta1: Float = 0.9, beta2: Float = 0.999,
                             epsilon: Float = 1e-8, weightDecay: Float = 0.01) -> Adam {
        Adam(parameters: parameters, learningRate: learningRate, beta1: beta1, beta2: beta2, epsilon: epsilon,
             weightDecay: weightDecay, decoupledWeightDecay: true)
    }

    public override func update(index: Int, parameter: Tensor, gradient: Tensor) {
        let body = rangeUpdate(index: index, parameter: parameter, gradient: gradient)!
        Parallel.forEach(parameter.count, grain: 32768) { range in body(range) }
    }

    public override func rangeUpdate(index: Int, parameter: Tensor, gradient: Tensor) -> ((Range<Int>) -> Void)? {
        let (values, slope) = (parameter.floatPointer, gradient.floatPointer)
        let m = buffer(&firstMoments, index).floatPointer
        let v = buffer(&secondMoments, index).floatPointer
        let step = Double(stepCount)
        let biasCorrection1 = 1 - Foundation.pow(Double(beta1), step)
        let biasCorrection2Root = Float((1 - Foundation.pow(Double(beta2), step)).squareRoot())
        let stepSize = Float(Double(learningRate) / biasCorrection1)
        let decayFactor = 1 - learningRate * weightDecay
        let (beta1, beta2, epsilon) = (self.beta1, self.beta2, self.epsilon)
        // L2 decay folds into the gradient, AdamW's scales the parameter first.
        let coupledDecay: Float = decoupledWeightDecay ? 0 : weightDecay
        let parameterScale: Float = decoupledWeightDecay && weightDecay != 0 ? decayFactor : 1
        // Eight parameters at a time (a last short group padded with zeros, which stay finite),
        // the same operations in the same order as PyTorch's single-tensor AdamW.
        return { range in
            var element = range.lowerBound
            while element < range.upperBound {
                let lanes = Swift.min(8, range.upperBound - element)
                @inline(__always) func load(_ pointer: UnsafeMutablePointer<Float>) -> SIMD8<Float> {
                    if lanes == 8 { return UnsafeRawPointer(pointer + element).loadUnaligned(as: SIMD8<Float>.self) }
                    var result = SIMD8<Float>()
                    for lane in 0..<lanes { result[lane] = pointer[element + lane] }
                    return result
                }
                @inline(__always) func store(_ result: SIMD8<Float>, _ pointer: UnsafeMutablePointer<Float>) {
                    if lanes == 8 { UnsafeMutableRawPointer(pointer + element).storeBytes(of: result, as: SIMD8<Float>.self); return }
                    for lane in 0..<lanes { pointer[element + lane] = result[lane] }
                }
                var (value, first, second, g) = (load(values), load(m), load(v), load(slope))
                value *= parameterScale
                if coupledDecay != 0 { g += coupledDecay * value }
                first += (g - first) * (1 - beta1)
                second = beta2 * second + (1 - beta2) * g * g
                let denominator = diffuse_square_root8(second) / biasCorrection2Root + epsilon
                value -= stepSize * first / denominator
                store(value, values); store(first, m); store(second, v)
                element += lanes
            }
        }
    }

    public override var state: [String: Tensor] {
        var result = super.state
        export(firstMoments, as: "exp_avg", into: &result)
        export(secondMoments, as: "exp_avg_sq", into: &result)
        return result
    }

    public override func load(state: [String: Tensor]) throws {
        try super.load(state: state)
        firstMoments = try restore("exp_avg", from: state)
        secondMoments = try restore("exp_avg_sq", from: state)
    }
}

/// Scales all gradients so their global 2-norm is at most `maximumNorm`
/// (PyTorch's `clip_grad_norm_`). Returns the norm before clipping.
@discardableResult
public func clipGradientNorm(_ parameters: [Tensor], maximumNorm: Float) -> Float {
    var total = 0.0
    let gradients = parameters.compactMap { $0.grad?.contiguousData() }
    for gradient in gradients {
        let pointer = gradient.floatPointer
        for index in 0..<gradient.count { total += Double(pointer[index]) * Double(pointer[index]) }
    }
    let norm = Float(total.squareRoot())
    let coefficient = Swift.min(maximumNorm / (norm + 1e-6), 1)
    if coefficient < 1 {
        for parameter in parameters {
            guard let gradient = parameter.grad else { continue }
            parameter.grad = noGrad { gradient * coefficient }
        }
    }
    return norm
}

/// Counts micro-batches for gradient accumulation: scale each loss by
/// `lossScale`, call `backward()`, and step the optimizer when `microBatchDone()` says so.
public struct GradientAccumulator {
    public let steps: Int
    public private(set) var microBatch = 0

    public init(steps: Int) {
        precondition(steps >= 1, "GradientAccumulator: steps must be at least 1, got \(steps)")
        self.steps = steps
    }

    /// The factor each micro-batch loss is multiplied by, so the sum is the mean.
    public var lossScale: Float { 1 / Float(steps) }

    /// Records one micro-batch; true when the optimizer should step now.
    public mutating func microBatchDone() -> Bool {
        microBatch += 1
        if microBatch == steps {
            microBatch = 0
            return true
        }
        return false
    }
}
