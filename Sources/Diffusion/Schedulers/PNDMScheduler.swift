import Foundation
import Tensors

/// Pseudo numerical methods for diffusion models (Liu et al., 2022), as
/// diffusers' `PNDMScheduler`: a few Runge–Kutta (PRK) steps to start, then
/// linear multistep (PLMS) steps. With `skip_prk_steps` it is plain PLMS,
/// Stable Diffusion's original sampler.
///
/// diffusers returns no x0 for PNDM; this returns the model's own prediction at
/// the step: x0 from the model output at (`timestep`, `sample`).
public final class PNDMScheduler: Scheduler {
    public static let className = "PNDMScheduler"
    public static let configurationDefaults: KeyValuePairs<String, JSONValue> = [
        "num_train_timesteps": .int(1000), "beta_start": .double(0.0001), "beta_end": .double(0.02),
        "beta_schedule": .string("linear"), "trained_betas": .null, "skip_prk_steps": .bool(false),
        "set_alpha_to_one": .bool(false), "prediction_type": .string("epsilon"),
        "timestep_spacing": .string("leading"), "steps_offset": .int(0),
    ]

    public let configuration: SchedulerConfiguration
    public let noiseSchedule: NoiseSchedule
    public let order = 1
    public let initNoiseSigma: Float = 1
    public private(set) var timesteps: [Float] = []

    let predictionType: PredictionType
    let skipPRKSteps: Bool
    let spacing: TimestepSpacing
    let stepsOffset: Int
    let finalAlphaCumprod: Float
    /// The PRK order: four model evaluations per Runge–Kutta step.
    let pndmOrder = 4

    private var inferenceSteps: Int?
    private var prkTimesteps: [Int] = []
    /// Past model outputs (ε) for the multistep formula.
    private var ets: [Tensor] = []
    private var counter = 0
    /// The Runge–Kutta weighted sum of model outputs so far.
    private var currentModelOutput: Tensor?
    private var currentSample: Tensor?

    public init(configuration: SchedulerConfiguration) throws {
        var configuration = configuration
        configuration.className = Self.className
        let options = ConfigurationReader(configuration: configuration, defaults: Self.configurationDefaults)
        self.configuration = configuration
        noiseSchedule = try options.noiseSchedule(rescaleKey: false)
        predictionType = options.choice("prediction_type")
        try options.require("prediction_type", predictionType != .sample, "PNDMScheduler supports epsilon and v_prediction")
        skipPRKSteps = options.bool("skip_prk_steps")
        spacing = options.choice("timestep_spacing")
        stepsOffset = options.int("steps_offset")
        finalAlphaCumprod = options.bool("set_alpha_to_one") ? 1 : noiseSchedule.alphasCumprod[0]
    }

    public convenience init() { try! self.init(configuration: SchedulerConfiguration()) }

    public func setTimesteps(_ count: Int) throws {
        try SchedulerError.check(count, trainTimesteps: trainTimesteps)
        inferenceSteps = count
        // Ascending base timesteps.
        let base: [Int]
        switch spacing {
        case .linspace:
            base = Spacing.linspace(0, Double(trainTimesteps - 1), count).map { Int(Spacing.round($0)) }
        case .leading:
            let ratio = trainTimesteps / count
            base = (0..<count).map { $0 * ratio + stepsOffset }
        case .trailing:
            base = Spacing.arange(Double(trainTimesteps), 0, -Double(trainTimesteps) / Double(count)).reversed().map { Int(Spacing.round($0)) - 1 }
        }
        let plms: [Int]
        if skipPRKSteps {
            // An extra copy of the second-to-last: PLMS needs a warm-up step.
            prkTimesteps = []
            plms = Array((base.dropLast() + base.dropLast().suffix(1) + base.suffix(1)).reversed())  // [:-1], [-2:-1], [-1:]
        } else {
            let half = trainTimesteps / count / 2
            let last = base.suffix(pndmOrder)
            let repeated = last.flatMap { [$0, $0 + half] }
            // prk_timesteps[:-1].repeat(2)[1:-1], reversed
            let doubled = repeated.dropLast().flatMap { [$0, $0] }
            prkTimesteps = Array(doubled.dropFirst().dropLast().reversed())
            plms = Array(base.dropLast(3).reversed())
        }
        timesteps = (prkTimesteps + plms).map { Float($0) }
        ets = []
        counter = 0
        currentModelOutput = nil
        currentSample = nil
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Float) -> Tensor { sample }

    public func step(_ modelOutput: Tensor, timestep: Float, sample: Tensor, noise: Tensor?, generator: inout RandomGenerator) -> SchedulerStepOutput {
        guard inferenceSteps != nil else { fatalError("PNDMScheduler.step: call setTimesteps first") }
        let t = Int(timestep)
        let alphaProduct = noiseSchedule.alphasCumprod[t]
        let predictedOriginal = StepMath.predictedOriginal(modelOutput, sample: sample, type: predictionType,
                                                           alpha: alphaProduct.squareRoot(), sigma: (1 - alphaProduct).squareRoot())
        let previousSample: Tensor
        if counter < prkTimesteps.count && !skipPRKSteps {
            previousSample = stepPRK(modelOutput, timestep: t, sample: sample)
        } else {
            previousSample = stepPLMS(modelOutput, timestep: t, sample: sample)
        }
        return SchedulerStepOutput(prevSample: previousSample, predOriginalSample: predictedOriginal)
    }

    /// A Runge–Kutta sub-step: four model evaluations per step (formula (13)).
    private func stepPRK(_ modelOutput: Tensor, timestep: Int, sample: Tensor) -> Tensor {
        let differenceToPrevious = counter % 2 != 0 ? 0 : trainTimesteps / inferenceSteps! / 2
        let previousTimestep = timestep - differenceToPrevious
        let baseTimestep = prkTimesteps[counter / 4 * 4]
        var output = modelOutput
        switch counter % 4 {
        case 0:
            currentModelOutput = accumulate(modelOutput * Float(1.0 / 6.0))
            ets.append(modelOutput)
            currentSample = sample
        case 1, 2:
            currentModelOutput = accumulate(modelOutput * Float(1.0 / 3.0))
        default:
            output = accumulate(modelOutput * Float(1.0 / 6.0))
            currentModelOutput = nil
        }
        let previous = previousSample(currentSample ?? sample, timestep: baseTimestep, previousTimestep: previousTimestep, modelOutput: output)
        counter += 1
        return previous
    }

    private func accumulate(_ term: Tensor) -> Tensor {
        if let currentModelOutput { return currentModelOutput + term }
        return term
    }

    /// A linear multistep step (formula (12)), with the Adams–Bashforth weights.
    private func stepPLMS(_ modelOutput: Tensor, timestep: Int, sample: Tensor) -> Tensor {
        precondition(skipPRKSteps || ets.count >= 3, "PNDMScheduler: PLMS steps need 12 PRK steps first (or skip_prk_steps)")
        let stride = trainTimesteps / inferenceSteps!
        var timestep = timestep
        var previousTimestep = timestep - stride
        if counter != 1 {
            ets = Array(ets.suffix(3))
            ets.append(modelOutput)
        } else {
            previousTimestep = timestep
            timestep = timestep + stride
        }
        var sample = sample
        var output: Tensor
        let count = ets.count
        if count == 1 && counter == 0 {
            output = modelOutput
            currentSample = sample
        } else if count == 1 && counter == 1 {
            output = (modelOutput + ets[count - 1]) / 2
            sample = currentSample!
            currentSample = nil
        } else if count == 2 {
            output = (ets[count - 1] * 3 - ets[count - 2]) / 2
        } else if count == 3 {
            output = StepMath.divide(ets[count - 1] * 23 - ets[count - 2] * 16 + ets[count - 3] * 5, 12)
        } else {
            output = (ets[count - 1] * 55 - ets[count - 2] * 59 + ets[count - 3] * 37 - ets[count - 4] * 9) * Float(1.0 / 24.0)
        }
        let previous = previousSample(sample, timestep: timestep, previousTimestep: previousTimestep, modelOutput: output)
        counter += 1
        return previous
    }

    /// x_{t−δ} from x_t and ε, formula (9) of the PNDM paper.
    private func previousSample(_ sample: Tensor, timestep: Int, previousTimestep: Int, modelOutput: Tensor) -> Tensor {
        let alphaProduct = noiseSchedule.alphasCumprod[timestep]
        let alphaProductPrevious = previousTimestep >= 0 ? noiseSchedule.alphasCumprod[previousTimestep] : finalAlphaCumprod
        let betaProduct = 1 - alphaProduct
        let betaProductPrevious = 1 - alphaProductPrevious
        var epsilon = modelOutput
        if predictionType == .vPrediction {
            epsilon = modelOutput * alphaProduct.squareRoot() + sample * betaProduct.squareRoot()
        }
        // (ᾱ_{t−δ}/ᾱ_t)^½ x_t − (ᾱ_{t−δ} − ᾱ_t) ε / (ᾱ_t (1−ᾱ_{t−δ})^½ + (ᾱ_t (1−ᾱ_t) ᾱ_{t−δ})^½)
        let sampleCoefficient = (alphaProductPrevious / alphaProduct).squareRoot()
        let denominator = alphaProduct * betaProductPrevious.squareRoot() + (alphaProduct * betaProduct * alphaProductPrevious).squareRoot()
        return sample * sampleCoefficient - StepMath.divide(epsilon * (alphaProductPrevious - alphaProduct), denominator)
    }
}
