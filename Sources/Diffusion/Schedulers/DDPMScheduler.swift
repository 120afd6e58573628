import Foundation
import Tensors

/// Denoising diffusion probabilistic models (Ho et al., 2020): ancestral
/// sampling from the posterior q(x_{t−1} | x_t, x0), as diffusers'
/// `DDPMScheduler`. Stochastic: every step but the last adds noise.
public final class DDPMScheduler: Scheduler {
    public static let className = "DDPMScheduler"
    public static let configurationDefaults: KeyValuePairs<String, JSONValue> = [
        "num_train_timesteps": .int(1000), "beta_start": .double(0.0001), "beta_end": .double(0.02),
        "beta_schedule": .string("linear"), "trained_betas": .null, "variance_type": .string("fixed_small"),
        "clip_sample": .bool(true), "prediction_type": .string("epsilon"), "thresholding": .bool(false),
        "dynamic_thresholding_ratio": .double(0.995), "clip_sample_range": .double(1.0), "sample_max_value": .double(1.0),
        "timestep_spacing": .string("leading"), "steps_offset": .int(0), "rescale_betas_zero_snr": .bool(false),
    ]

    public let configuration: SchedulerConfiguration
    public let noiseSchedule: NoiseSchedule
    public let order = 1
    public let initNoiseSigma: Float = 1
    public private(set) var timesteps: [Float]

    let predictionType: PredictionType
    let varianceType: VarianceType
    let clipSample: Bool
    let clipSampleRange: Float
    let thresholding: Bool
    let thresholdingRatio: Double
    let sampleMaxValue: Double
    let spacing: TimestepSpacing
    let stepsOffset: Int
    /// Whether `setTimesteps` has run (before it, the previous timestep is t − 1).
    private var inferenceSteps: Int?

    public init(configuration: SchedulerConfiguration) throws {
        var configuration = configuration
        configuration.className = Self.className
        let options = ConfigurationReader(configuration: configuration, defaults: Self.configurationDefaults)
        self.configuration = configuration
        noiseSchedule = try options.noiseSchedule()
        predictionType = options.choice("prediction_type")
        guard let variance = options.string("variance_type").flatMap(VarianceType.init(rawValue:)) else {
            throw SchedulerConfigurationError.invalidValue(key: "variance_type", value: options.value("variance_type"), reason: "DDPMScheduler needs a variance type")
        }
        varianceType = variance
        clipSample = options.bool("clip_sample")
        clipSampleRange = Float(options.double("clip_sample_range"))
        thresholding = options.bool("thresholding")
        thresholdingRatio = options.double("dynamic_thresholding_ratio")
        sampleMaxValue = options.double("sample_max_value")
        spacing = options.choice("timestep_spacing")
        stepsOffset = options.int("steps_offset")
        timesteps = (0..<noiseSchedule.alphasCumprod.count).reversed().map { Float($0) }
    }

    public convenience init() { try! self.init(configuration: SchedulerConfiguration()) }

    public func setTimesteps(_ count: Int) throws {
        try SchedulerError.check(count, trainTimesteps: trainTimesteps)
        inferenceSteps = count
        timesteps = Spacing.discrete(spacing, trainTimesteps: trainTimesteps, count: count, stepsOffset: stepsOffset).map { Float($0) }
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Float) -> Tensor { sample }

    /// The timestep after `t` in the schedule, or −1 after the last.
    func previousTimestep(_ t: Int) -> Int {
        guard inferenceSteps != nil else { return t - 1 }
        guard let index = timesteps.firstIndex(of: Float(t)) else {
            fatalError("DDPMScheduler.step: timestep \(t) is not one of the scheduler's timesteps")
        }
        return index == timesteps.count - 1 ? -1 : Int(timesteps[index + 1])
    }

    /// The posterior variance of formula (6)–(7), transformed by `variance_type`
    /// (a scalar, or for learned types a tensor).
    func variance(_ t: Int, predictedVariance: Tensor?) -> (scalar: Float, tensor: Tensor?) {
        let previous = previousTimestep(t)
        let alphaProduct = noiseSchedule.alphasCumprod[t]
        let alphaProductPrevious: Float = previous >= 0 ? noiseSchedule.alphasCumprod[previous] : 1
        let currentBeta = 1 - alphaProduct / alphaProductPrevious
        // We take logs of the variance, so keep it away from zero.
        let variance = Swift.max((1 - alphaProductPrevious) / (1 - alphaProduct) * currentBeta, 1e-20)
        switch varianceType {
        case .fixedSmall: return (variance, nil)
        case .fixedSmallLog: return (Foundation.exp(0.5 * Foundation.log(variance)), nil)
        case .fixedLarge: return (currentBeta, nil)
        case .fixedLargeLog: return (Foundation.log(currentBeta), nil)
        case .learned: return (0, predictedVariance)
        case .learnedRange:
            guard let predictedVariance else { return (variance, nil) }
            let minimumLog = Foundation.log(variance), maximumLog = Foundation.log(currentBeta)
            let fraction = (predictedVariance + 1) / 2
            return (0, fraction * maximumLog + (1 - fraction) * minimumLog)
        }
    }

    public func step(_ modelOutput: Tensor, timestep: Float, sample: Tensor, noise: Tensor?, generator: inout RandomGenerator) -> SchedulerStepOutput {
        let t = Int(timestep)
        let previous = previousTimestep(t)
        var modelOutput = modelOutput
        var predictedVariance: Tensor?
        let channels = sample.shape[1]
        if modelOutput.shape[1] == channels * 2 && (varianceType == .learned || varianceType == .learnedRange) {
            predictedVariance = modelOutput.narrowed(axis: 1, start: channels, length: channels)
            modelOutput = modelOutput.narrowed(axis: 1, start: 0, length: channels)
        }

        // 1. compute alphas, betas
        let alphaProduct = noiseSchedule.alphasCumprod[t]
        let alphaProductPrevious: Float = previous >= 0 ? noiseSchedule.alphasCumprod[previous] : 1
        let betaProduct = 1 - alphaProduct
        let betaProductPrevious = 1 - alphaProductPrevious
        let currentAlpha = alphaProduct / alphaProductPrevious
        let currentBeta = 1 - currentAlpha

        // 2. compute the predicted original sample x0, formula (15) of the DDPM paper
        var predictedOriginal = StepMath.predictedOriginal(modelOutput, sample: sample, type: predictionType,
                                                           alpha: alphaProduct.squareRoot(), sigma: betaProduct.squareRoot())

        // 3. clip or threshold the predicted x0
        if thresholding {
            predictedOriginal = StepMath.threshold(predictedOriginal, ratio: thresholdingRatio, maxValue: sampleMaxValue)
        } else if clipSample {
            predictedOriginal = predictedOriginal.clamped(min: -clipSampleRange, max: clipSampleRange)
        }

        // 4. coefficients of x0 and x_t in the posterior mean, formula (7)
        let originalCoefficient = (alphaProductPrevious.squareRoot() * currentBeta) / betaProduct
        let currentCoefficient = currentAlpha.squareRoot() * betaProductPrevious / betaProduct

        // 5. the posterior mean µ_t
        var previousSample = predictedOriginal * originalCoefficient + sample * currentCoefficient

        // 6. add noise
        if t > 0 {
            let variance = self.variance(t, predictedVariance: predictedVariance)
            let noise = StepMath.noise(noise, shape: modelOutput.shape, generator: &generator)
            let term: Tensor
            switch varianceType {
            case .fixedSmallLog: term = noise * variance.scalar
            case .fixedLargeLog:
                // Glide's log variance: the noise scale is exp(½·log β). (diffusers 0.42 takes the
                // square root of the log here, which is NaN; this follows the intended formula.)
                term = noise * Foundation.exp(0.5 * variance.scalar)
            case .learnedRange:
                if let logVariance = variance.tensor { term = (logVariance * 0.5).exp() * noise }
                else { term = noise * Foundation.exp(0.5 * Foundation.log(variance.scalar)) }
            case .learned:
                term = (variance.tensor ?? Tensor(scalar: 0)).sqrt() * noise
            default: term = noise * variance.scalar.squareRoot()
            }
            previousSample = previousSample + term
        }
        return SchedulerStepOutput(prevSample: previousSample, predOriginalSample: predictedOriginal)
    }
}
