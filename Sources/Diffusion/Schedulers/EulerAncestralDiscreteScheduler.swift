import Foundation
import Tensors

/// Ancestral Euler sampling (k-diffusion's `sample_euler_ancestral`), as
/// diffusers' `EulerAncestralDiscreteScheduler`: an Euler step down to σ_down,
/// then fresh noise of size σ_up. Stochastic at every step.
public final class EulerAncestralDiscreteScheduler: Scheduler {
    public static let className = "EulerAncestralDiscreteScheduler"
    public static let configurationDefaults: KeyValuePairs<String, JSONValue> = [
        "num_train_timesteps": .int(1000), "beta_start": .double(0.0001), "beta_end": .double(0.02),
        "beta_schedule": .string("linear"), "trained_betas": .null, "prediction_type": .string("epsilon"),
        "timestep_spacing": .string("linspace"), "steps_offset": .int(0), "rescale_betas_zero_snr": .bool(false),
    ]

    public let configuration: SchedulerConfiguration
    public let noiseSchedule: NoiseSchedule
    public let order = 1
    public private(set) var timesteps: [Float] = []
    /// σ at each timestep, then 0.
    public private(set) var sigmas: [Float] = []

    let predictionType: PredictionType
    let spacing: TimestepSpacing
    let stepsOffset: Int
    let trainingSigmas: [Float]
    private var stepIndex: Int?

    public init(configuration: SchedulerConfiguration) throws {
        var configuration = configuration
        configuration.className = Self.className
        let options = ConfigurationReader(configuration: configuration, defaults: Self.configurationDefaults)
        self.configuration = configuration
        noiseSchedule = try options.noiseSchedule()
        predictionType = options.choice("prediction_type")
        try options.require("prediction_type", predictionType != .sample, "EulerAncestralDiscreteScheduler supports epsilon and v_prediction")
        spacing = options.choice("timestep_spacing")
        stepsOffset = options.int("steps_offset")
        var cumulative = noiseSchedule.alphasCumprod
        if options.bool("rescale_betas_zero_snr") { cumulative[cumulative.count - 1] = 0x1p-24 }
        trainingSigmas = cumulative.map { ((1 - $0) / $0).squareRoot() }
        sigmas = trainingSigmas.reversed() + [0]
        timesteps = Spacing.linspace(0, Double(cumulative.count - 1), cumulative.count).reversed().map { Float($0) }
    }

    public convenience init() { try! self.init(configuration: SchedulerConfiguration()) }

    public var initNoiseSigma: Float {
        let maximum = sigmas.max() ?? 0
        return spacing == .leading ? (maximum * maximum + 1).squareRoot() : maximum
    }

    public func setTimesteps(_ count: Int) throws {
        try SchedulerError.check(count, trainTimesteps: trainTimesteps)
        timesteps = Spacing.continuous(spacing, trainTimesteps: trainTimesteps, count: count, stepsOffset: stepsOffset)
        sigmas = timesteps.map { Float(SigmaMath.interpolate(Double($0), trainingSigmas)) } + [0]
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

        // 1. the predicted original sample x0 from the σ-scaled model output
        let predictedOriginal: Tensor
        switch predictionType {
        case .epsilon: predictedOriginal = sample - modelOutput * sigma
        case .vPrediction:
            predictedOriginal = modelOutput * (-sigma / (sigma * sigma + 1).squareRoot()) + StepMath.divide(sample, sigma * sigma + 1)
        case .sample: fatalError("EulerAncestralDiscreteScheduler: sample prediction is not supported")
        }

        // 2. split the step: deterministic down to σ_down, noise σ_up on top
        let sigmaFrom = sigmas[index], sigmaTo = sigmas[index + 1]
        let sigmaUp = (sigmaTo * sigmaTo * (sigmaFrom * sigmaFrom - sigmaTo * sigmaTo) / (sigmaFrom * sigmaFrom)).squareRoot()
        let sigmaDown = (sigmaTo * sigmaTo - sigmaUp * sigmaUp).squareRoot()

        // 3. an Euler step of the ODE to σ_down
        let derivative = StepMath.divide(sample - predictedOriginal, sigma)
        let dt = sigmaDown - sigma
        var previousSample = sample + derivative * dt

        // 4. ancestral noise
        let noise = StepMath.noise(noise, shape: modelOutput.shape, generator: &generator)
        previousSample = previousSample + noise * sigmaUp
        stepIndex = index + 1
        return SchedulerStepOutput(prevSample: previousSample, predOriginalSample: predictedOriginal)
    }

    /// diffusers' `add_noise` for σ schedules: x0 + σ·ε, σ of each example's timestep in `timesteps`.
    public func addNoise(_ original: Tensor, noise: Tensor, timesteps: [Float]) -> Tensor {
        let perExample = timesteps.map { sigmas[SigmaMath.index(of: $0, in: self.timesteps)] }
        return original + noise * StepMath.perExample(perExample, like: original)
    }
}
