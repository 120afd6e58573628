import Foundation

/// Learning-rate schedules with diffusers' names and formulas
/// (`diffusers.optimization.get_scheduler`): the learning rate at a step is the
/// base rate times `multiplier(step)`.
public struct LearningRateSchedule: Sendable, Equatable {
    /// The schedule shapes, by their diffusers names.
    public enum Kind: String, Sendable, Codable, CaseIterable {
        case constant
        case constantWithWarmup = "constant_with_warmup"
        case linear
        case cosine
        case cosineWithRestarts = "cosine_with_restarts"
        case polynomial
    }

    public var kind: Kind
    public var warmupSteps: Int
    public var trainingSteps: Int
    /// Cosine: half-waves over training (0.5 = one half cosine); restarts: number of restarts.
    public var cycles: Double
    /// Polynomial: the final rate and the power of the decay.
    public var endLearningRate: Double
    public var power: Double

    public init(_ kind: Kind, warmupSteps: Int = 0, trainingSteps: Int = 0, cycles: Double? = nil,
                endLearningRate: Double = 1e-7, power: Double = 1) {
        self.kind = kind
        self.warmupSteps = warmupSteps
        self.trainingSteps = trainingSteps
        self.cycles = cycles ?? (kind == .cosineWithRestarts ? 1 : 0.5)
        self.endLearningRate = endLearningRate
        self.power = power
    }

    /// The factor applied to `baseLearningRate` after `step` scheduler steps.
    public func multiplier(step: Int, baseLearningRate: Double) -> Double {
        let step = Double(step)
        let warmup = Double(warmupSteps)
        let total = Double(trainingSteps)
        let warmingUp = step < warmup
        let warmupFactor = step / Swift.max(1, warmup)
        switch kind {
        case .constant:
            return 1
        case .constantWithWarmup:
            return warmingUp ? warmupFactor : 1
        case .linear:
            if warmingUp { return warmupFactor }
            return Swift.max(0, (total - step) / Swift.max(1, total - warmup))
        case .cosine:
            if warmingUp { return warmupFactor }
            let progress = (step - warmup) / Swift.max(1, total - warmup)
            return Swift.max(0, 0.5 * (1 + Foundation.cos(Double.pi * cycles * 2 * progress)))
        case .cosineWithRestarts:
            if warmingUp { return warmupFactor }
            let progress = (step - warmup) / Swift.max(1, total - warmup)
            if progress >= 1 { return 0 }
            return Swift.max(0, 0.5 * (1 + Foundation.cos(Double.pi * (cycles * progress).truncatingRemainder(dividingBy: 1))))
        case .polynomial:
            if warmingUp { return warmupFactor }
            if step > total { return endLearningRate / baseLearningRate }
            let range = baseLearningRate - endLearningRate
            let remaining = 1 - (step - warmup) / (total - warmup)
            return (range * Foundation.pow(remaining, power) + endLearningRate) / baseLearningRate
        }
    }

    /// The learning rate after `step` scheduler steps.
    public func learningRate(step: Int, baseLearningRate: Float) -> Float {
        Float(Double(baseLearningRate) * multiplier(step: step, baseLearningRate: Double(baseLearningRate)))
    }
}
