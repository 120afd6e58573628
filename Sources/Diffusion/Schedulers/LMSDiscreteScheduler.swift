import Foundation
import Tensors

/// Linear multistep sampling of the probability-flow ODE in σ (Karras et al.,
/// k-diffusion's `sample_lms`), as diffusers' `LMSDiscreteScheduler`: the
/// derivative d = (x − x0)/σ of up to `lmsOrder` past steps, weighted by
/// integrals of their Lagrange polynomials over [σᵢ, σᵢ₊₁].
public final class LMSDiscreteScheduler: Scheduler {
    public static let className = "LMSDiscreteScheduler"
    public static let configurationDefaults: KeyValuePairs<String, JSONValue> = [
        "num_train_timesteps": .int(1000), "beta_start": .double(0.0001), "beta_end": .double(0.02),
        "beta_schedule": .string("linear"), "trained_betas": .null, "use_karras_sigmas": .bool(false),
        "use_exponential_sigmas": .bool(false), "use_beta_sigmas": .bool(false), "prediction_type": .string("epsilon"),
        "timestep_spacing": .string("linspace"), "steps_offset": .int(0),
    ]

    public let configuration: SchedulerConfiguration
    public let noiseSchedule: NoiseSchedule
    public let order = 1
    public private(set) var timesteps: [Float] = []
    /// σ at each timestep, then 0.
    public private(set) var sigmas: [Float] = []
    /// How many past derivatives the multistep formula uses (diffusers' `order` argument of `step`).
    public var lmsOrder = 4

    let predictionType: PredictionType
    let spacing: TimestepSpacing
    let stepsOffset: Int
    let useKarrasSigmas: Bool
    let useExponentialSigmas: Bool
    private var derivatives: [Tensor] = []
    private var stepIndex: Int?

    public init(configuration: SchedulerConfiguration) throws {
        var configuration = configuration
        configuration.className = Self.className
        let options = ConfigurationReader(configuration: configuration, defaults: Self.configurationDefaults)
        self.configuration = configuration
        noiseSchedule = try options.noiseSchedule(rescaleKey: false)
        predictionType = options.choice("prediction_type")
        spacing = options.choice("timestep_spacing")
        stepsOffset = options.int("steps_offset")
        useKarrasSigmas = options.bool("use_karras_sigmas")
        useExponentialSigmas = options.bool("use_exponential_sigmas")
        try options.require("use_beta_sigmas", !options.bool("use_beta_sigmas"), "beta sigmas are not implemented")
        try options.check("use_karras_sigmas", !(useKarrasSigmas && useExponentialSigmas), "only one of use_karras_sigmas and use_exponential_sigmas can be used")
        try setTimesteps(noiseSchedule.alphasCumprod.count)
    }

    public convenience init() { try! self.init(configuration: SchedulerConfiguration()) }

    public var initNoiseSigma: Float {
        let maximum = sigmas.max() ?? 0
        return spacing == .leading ? (maximum * maximum + 1).squareRoot() : maximum
    }

    public func setTimesteps(_ count: Int) throws {
        try SchedulerError.check(count, trainTimesteps: trainTimesteps)
        var steps = Spacing.continuous(spacing, trainTimesteps: trainTimesteps, count: count, stepsOffset: stepsOffset)
        let trainingSigmas = noiseSchedule.sigmas
        let logSigmas = SigmaMath.logSigmas(trainingSigmas)
        var values = steps.map { SigmaMath.interpolate(Double($0), trainingSigmas) }
        if useKarrasSigmas || useExponentialSigmas {
            let sigmaMin = values[values.count - 1], sigmaMax = values[0]
            values = useKarrasSigmas ? SigmaMath.karras(sigmaMin: sigmaMin, sigmaMax: sigmaMax, count: count)
                : SigmaMath.exponential(sigmaMin: sigmaMin, sigmaMax: sigmaMax, count: count)
            steps = values.map { Float(SigmaMath.sigmaToT($0, logSigmas)) }
        }
        sigmas = values.map { Float($0) } + [0]
        timesteps = steps
        stepIndex = nil
        derivatives = []
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Float) -> Tensor {
        if stepIndex == nil { stepIndex = SigmaMath.index(of: timestep, in: timesteps) }
        let sigma = sigmas[stepIndex!]
        return StepMath.divide(sample, (sigma * sigma + 1).squareRoot())
    }

    /// ∫ over [σᵢ, σᵢ₊₁] of the Lagrange basis polynomial of past step `current`
    /// (exact: Gauss–Legendre on a polynomial of degree < 4).
    func lmsCoefficient(order: Int, index: Int, current: Int) -> Double {
        func basis(_ tau: Double) -> Double {
            var product = 1.0
            for k in 0..<order where k != current {
                product *= (tau - Double(sigmas[index - k])) / (Double(sigmas[index - current]) - Double(sigmas[index - k]))
            }
            return product
        }
        let nodes = [-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526]
        let weights = [0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538]
        let lower = Double(sigmas[index]), upper = Double(sigmas[index + 1])
        let half = (upper - lower) / 2, middle = (upper + lower) / 2
        return zip(nodes, weights).reduce(0) { $0 + $1.1 * basis(middle + half * $1.0) } * half
    }

    public func step(_ modelOutput: Tensor, timestep: Float, sample: Tensor, noise: Tensor?, generator: inout RandomGenerator) -> SchedulerStepOutput {
        if stepIndex == nil { stepIndex = SigmaMath.index(of: timestep, in: timesteps) }
        let index = stepIndex!
        let sigma = sigmas[index]

        // 1. the predicted original sample x0 from the σ-scaled model output
        let predictedOriginal: Tensor
        switch predictionType {
        case .epsilon: predictedOriginal = sample - modelOutput * sigma
        case .vPrediction:
            predictedOriginal = modelOutput * (-sigma / (sigma * sigma + 1).squareRoot()) + StepMath.divide(sample, sigma * sigma + 1)
        case .sample: predictedOriginal = modelOutput
        }

        // 2. the ODE derivative d = (x − x0)/σ
        let derivative = StepMath.divide(sample - predictedOriginal, sigma)
        derivatives.append(derivative)
        if derivatives.count > lmsOrder { derivatives.removeFirst() }

        // 3. the linear multistep coefficients
        let currentOrder = Swift.min(index + 1, lmsOrder)
        let coefficients = (0..<currentOrder).map { lmsCoefficient(order: currentOrder, index: index, current: $0) }

        // 4. x_{i+1} = x_i + Σ coefficient · derivative (newest derivative first)
        var update: Tensor?
        for (coefficient, derivative) in zip(coefficients, derivatives.reversed()) {
            let term = derivative * Float(coefficient)
            update = update.map { $0 + term } ?? term
        }
        stepIndex = index + 1
        return SchedulerStepOutput(prevSample: sample + update!, predOriginalSample: predictedOriginal)
    }

    /// diffusers' `add_noise` for σ schedules: x0 + σ·ε, σ of each example's timestep in `timesteps`.
    public func addNoise(_ original: Tensor, noise: Tensor, timesteps: [Float]) -> Tensor {
        let perExample = timesteps.map { sigmas[SigmaMath.index(of: $0, in: self.timesteps)] }
        return original + noise * StepMath.perExample(perExample, like: original)
    }
}
