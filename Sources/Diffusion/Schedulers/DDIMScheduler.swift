import Foundation
import Tensors

/// Denoising diffusion implicit models (Song et al., 2020), as diffusers'
/// `DDIMScheduler`. `eta` = 0 samples deterministically; `eta` = 1 matches
/// DDPM's posterior variance; in between interpolates.
public final class DDIMScheduler: Scheduler {
    public static let className = "DDIMScheduler"
    public static let configurationDefaults: KeyValuePairs<String, JSONValue> = [
        "num_train_timesteps": .int(1000), "beta_start": .double(0.0001), "beta_end": .double(0.02),
        "beta_schedule": .string("linear"), "trained_betas": .null, "clip_sample": .bool(true),
        "set_alpha_to_one": .bool(true), "steps_offset": .int(0), "prediction_type": .string("epsilon"),
        "thresholding": .bool(false), "dynamic_thresholding_ratio": .double(0.995), "clip_sample_range": .double(1.0),
        "sample_max_value": .double(1.0), "timestep_spacing": .string("leading"), "rescale_betas_zero_snr": .bool(false),
    ]

    public let configuration: SchedulerConfiguration
    public let noiseSchedule: NoiseSchedule
    public let order = 1
    public let initNoiseSigma: Float = 1
    public private(set) var timesteps: [Float]

    /// η of formula (16): the weight of the noise added each step (0: deterministic).
    public var eta: Float = 0
    /// Re-derive ε from the clipped x0 (as Glide does) before taking the step.
    public var useClippedModelOutput = false

    let predictionType: PredictionType
    let clipSample: Bool
    let clipSampleRange: Float
    let thresholding: Bool
    let thresholdingRatio: Double
    let sampleMaxValue: Double
    let spacing: TimestepSpacing
    let stepsOffset: Int
    /// ᾱ before the first training timestep: 1, or ᾱ₀ when `set_alpha_to_one` is false.
    let finalAlphaCumprod: Float
    private var inferenceSteps: Int?

    public init(configuration: SchedulerConfiguration) throws {
        var configuration = configuration
        configuration.className = Self.className
        let options = ConfigurationReader(configuration: configuration, defaults: Self.configurationDefaults)
        self.configuration = configuration
        noiseSchedule = try options.noiseSchedule()
        predictionType = options.choice("prediction_type")
        clipSample = options.bool("clip_sample")
        clipSampleRange = Float(options.double("clip_sample_range"))
        thresholding = options.bool("thresholding")
        thresholdingRatio = options.double("dynamic_thresholding_ratio")
        sampleMaxValue = options.double("sample_max_value")
        spacing = options.choice("timestep_spacing")
        stepsOffset = options.int("steps_offset")
        finalAlphaCumprod = options.bool("set_alpha_to_one") ? 1 : noiseSchedule.alphasCumprod[0]
        timesteps = (0..<noiseSchedule.alphasCumprod.count).reversed().map { Float($0) }
    }

    public convenience init() { try! self.init(configuration: SchedulerConfiguration()) }

    public func setTimesteps(_ count: Int) throws {
        try SchedulerError.check(count, trainTimesteps: trainTimesteps)
        inferenceSteps = count
        timesteps = Spacing.discrete(spacing, trainTimesteps: trainTimesteps, count: count, stepsOffset: stepsOffset).map { Float($0) }
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Float) -> Tensor { sample }

    /// σ_t(η)² / η² of formula (16): (1 − ᾱ_{t−1})/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_{t−1}).
    func variance(_ alphaProduct: Float, _ alphaProductPrevious: Float) -> Float {
        let betaProduct = 1 - alphaProduct
        let betaProductPrevious = 1 - alphaProductPrevious
        return (betaProductPrevious / betaProduct) * (1 - alphaProduct / alphaProductPrevious)
    }

    public func step(_ modelOutput: Tensor, timestep: Float, sample: Tensor, noise: Tensor?, generator: inout RandomGenerator) -> SchedulerStepOutput {
        guard let inferenceSteps else { fatalError("DDIMScheduler.step: call setTimesteps first") }
        let t = Int(timestep)
        // 1. the previous step value (= t − T/n)
        let previous = t - trainTimesteps / inferenceSteps

        // 2. compute alphas, betas
        let alphaProduct = noiseSchedule.alphasCumprod[t]
        let alphaProductPrevious = previous >= 0 ? noiseSchedule.alphasCumprod[previous] : finalAlphaCumprod
        let betaProduct = 1 - alphaProduct

        // 3. the predicted original sample x0 and noise ε, formula (12)
        var predictedOriginal: Tensor
        var predictedEpsilon: Tensor
        switch predictionType {
        case .epsilon:
            predictedOriginal = StepMath.divide(sample - modelOutput * betaProduct.squareRoot(), alphaProduct.squareRoot())
            predictedEpsilon = modelOutput
        case .sample:
            predictedOriginal = modelOutput
            predictedEpsilon = StepMath.divide(sample - predictedOriginal * alphaProduct.squareRoot(), betaProduct.squareRoot())
        case .vPrediction:
            predictedOriginal = sample * alphaProduct.squareRoot() - modelOutput * betaProduct.squareRoot()
            predictedEpsilon = modelOutput * alphaProduct.squareRoot() + sample * betaProduct.squareRoot()
        }

        // 4. clip or threshold x0
        if thresholding {
            predictedOriginal = StepMath.threshold(predictedOriginal, ratio: thresholdingRatio, maxValue: sampleMaxValue)
        } else if clipSample {
            predictedOriginal = predictedOriginal.clamped(min: -clipSampleRange, max: clipSampleRange)
        }

        // 5. the variance σ_t(η), formula (16)
        let standardDeviation = eta * variance(alphaProduct, alphaProductPrevious).squareRoot()
        if useClippedModelOutput {
            // ε re-derived from the clipped x0, as in Glide
            predictedEpsilon = StepMath.divide(sample - predictedOriginal * alphaProduct.squareRoot(), betaProduct.squareRoot())
        }

        // 6. the "direction pointing to x_t" of formula (12)
        let direction = predictedEpsilon * (1 - alphaProductPrevious - standardDeviation * standardDeviation).squareRoot()

        // 7. x_{t−1} without the random noise, formula (12)
        var previousSample = predictedOriginal * alphaProductPrevious.squareRoot() + direction

        // 8. add the noise σ_t·z
        if eta > 0 {
            let noise = StepMath.noise(noise, shape: modelOutput.shape, generator: &generator)
            previousSample = previousSample + noise * standardDeviation
        }
        return SchedulerStepOutput(prevSample: previousSample, predOriginalSample: predictedOriginal)
    }
}
