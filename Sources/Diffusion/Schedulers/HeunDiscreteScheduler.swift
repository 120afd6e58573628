import Foundation
import Tensors

/// Heun's second-order method for the probability-flow ODE in σ (algorithm 1
/// of Karras et al., 2022), as diffusers' `HeunDiscreteScheduler`.
///
/// Each step costs two model evaluations, so `timesteps` lists every interior
/// timestep twice (`order` is 2): the first call takes an Euler step and
/// remembers it, the second corrects it with the average slope.
public final class HeunDiscreteScheduler: Scheduler {
    public static let className = "HeunDiscreteScheduler"
    public static let configurationDefaults: KeyValuePairs<String, JSONValue> = [
        "num_train_timesteps": .int(1000), "beta_start": .double(0.00085), "beta_end": .double(0.012),
        "beta_schedule": .string("linear"), "trained_betas": .null, "prediction_type": .string("epsilon"),
        "use_karras_sigmas": .bool(false), "use_exponential_sigmas": .bool(false), "use_beta_sigmas": .bool(false),
        "clip_sample": .bool(false), "clip_sample_range": .double(1.0), "timestep_spacing": .string("linspace"),
        "steps_offset": .int(0),
    ]

    public let configuration: SchedulerConfiguration
    public let noiseSchedule: NoiseSchedule
    public let order = 2
    public private(set) var timesteps: [Float] = []
    /// σ per entry of `timesteps` (interior values doubled), then 0.
    public private(set) var sigmas: [Float] = []

    let predictionType: PredictionType
    let spacing: TimestepSpacing
    let stepsOffset: Int
    let useKarrasSigmas: Bool
    let useExponentialSigmas: Bool
    let clipSample: Bool
    let clipSampleRange: Float
    private var stepIndex: Int?
    /// The first-order step's slope, size and starting sample, kept for the correction.
    private var previousDerivative: Tensor?
    private var stepSize: Float?
    private var startSample: Tensor?

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
        clipSample = options.bool("clip_sample")
        clipSampleRange = Float(options.double("clip_sample_range"))
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
        let single = values.map { Float($0) } + [0]
        // [σ₀, σ₁, σ₁, …, σₙ₋₁, σₙ₋₁, 0] and [t₀, t₁, t₁, …, tₙ₋₁, tₙ₋₁]
        sigmas = [single[0]] + single.dropFirst().dropLast().flatMap { [$0, $0] } + [single[single.count - 1]]
        timesteps = [steps[0]] + steps.dropFirst().flatMap { [$0, $0] }
        previousDerivative = nil
        stepSize = nil
        startSample = nil
        stepIndex = nil
    }

    /// True before the first (Euler) half of a step.
    public var isFirstOrderStage: Bool { stepSize == nil }

    public func scaleModelInput(_ sample: Tensor, timestep: Float) -> Tensor {
        if stepIndex == nil { stepIndex = SigmaMath.index(of: timestep, in: timesteps) }
        let sigma = sigmas[stepIndex!]
        return StepMath.divide(sample, (sigma * sigma + 1).squareRoot())
    }

    public func step(_ modelOutput: Tensor, timestep: Float, sample: Tensor, noise: Tensor?, generator: inout RandomGenerator) -> SchedulerStepOutput {
        if stepIndex == nil { stepIndex = SigmaMath.index(of: timestep, in: timesteps) }
        let index = stepIndex!
        let firstOrder = isFirstOrderStage
        let sigma = firstOrder ? sigmas[index] : sigmas[index - 1]
        let sigmaNext = firstOrder ? sigmas[index + 1] : sigmas[index]
        let sigmaHat = sigma // γ = 0: Heun here adds no churn

        // 1. the predicted original sample x0, from the σ the model was evaluated at
        let sigmaInput = firstOrder ? sigmaHat : sigmaNext
        var predictedOriginal: Tensor
        switch predictionType {
        case .epsilon: predictedOriginal = sample - modelOutput * sigmaInput
        case .vPrediction:
            predictedOriginal = modelOutput * (-sigmaInput / (sigmaInput * sigmaInput + 1).squareRoot())
                + StepMath.divide(sample, sigmaInput * sigmaInput + 1)
        case .sample: predictedOriginal = modelOutput
        }
        if clipSample { predictedOriginal = predictedOriginal.clamped(min: -clipSampleRange, max: clipSampleRange) }

        // 2. first stage: an Euler step, remembered; second stage: average the two slopes
        let derivative: Tensor, dt: Float, base: Tensor
        if firstOrder {
            derivative = StepMath.divide(sample - predictedOriginal, sigmaHat)
            dt = sigmaNext - sigmaHat
            base = sample
            previousDerivative = derivative
            stepSize = dt
            startSample = sample
        } else {
            let slope = StepMath.divide(sample - predictedOriginal, sigmaNext)
            derivative = (previousDerivative! + slope) / 2
            dt = stepSize!
            base = startSample!
            previousDerivative = nil
            stepSize = nil
            startSample = nil
        }
        stepIndex = index + 1
        return SchedulerStepOutput(prevSample: base + derivative * dt, predOriginalSample: predictedOriginal)
    }

    /// diffusers' `add_noise` for σ schedules: x0 + σ·ε, σ of each example's timestep in `timesteps`.
    public func addNoise(_ original: Tensor, noise: Tensor, timesteps: [Float]) -> Tensor {
        let perExample = timesteps.map { sigmas[SigmaMath.index(of: $0, in: self.timesteps)] }
        return original + noise * StepMath.perExample(perExample, like: original)
    }
}
