import Foundation
import Tensors

/// DPM-Solver++ (Lu et al., 2022) multistep, orders 1–3, as diffusers'
/// `DPMSolverMultistepScheduler`: exact integration of the linear part of the
/// diffusion ODE in λ = log(α/σ), with the model's x0 predictions of the last
/// steps extrapolated. Also the original DPM-Solver (noise prediction) and the
/// SDE variants (`algorithm_type` "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver").
///
/// diffusers returns no x0; this returns the step's converted x0 prediction
/// (thresholded when `thresholding` is on).
public final class DPMSolverMultistepScheduler: Scheduler {
    public static let className = "DPMSolverMultistepScheduler"
    public static let configurationDefaults: KeyValuePairs<String, JSONValue> = [
        "num_train_timesteps": .int(1000), "beta_start": .double(0.0001), "beta_end": .double(0.02),
        "beta_schedule": .string("linear"), "trained_betas": .null, "solver_order": .int(2),
        "prediction_type": .string("epsilon"), "thresholding": .bool(false), "dynamic_thresholding_ratio": .double(0.995),
        "sample_max_value": .double(1.0), "algorithm_type": .string("dpmsolver++"), "solver_type": .string("midpoint"),
        "lower_order_final": .bool(true), "euler_at_final": .bool(false), "use_karras_sigmas": .bool(false),
        "use_exponential_sigmas": .bool(false), "use_beta_sigmas": .bool(false), "use_lu_lambdas": .bool(false),
        "use_flow_sigmas": .bool(false), "flow_shift": .double(1.0), "final_sigmas_type": .string("zero"),
        "lambda_min_clipped": .double(-.infinity), "variance_type": .null, "timestep_spacing": .string("linspace"),
        "steps_offset": .int(0), "rescale_betas_zero_snr": .bool(false), "use_dynamic_shifting": .bool(false),
        "time_shift_type": .string("exponential"),
    ]

    /// Which ODE/SDE solver family (`algorithm_type`).
    public enum Algorithm: String, Sendable {
        case dpmSolverPlusPlus = "dpmsolver++"
        case sdeDPMSolverPlusPlus = "sde-dpmsolver++"
        case dpmSolver = "dpmsolver"
        case sdeDPMSolver = "sde-dpmsolver"
    }

    public let configuration: SchedulerConfiguration
    public let noiseSchedule: NoiseSchedule
    public let order = 1
    public let initNoiseSigma: Float = 1
    public private(set) var timesteps: [Float] = []
    /// σ = √((1−ᾱ)/ᾱ) at each timestep, then the final σ.
    public private(set) var sigmas: [Float] = []

    public let algorithm: Algorithm
    /// The multistep order (1–3).
    public let solverOrder: Int
    let heunSolver: Bool
    let predictionType: PredictionType
    let thresholding: Bool
    let thresholdingRatio: Double
    let sampleMaxValue: Double
    let lowerOrderFinal: Bool
    let eulerAtFinal: Bool
    let useKarrasSigmas: Bool
    let useExponentialSigmas: Bool
    let useLuLambdas: Bool
    let finalSigmaIsMinimum: Bool
    let lambdaMinClipped: Double
    let learnedVariance: Bool
    let spacing: TimestepSpacing
    let stepsOffset: Int
    let cosineSchedule: Bool
    let alphasCumprod: [Float]

    private var inferenceSteps: Int?
    private var modelOutputs: [Tensor?] = []
    private var lowerOrderCount = 0
    private var stepIndex: Int?

    public init(configuration: SchedulerConfiguration) throws {
        var configuration = configuration
        configuration.className = Self.className
        // diffusers maps other solvers' names onto its own.
        if configuration.algorithmType == "deis" { configuration.algorithmType = "dpmsolver++" }
        if let solver = configuration.solverType, ["logrho", "bh1", "bh2"].contains(solver) { configuration.solverType = "midpoint" }
        let options = ConfigurationReader(configuration: configuration, defaults: Self.configurationDefaults)
        self.configuration = configuration
        noiseSchedule = try options.noiseSchedule()
        algorithm = Algorithm(rawValue: options.string("algorithm_type")!)!
        solverOrder = options.int("solver_order")
        try options.check("solver_order", (1...3).contains(solverOrder), "DPM-Solver orders are 1, 2 and 3")
        try options.require("solver_order", !(algorithm == .sdeDPMSolver && solverOrder == 3), "sde-dpmsolver has no third-order update")
        heunSolver = options.string("solver_type") == "heun"
        predictionType = options.choice("prediction_type")
        thresholding = options.bool("thresholding")
        thresholdingRatio = options.double("dynamic_thresholding_ratio")
        sampleMaxValue = options.double("sample_max_value")
        lowerOrderFinal = options.bool("lower_order_final")
        eulerAtFinal = options.bool("euler_at_final")
        useKarrasSigmas = options.bool("use_karras_sigmas")
        useExponentialSigmas = options.bool("use_exponential_sigmas")
        useLuLambdas = options.bool("use_lu_lambdas")
        try options.require("use_beta_sigmas", !options.bool("use_beta_sigmas"), "beta sigmas are not implemented")
        try options.require("use_flow_sigmas", !options.bool("use_flow_sigmas"), "flow-matching sigmas are not implemented")
        try options.require("use_dynamic_shifting", !options.bool("use_dynamic_shifting"), "dynamic shifting is for flow matching, not implemented")
        try options.check("use_karras_sigmas", [useKarrasSigmas, useExponentialSigmas].filter { $0 }.count <= 1,
                          "only one of use_karras_sigmas and use_exponential_sigmas can be used")
        finalSigmaIsMinimum = options.string("final_sigmas_type") == "sigma_min"
        try options.check("final_sigmas_type", finalSigmaIsMinimum || algorithm == .dpmSolverPlusPlus || algorithm == .sdeDPMSolverPlusPlus,
                          "\(algorithm.rawValue) needs final_sigmas_type \"sigma_min\"")
        lambdaMinClipped = options.double("lambda_min_clipped")
        let variance = options.string("variance_type")
        learnedVariance = variance == "learned" || variance == "learned_range"
        spacing = options.choice("timestep_spacing")
        stepsOffset = options.int("steps_offset")
        cosineSchedule = options.string("beta_schedule") == "squaredcos_cap_v2"
        var cumulative = noiseSchedule.alphasCumprod
        if options.bool("rescale_betas_zero_snr") { cumulative[cumulative.count - 1] = 0x1p-24 }
        alphasCumprod = cumulative
        sigmas = cumulative.map { ((1 - $0) / $0).squareRoot() }
        timesteps = Spacing.linspace(0, Double(cumulative.count - 1), cumulative.count).reversed().map { Float($0) }
        modelOutputs = Array(repeating: nil, count: solverOrder)
    }

    public convenience init() { try! self.init(configuration: SchedulerConfiguration()) }

    public func setTimesteps(_ count: Int) throws {
        try SchedulerError.check(count, trainTimesteps: trainTimesteps)
        // Clip the high-noise end where λ falls below lambda_min_clipped (cosine schedules).
        let lambdas = alphasCumprod.map { Foundation.log($0.squareRoot()) - Foundation.log((1 - $0).squareRoot()) }
        let clippedIndex = lambdas.reversed().firstIndex { Double($0) >= lambdaMinClipped } ?? lambdas.count
        let lastTimestep = trainTimesteps - clippedIndex
        var steps = Spacing.multistep(spacing, trainTimesteps: trainTimesteps, lastTimestep: lastTimestep, count: count, stepsOffset: stepsOffset).map(Double.init)
        let trainingSigmas = alphasCumprod.map { ((1 - $0) / $0).squareRoot() }
        let logSigmas = SigmaMath.logSigmas(trainingSigmas)
        var values: [Double]
        if useKarrasSigmas || useExponentialSigmas || useLuLambdas {
            if useLuLambdas {
                // Uniform in λ = −log σ between the ends of the training range.
                let lambdaMin = Double(logSigmas[0]), lambdaMax = Double(logSigmas[logSigmas.count - 1])
                values = Spacing.linspace(0, 1, count).map { Foundation.exp(lambdaMax + $0 * (lambdaMin - lambdaMax)) }
            } else {
                let sigmaMin = Double(trainingSigmas[0]), sigmaMax = Double(trainingSigmas[trainingSigmas.count - 1])
                values = useKarrasSigmas ? SigmaMath.karras(sigmaMin: sigmaMin, sigmaMax: sigmaMax, count: count)
                    : SigmaMath.exponential(sigmaMin: sigmaMin, sigmaMax: sigmaMax, count: count)
            }
            steps = values.map { SigmaMath.sigmaToT($0, logSigmas) }
            // Karras and λ-uniform timesteps are rounded (except for the cosine schedule); exponential ones are not.
            if !useExponentialSigmas && !cosineSchedule { steps = steps.map(Spacing.round) }
        } else {
            values = steps.map { SigmaMath.interpolate($0, trainingSigmas) }
        }
        let last: Float = finalSigmaIsMinimum ? ((1 - alphasCumprod[0]) / alphasCumprod[0]).squareRoot() : 0
        sigmas = values.map { Float($0) } + [last]
        // diffusers stores the timesteps as int64 (fractional ones truncate).
        timesteps = steps.map { Float(Int($0)) }
        inferenceSteps = timesteps.count
        modelOutputs = Array(repeating: nil, count: solverOrder)
        lowerOrderCount = 0
        stepIndex = nil
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Float) -> Tensor { sample }

    /// The model output as DPM-Solver++ wants it (x0), or as DPM-Solver wants it (ε).
    /// Returns the converted output and the x0 prediction.
    func convertModelOutput(_ modelOutput: Tensor, sample: Tensor) -> (converted: Tensor, predictedOriginal: Tensor) {
        var modelOutput = modelOutput
        if learnedVariance && predictionType == .epsilon {
            modelOutput = modelOutput.narrowed(axis: 1, start: 0, length: sample.shape[1])
        }
        let (alpha, sigma) = SigmaMath.alphaSigma(sigmas[stepIndex!])
        if algorithm == .dpmSolverPlusPlus || algorithm == .sdeDPMSolverPlusPlus {
            var x0 = StepMath.predictedOriginal(modelOutput, sample: sample, type: predictionType, alpha: alpha, sigma: sigma)
            if thresholding { x0 = StepMath.threshold(x0, ratio: thresholdingRatio, maxValue: sampleMaxValue) }
            return (x0, x0)
        }
        var epsilon: Tensor
        switch predictionType {
        case .epsilon: epsilon = modelOutput
        case .sample: epsilon = StepMath.divide(sample - modelOutput * alpha, sigma)
        case .vPrediction: epsilon = modelOutput * alpha + sample * sigma
        }
        var x0 = StepMath.divide(sample - epsilon * sigma, alpha)
        if thresholding {
            x0 = StepMath.threshold(x0, ratio: thresholdingRatio, maxValue: sampleMaxValue)
            epsilon = StepMath.divide(sample - x0 * alpha, sigma)
        }
        return (epsilon, x0)
    }

    public func step(_ modelOutput: Tensor, timestep: Float, sample: Tensor, noise: Tensor?, generator: inout RandomGenerator) -> SchedulerStepOutput {
        guard inferenceSteps != nil else { fatalError("DPMSolverMultistepScheduler.step: call setTimesteps first") }
        if stepIndex == nil { stepIndex = SigmaMath.index(of: timestep, in: timesteps, missing: timesteps.count - 1) }
        let index = stepIndex!
        let count = timesteps.count
        // Lower the order at the end for stability with few steps (and always at a zero final σ).
        let finalLower = index == count - 1 && (eulerAtFinal || (lowerOrderFinal && count < 15) || !finalSigmaIsMinimum)
        let secondLower = index == count - 2 && lowerOrderFinal && count < 15

        let (converted, predictedOriginal) = convertModelOutput(modelOutput, sample: sample)
        modelOutputs.removeFirst()
        modelOutputs.append(converted)

        var stepNoise: Tensor?
        if algorithm == .sdeDPMSolverPlusPlus || algorithm == .sdeDPMSolver {
            stepNoise = StepMath.noise(noise, shape: converted.shape, generator: &generator)
        }
        let previousSample: Tensor
        if solverOrder == 1 || lowerOrderCount < 1 || finalLower {
            previousSample = firstOrderUpdate(converted, sample: sample, noise: stepNoise)
        } else if solverOrder == 2 || lowerOrderCount < 2 || secondLower {
            previousSample = secondOrderUpdate(sample: sample, noise: stepNoise)
        } else {
            previousSample = thirdOrderUpdate(sample: sample, noise: stepNoise)
        }
        if lowerOrderCount < solverOrder { lowerOrderCount += 1 }
        stepIndex = index + 1
        return SchedulerStepOutput(prevSample: previousSample, predOriginalSample: predictedOriginal)
    }

    /// (α, σ, λ) at a position of `sigmas`.
    private func coefficients(_ position: Int) -> (alpha: Float, sigma: Float, lambda: Float) {
        let (alpha, sigma) = SigmaMath.alphaSigma(sigmas[position])
        return (alpha, sigma, Foundation.log(alpha) - Foundation.log(sigma))
    }

    /// One step of DPM-Solver(++) order 1 (DDIM), equation (5) of the DPM-Solver++ paper.
    private func firstOrderUpdate(_ output: Tensor, sample: Tensor, noise: Tensor?) -> Tensor {
        let (alphaT, sigmaT, lambdaT) = coefficients(stepIndex! + 1)
        let (alphaS, sigmaS, lambdaS) = coefficients(stepIndex!)
        let h = lambdaT - lambdaS
        switch algorithm {
        case .dpmSolverPlusPlus:
            return sample * (sigmaT / sigmaS) - output * (alphaT * (Foundation.exp(-h) - 1))
        case .dpmSolver:
            return sample * (alphaT / alphaS) - output * (sigmaT * (Foundation.exp(h) - 1))
        case .sdeDPMSolverPlusPlus:
            return sample * (sigmaT / sigmaS * Foundation.exp(-h)) + output * (alphaT * (1 - Foundation.exp(-2 * h)))
                + noise! * (sigmaT * (1 - Foundation.exp(-2 * h)).squareRoot())
        case .sdeDPMSolver:
            return sample * (alphaT / alphaS) - output * (2 * (sigmaT * (Foundation.exp(h) - 1)))
                + noise! * (sigmaT * (Foundation.exp(2 * h) - 1).squareRoot())
        }
    }

    /// Multistep second-order update (midpoint or Heun form).
    private func secondOrderUpdate(sample: Tensor, noise: Tensor?) -> Tensor {
        let index = stepIndex!
        let (alphaT, sigmaT, lambdaT) = coefficients(index + 1)
        let (alphaS0, sigmaS0, lambdaS0) = coefficients(index)
        let lambdaS1 = coefficients(index - 1).lambda
        let m0 = modelOutputs[solverOrder - 1]!, m1 = modelOutputs[solverOrder - 2]!
        let h = lambdaT - lambdaS0, h0 = lambdaS0 - lambdaS1
        let r0 = h0 / h
        let d0 = m0, d1 = (m0 - m1) * (1 / r0)
        let expMinusH = Foundation.exp(-h), expH = Foundation.exp(h)
        switch (algorithm, heunSolver) {
        case (.dpmSolverPlusPlus, false):
            return sample * (sigmaT / sigmaS0) - d0 * (alphaT * (expMinusH - 1)) - d1 * (0.5 * (alphaT * (expMinusH - 1)))
        case (.dpmSolverPlusPlus, true):
            return sample * (sigmaT / sigmaS0) - d0 * (alphaT * (expMinusH - 1)) + d1 * (alphaT * ((expMinusH - 1) / h + 1))
        case (.dpmSolver, false):
            return sample * (alphaT / alphaS0) - d0 * (sigmaT * (expH - 1)) - d1 * (0.5 * (sigmaT * (expH - 1)))
        case (.dpmSolver, true):
            return sample * (alphaT / alphaS0) - d0 * (sigmaT * (expH - 1)) - d1 * (sigmaT * ((expH - 1) / h - 1))
        case (.sdeDPMSolverPlusPlus, let heun):
            let decay = 1 - Foundation.exp(-2 * h)
            let noiseTerm = noise! * (sigmaT * decay.squareRoot())
            let first = sample * (sigmaT / sigmaS0 * expMinusH) + d0 * (alphaT * decay)
            let second = heun ? d1 * (alphaT * (decay / (-2 * h) + 1)) : d1 * (0.5 * (alphaT * decay))
            return first + second + noiseTerm
        case (.sdeDPMSolver, let heun):
            let noiseTerm = noise! * (sigmaT * (Foundation.exp(2 * h) - 1).squareRoot())
            let first = sample * (alphaT / alphaS0) - d0 * (2 * (sigmaT * (expH - 1)))
            let second = heun ? d1 * (2 * (sigmaT * ((expH - 1) / h - 1))) : d1 * (sigmaT * (expH - 1))
            return first - second + noiseTerm
        }
    }

    /// Multistep third-order update.
    private func thirdOrderUpdate(sample: Tensor, noise: Tensor?) -> Tensor {
        let index = stepIndex!
        let (alphaT, sigmaT, lambdaT) = coefficients(index + 1)
        let (alphaS0, sigmaS0, lambdaS0) = coefficients(index)
        let lambdaS1 = coefficients(index - 1).lambda, lambdaS2 = coefficients(index - 2).lambda
        let m0 = modelOutputs[solverOrder - 1]!, m1 = modelOutputs[solverOrder - 2]!, m2 = modelOutputs[solverOrder - 3]!
        let h = lambdaT - lambdaS0, h0 = lambdaS0 - lambdaS1, h1 = lambdaS1 - lambdaS2
        let r0 = h0 / h, r1 = h1 / h
        let d0 = m0
        let d10 = (m0 - m1) * (1 / r0), d11 = (m1 - m2) * (1 / r1)
        let d1 = d10 + (d10 - d11) * (r0 / (r0 + r1))
        let d2 = (d10 - d11) * (1 / (r0 + r1))
        let c0: Float, c1: Float, c2: Float, c3: Float
        var noiseScale: Float = 0
        switch algorithm {
        case .dpmSolverPlusPlus:
            let e: Float = Foundation.exp(-h) - 1
            c0 = sigmaT / sigmaS0
            c1 = -(alphaT * e)
            c2 = alphaT * (e / h + 1)
            c3 = -(alphaT * ((e + h) / (h * h) - 0.5))
        case .dpmSolver:
            let e: Float = Foundation.exp(h) - 1
            c0 = alphaT / alphaS0
            c1 = -(sigmaT * e)
            c2 = -(sigmaT * (e / h - 1))
            c3 = -(sigmaT * ((e - h) / (h * h) - 0.5))
        case .sdeDPMSolverPlusPlus:
            let decay: Float = 1 - Foundation.exp(-2 * h)
            let twoH: Float = 2 * h
            c0 = sigmaT / sigmaS0 * Foundation.exp(-h)
            c1 = alphaT * decay
            c2 = alphaT * (decay / (-2 * h) + 1)
            c3 = alphaT * ((decay - twoH) / (twoH * twoH) - 0.5)
            noiseScale = sigmaT * decay.squareRoot()
        case .sdeDPMSolver:
            fatalError("sde-dpmsolver has no third-order update")
        }
        // Subtracting c·D is adding (−c)·D exactly, so the sums match diffusers' term by term.
        var result = sample * c0 + d0 * c1
        result = result + d1 * c2
        result = result + d2 * c3
        if let noise { result = result + noise * noiseScale }
        return result
    }

    /// diffusers' `add_noise` for this scheduler: α·x0 + σ·ε with (α, σ) of each
    /// example's timestep in `timesteps` (the last step for timesteps not in it).
    public func addNoise(_ original: Tensor, noise: Tensor, timesteps: [Float]) -> Tensor {
        let pairs = timesteps.map { SigmaMath.alphaSigma(sigmas[SigmaMath.index(of: $0, in: self.timesteps, missing: self.timesteps.count - 1)]) }
        return original * StepMath.perExample(pairs.map(\.alpha), like: original) + noise * StepMath.perExample(pairs.map(\.sigma), like: original)
    }
}
