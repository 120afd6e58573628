import Foundation
import Tensors

/// An exponential moving average of a model's parameters with diffusers'
/// `EMAModel` rules: the decay warms up as `(1 + t)/(10 + t)` or, with
/// `useWarmup`, as `1 − (1 + t/invGamma)^−power`, clamped to
/// `[minimumDecay, maximumDecay]`, where `t = step − updateAfterStep − 1`.
public final class ExponentialMovingAverage {
    /// The averaged copies, in the order of the parameters given at creation.
    public let shadowParameters: [Tensor]
    public var maximumDecay: Double
    public var minimumDecay: Double
    public var updateAfterStep: Int
    public var useWarmup: Bool
    public var inverseGamma: Double
    public var power: Double
    /// Number of `step` calls so far (`optimization_step`).
    public private(set) var optimizationStep = 0
    /// The decay used by the last step.
    public private(set) var currentDecay: Double = 0

    public init(parameters: [Tensor], maximumDecay: Double = 0.9999, minimumDecay: Double = 0, updateAfterStep: Int = 0,
                useWarmup: Bool = false, inverseGamma: Double = 1, power: Double = 2.0 / 3.0) {
        shadowParameters = parameters.map { $0.contiguousCopy() }
        self.maximumDecay = maximumDecay
        self.minimumDecay = minimumDecay
        self.updateAfterStep = updateAfterStep
        self.useWarmup = useWarmup
        self.inverseGamma = inverseGamma
        self.power = power
    }

    /// The decay for a given optimization step.
    public func decay(at optimizationStep: Int) -> Double {
        let step = Swift.max(0, optimizationStep - updateAfterStep - 1)
        if step <= 0 { return 0 }
        let value: Double
        if useWarmup {
            value = 1 - Foundation.pow(1 + Double(step) / inverseGamma, -power)
        } else {
            value = (1 + Double(step)) / (10 + Double(step))
        }
        return Swift.max(Swift.min(value, maximumDecay), minimumDecay)
    }

    /// Moves the average toward `parameters`: `s ← s − (1 − decay)(s − p)` for
    /// trainable parameters, `s ← p` for frozen ones.
    public func step(_ parameters: [Tensor]) {
        precondition(parameters.count == shadowParameters.count, "EMA: \(parameters.count) parameters given, \(shadowParameters.count) tracked")
        optimizationStep += 1
        let decay = decay(at: optimizationStep)
        currentDecay = decay
        let oneMinusDecay = Float(1 - decay)
        noGrad {
            for (shadow, parameter) in zip(shadowParameters, parameters) {
                let source = parameter.contiguousData()
                let (s, p) = (shadow.floatPointer, source.floatPointer)
                if parameter.requiresGrad {
                    for index in 0..<shadow.count { s[index] -= oneMinusDecay * (s[index] - p[index]) }
                } else {
                    s.update(from: p, count: shadow.count)
                }
            }
        }
    }

    /// Writes the averages into `parameters` (for sampling or saving).
    public func copy(to parameters: [Tensor]) {
        for (shadow, parameter) in zip(shadowParameters, parameters) { parameter.copyValues(from: shadow) }
    }

    /// Saves `parameters` aside so `restore` can put them back after sampling with the average.
    public func store(_ parameters: [Tensor]) -> [Tensor] { parameters.map { $0.contiguousCopy() } }

    /// The averages and counters by name, for checkpoints.
    public var state: [String: Tensor] {
        var result: [String: Tensor] = ["optimization_step": Tensor([Float(optimizationStep)])]
        for (index, shadow) in shadowParameters.enumerated() { result["shadow.\(index)"] = shadow }
        return result
    }

    /// Restores what `state` returned.
    public func load(state: [String: Tensor]) throws {
        guard let step = state["optimization_step"] else { throw OptimizerStateError.missing("optimization_step") }
        for (index, shadow) in shadowParameters.enumerated() {
            guard let saved = state["shadow.\(index)"] else { throw OptimizerStateError.missing("shadow.\(index)") }
            guard saved.shape == shadow.shape else { throw OptimizerStateError.shapeMismatch("shadow.\(index)", expected: shadow.shape, found: saved.shape) }
            shadow.copyValues(from: saved)
        }
        optimizationStep = Int(step.item)
    }
}
