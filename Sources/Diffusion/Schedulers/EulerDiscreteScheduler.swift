import Foundation
import Tensors

/// Euler steps of the probability-flow ODE in σ (algorithm 2 of Karras et al.,
/// 2022), as diffusers' `EulerDiscreteScheduler`. With `sChurn` > 0 it adds
/// noise ("churn") before each step within [`sTmin`, `sTmax`].
public final class EulerDiscreteScheduler: Scheduler {
    public static let className = "EulerDiscreteScheduler"
    public static let configurationDefaults: KeyValuePairs<String, JSONValue> = [
        "num_train_timesteps": .int(1000), "beta_start": .double(0.0001), "beta_end": .double(0.02),
        "beta_schedule": .string("linear"), "trained_betas": .null, "prediction_type": .string("epsilon"),
        "interpolation_type": .string("linear"), "use_karras_sigmas": .bool(false), "use_exponential_sigmas": .bool(false),
        "use_beta_sigmas": .bool(false), "sigma_min": .null, "sigma_max": .null, "timestep_spacing": .string("linspace"),
        "timestep_type": .string("discrete"), "steps_offset": .int(0), "rescale_betas_zero_snr": .bool(false),
        "final_sigmas_type": .string("zero"),
    ]

    public let configuration: SchedulerConfiguration
    public let noiseSchedule: NoiseSchedule
    public let order = 1
    public private(set) var timesteps: [Float] = []
    /// σ at each timestep, then the final σ (0, or σ_min).
    public private(set) var sigmas: [Float] = []

    /// Churn: the amount of noise added before each step (0: deterministic).
    public var sChurn: Double = 0
    /// Churn only applies for σ in [`sTmin`, `sTmax`].
    public var sTmin: Double = 0
    public var sTmax: Double = .infinity
    /// Scale of the churn noise.
    public var sNoise: Double = 1

    let predictionType: PredictionType
    let spacing: TimestepSpacing
    let stepsOffset: Int
    let logLinear: Bool
    let useKarrasSigmas: Bool
    let useExponentialSigmas: Bool
    let sigmaMin: Double?
    let sigmaMax: Double?
    let continuousTimesteps: Bool
    let finalSigmaIsMinimum: Bool
    /// ᾱ with the zero-SNR fix (the last value raised to 2⁻²⁴), for the training sigmas.
    let alphasCumprod: [Float]
    private var stepIndex: Int?

    public init(configuration: SchedulerConfiguration) throws {
        var configuration = configuration
        configuration.className = Self.className
        let options = ConfigurationReader(configuration: configuration, defaults: Self.configurationDefaults)
        self.configuration = configuration
        noiseSchedule = try options.noiseSchedule()
        predictionType = options.choice("prediction_type")
        spacing = options.choice("timestep_spacing")
        stepsOffset = options.int("steps_offset")
        logLinear = options.string("interpolation_type") == "log_linear"
        useKarrasSigmas = options.bool("use_karras_sigmas")
        useExponentialSigmas = options.bool("use_exponential_sigmas")
        try options.require("use_beta_sigmas", !options.bool("use_beta_sigmas"), "beta sigmas are not implemented")
        try options.check("use_karras_sigmas", !(useKarrasSigmas && useExponentialSigmas), "only one of use_karras_sigmas and use_exponential_sigmas can be used")
        sigmaMin = options.optionalDouble("sigma_min")
        sigmaMax = options.optionalDouble("sigma_max")
        continuousTimesteps = options.string("timestep_type") == "continuous" && predictionType == .vPrediction
        finalSigmaIsMinimum = options.string("final_sigmas_type") == "sigma_min"
        var cumulative = noiseSchedule.alphasCumprod
        if options.bool("rescale_betas_zero_snr") { cumulative[cumulative.count - 1] = 0x1p-24 }
        alphasCumprod = cumulative
        // Before setTimesteps: every training timestep.
        let trainingSigmas = Array(EulerDiscreteScheduler.sigmas(cumulative).reversed())
        sigmas = trainingSigmas + [0]
        timesteps = continuousTimesteps ? trainingSigmas.map { 0.25 * Foundation.log($0) }
            : Spacing.linspace(0, Double(cumulative.count - 1), cumulative.count).reversed().map { Float($0) }
    }

    public convenience init() { try! self.init(configuration: SchedulerConfiguration()) }

    static func sigmas(_ alphasCumprod: [Float]) -> [Float] { alphasCumprod.map { ((1 - $0) / $0).squareRoot() } }

    public var initNoiseSigma: Float {
        let maximum = sigmas.max() ?? 0
        return spacing == .leading ? (maximum * maximum + 1).squareRoot() : maximum
    }

    public func setTimesteps(_ count: Int) throws {
        try SchedulerError.check(count, trainTimesteps: trainTimesteps)
        var steps = Spacing.continuous(spacing, trainTimesteps: trainTimesteps, count: count, stepsOffset: stepsOffset)
        let trainingSigmas = EulerDiscreteScheduler.sigmas(alphasCumprod)
        let logSigmas = SigmaMath.logSigmas(trainingSigmas)
        var values: [Double]
        if logLinear {
            // torch.linspace(log σ_max, log σ_min, n + 1).exp() in float32
            let high = Foundation.log(trainingSigmas[trainingSigmas.count - 1]), low = Foundation.log(trainingSigmas[0])
            values = NoiseSchedule.torchLinspace(high, low, count + 1).map { Double(Foundation.exp($0)) }
        } else {
            values = steps.map { SigmaMath.interpolate(Double($0), trainingSigmas) }
        }
        if useKarrasSigmas || useExponentialSigmas {
            let low = sigmaMin ?? values[values.count - 1], high = sigmaMax ?? values[0]
            values = useKarrasSigmas ? SigmaMath.karras(sigmaMin: low, sigmaMax: high, count: count)
                : SigmaMath.exponential(sigmaMin: low, sigmaMax: high, count: count)
            steps = values.map { Float(SigmaMath.sigmaToT($0, logSigmas)) }
        }
        let last: Float = finalSigmaIsMinimum ? ((1 - alphasCumprod[0]) / alphasCumprod[0]).squareRoot() : 0
        sigmas = values.map { Float($0) } + [last]
        timesteps = continuousTimesteps ? sigmas.dropLast().map { 0.25 * Foundation.log($0) } : steps
        stepIndex = nil
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Float) -> Tensor {
        if stepIndex == nil { stepIndex = SigmaMath.index(of: timestep, in: timesteps) }
        let sigma = sigmas[stepIndex!]
        return StepMath.divide(sample, (sigma * sigma + 1).squareRoot())
    }

    public func step(_ modelOutput: Tensor, timestep: Float, sample: Tensor, noise: Tensor?, generator: inout RandomGenerator) -> SchedulerStepOutput {
        if stepIndex == nil { stepIndex = SigmaMath.index(of: timestep, in: timesteps) }
        let index = stepIndex!
        let sigma = sigmas[index]

        // 1. churn: raise σ to σ̂ = σ(1 + γ) by adding noise
        let gamma = sTmin <= Double(sigma) && Double(sigma) <= sTmax ? Swift.min(sChurn / Double(sigmas.count - 1), 2.0.squareRoot() - 1) : 0
        let sigmaHat = sigma * Float(gamma + 1)
        var sample = sample
        if gamma > 0 {
            let noise = StepMath.noise(noise, shape: modelOutput.shape, generator: &generator)
            sample = sample + (noise * Float(sNoise)) * (sigmaHat * sigmaHat - sigma * sigma).squareRoot()
        }

        // 2. the predicted original sample x0 from the σ-scaled model output
        let predictedOriginal: Tensor
        switch predictionType {
        case .sample: predictedOriginal = modelOutput
        case .epsilon: predictedOriginal = sample - modelOutput * sigmaHat
        case .vPrediction:
            predictedOriginal = modelOutput * (-sigma / (sigma * sigma + 1).squareRoot()) + StepMath.divide(sample, sigma * sigma + 1)
        }

        // 3. the ODE derivative, and an Euler step to the next σ
        let derivative = StepMath.divide(sample - predictedOriginal, sigmaHat)
        let dt = sigmas[index + 1] - sigmaHat
        stepIndex = index + 1
        return SchedulerStepOutput(prevSample: sample + derivative * dt, predOriginalSample: predictedOriginal)
    }

    /// diffusers' `add_noise` for σ schedules: x0 + σ·ε, σ of each example's timestep in `timesteps`.
    public func addNoise(_ original: Tensor, noise: Tensor, timesteps: [Float]) -> Tensor {
        let perExample = timesteps.map { sigmas[SigmaMath.index(of: $0, in: self.timesteps)] }
        return original + noise * StepMath.perExample(perExample, like: original)
    }
}
