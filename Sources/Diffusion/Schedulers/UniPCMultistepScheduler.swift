import Foundation
import Tensors

/// UniPC (Zhao et al., 2023), as diffusers' `UniPCMultistepScheduler`: a
/// unified predictor (UniP) and corrector (UniC) of any order built on the
/// exponential integrator in λ; the corrector reuses the model evaluation the
/// next predictor needs, so it costs nothing extra.
///
/// diffusers returns no x0; this returns the x0 the step derives from the model
/// output (the converted output when `predict_x0` is on).
public final class UniPCMultistepScheduler: Scheduler {
    public static let className = "UniPCMultistepScheduler"
    public static let configurationDefaults: KeyValuePairs<String, JSONValue> = [
        "num_train_timesteps": .int(1000), "beta_start": .double(0.0001), "beta_end": .double(0.02),
        "beta_schedule": .string("linear"), "trained_betas": .null, "solver_order": .int(2),
        "prediction_type": .string("epsilon"), "thresholding": .bool(false), "dynamic_thresholding_ratio": .double(0.995),
        "sample_max_value": .double(1.0), "predict_x0": .bool(true), "solver_type": .string("bh2"),
        "lower_order_final": .bool(true), "disable_corrector": .array([]), "solver_p": .null,
        "use_karras_sigmas": .bool(false), "use_exponential_sigmas": .bool(false), "use_beta_sigmas": .bool(false),
        "use_flow_sigmas": .bool(false), "flow_shift": .double(1.0), "timestep_spacing": .string("linspace"),
        "steps_offset": .int(0), "final_sigmas_type": .string("zero"), "rescale_betas_zero_snr": .bool(false),
        "use_dynamic_shifting": .bool(false), "time_shift_type": .string("exponential"), "sigma_min": .null,
        "sigma_max": .null, "shift_terminal": .null,
    ]

    public let configuration: SchedulerConfiguration
    public let noiseSchedule: NoiseSchedule
    public let order = 1
    public let initNoiseSigma: Float = 1
    public private(set) var timesteps: [Float] = []
    /// σ = √((1−ᾱ)/ᾱ) at each timestep, then the final σ.
    public private(set) var sigmas: [Float] = []

    /// The multistep order.
    public let solverOrder: Int
    /// B(h) = h ("bh1") or eʰ − 1 ("bh2").
    let bh1: Bool
    let predictX0: Bool
    let predictionType: PredictionType
    let thresholding: Bool
    let thresholdingRatio: Double
    let sampleMaxValue: Double
    let lowerOrderFinal: Bool
    let disableCorrector: Set<Int>
    let useKarrasSigmas: Bool
    let useExponentialSigmas: Bool
    let sigmaMin: Double?
    let sigmaMax: Double?
    let finalSigmaIsMinimum: Bool
    let spacing: TimestepSpacing
    let stepsOffset: Int
    let alphasCumprod: [Float]

    private var inferenceSteps: Int?
    private var modelOutputs: [Tensor?] = []
    private var lowerOrderCount = 0
    private var lastSample: Tensor?
    private var thisOrder = 1
    private var stepIndex: Int?

    public init(configuration: SchedulerConfiguration) throws {
        var configuration = configuration
        configuration.className = Self.className
        // diffusers maps DPM-Solver's solver names onto bh2.
        if let solver = configuration.solverType, ["midpoint", "heun", "logrho"].contains(solver) { configuration.solverType = "bh2" }
        let options = ConfigurationReader(configuration: configuration, defaults: Self.configurationDefaults)
        self.configuration = configuration
        noiseSchedule = try options.noiseSchedule()
        solverOrder = options.int("solver_order")
        try options.check("solver_order", solverOrder >= 1, "the solver order must be at least 1")
        bh1 = options.string("solver_type") == "bh1"
        predictX0 = options.bool("predict_x0")
        predictionType = options.choice("prediction_type")
        thresholding = options.bool("thresholding")
        thresholdingRatio = options.double("dynamic_thresholding_ratio")
        sampleMaxValue = options.double("sample_max_value")
        lowerOrderFinal = options.bool("lower_order_final")
        disableCorrector = Set(options.ints("disable_corrector"))
        try options.require("solver_p", options.value("solver_p") == .null, "an external predictor scheduler is not supported")
        useKarrasSigmas = options.bool("use_karras_sigmas")
        useExponentialSigmas = options.bool("use_exponential_sigmas")
        try options.require("use_beta_sigmas", !options.bool("use_beta_sigmas"), "beta sigmas are not implemented")
        try options.require("use_flow_sigmas", !options.bool("use_flow_sigmas"), "flow-matching sigmas are not implemented")
        try options.require("use_dynamic_shifting", !options.bool("use_dynamic_shifting"), "dynamic shifting is for flow matching, not implemented")
        try options.check("use_karras_sigmas", !(useKarrasSigmas && useExponentialSigmas), "only one of use_karras_sigmas and use_exponential_sigmas can be used")
        sigmaMin = options.optionalDouble("sigma_min")
        sigmaMax = options.optionalDouble("sigma_max")
        finalSigmaIsMinimum = options.string("final_sigmas_type") == "sigma_min"
        spacing = options.choice("timestep_spacing")
        stepsOffset = options.int("steps_offset")
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
        var steps = Spacing.multistep(spacing, trainTimesteps: trainTimesteps, lastTimestep: trainTimesteps, count: count, stepsOffset: stepsOffset).map(Double.init)
        let trainingSigmas = alphasCumprod.map { ((1 - $0) / $0).squareRoot() }
        let logSigmas = SigmaMath.logSigmas(trainingSigmas)
        var values: [Double]
        let last: Float
        if useKarrasSigmas || useExponentialSigmas {
            let low = sigmaMin ?? Double(trainingSigmas[0]), high = sigmaMax ?? Double(trainingSigmas[trainingSigmas.count - 1])
            values = useKarrasSigmas ? SigmaMath.karras(sigmaMin: low, sigmaMax: high, count: count)
                : SigmaMath.exponential(sigmaMin: low, sigmaMax: high, count: count)
            steps = values.map { SigmaMath.sigmaToT($0, logSigmas) }
            if useKarrasSigmas { steps = steps.map(Spacing.round) }
            last = finalSigmaIsMinimum ? Float(values[values.count - 1]) : 0
        } else {
            values = steps.map { SigmaMath.interpolate($0, trainingSigmas) }
            last = finalSigmaIsMinimum ? ((1 - alphasCumprod[0]) / alphasCumprod[0]).squareRoot() : 0
        }
        sigmas = values.map { Float($0) } + [last]
        timesteps = steps.map { Float(Int($0)) }
        inferenceSteps = timesteps.count
        modelOutputs = Array(repeating: nil, count: solverOrder)
        lowerOrderCount = 0
        lastSample = nil
        stepIndex = nil
    }

    public func scaleModelInput(_ sample: Tensor, timestep: Float) -> Tensor { sample }

    /// The model output in the form the solver integrates (x0, or ε when
    /// `predict_x0` is off), and the x0 prediction.
    func convertModelOutput(_ modelOutput: Tensor, sample: Tensor) -> (converted: Tensor, predictedOriginal: Tensor) {
        let (alpha, sigma) = SigmaMath.alphaSigma(sigmas[stepIndex!])
        var x0 = StepMath.predictedOriginal(modelOutput, sample: sample, type: predictionType, alpha: alpha, sigma: sigma)
        if predictX0 {
            if thresholding { x0 = StepMath.threshold(x0, ratio: thresholdingRatio, maxValue: sampleMaxValue) }
            return (x0, x0)
        }
        switch predictionType {
        case .epsilon: return (modelOutput, x0)
        case .sample: return (StepMath.divide(sample - modelOutput * alpha, sigma), x0)
        case .vPrediction: return (modelOutput * alpha + sample * sigma, x0)
        }
    }

    public func step(_ modelOutput: Tensor, timestep: Float, sample: Tensor, noise: Tensor?, generator: inout RandomGenerator) -> SchedulerStepOutput {
        guard inferenceSteps != nil else { fatalError("UniPCMultistepScheduler.step: call setTimesteps first") }
        if stepIndex == nil { stepIndex = SigmaMath.index(of: timestep, in: timesteps, missing: timesteps.count - 1) }
        let index = stepIndex!
        let useCorrector = index > 0 && !disableCorrector.contains(index - 1) && lastSample != nil
        let (converted, predictedOriginal) = convertModelOutput(modelOutput, sample: sample)

        // 1. UniC: correct the sample the last predictor produced, with this model evaluation
        var sample = sample
        if useCorrector { sample = corrector(converted, lastSample: lastSample!, sample: sample, order: thisOrder) }

        // 2. remember this model output
        modelOutputs.removeFirst()
        modelOutputs.append(converted)

        // 3. UniP: predict the next sample, at an order limited by the history (and the end)
        let available = lowerOrderFinal ? Swift.min(solverOrder, timesteps.count - index) : solverOrder
        thisOrder = Swift.min(available, lowerOrderCount + 1)
        lastSample = sample
        let previousSample = predictor(sample: sample, order: thisOrder)
        if lowerOrderCount < solverOrder { lowerOrderCount += 1 }
        stepIndex = index + 1
        return SchedulerStepOutput(prevSample: previousSample, predOriginalSample: predictedOriginal)
    }

    /// (α, σ, λ) at a position of `sigmas` (float32).
    private func coefficients(_ position: Int) -> (alpha: Float, sigma: Float, lambda: Float) {
        let (alpha, sigma) = SigmaMath.alphaSigma(sigmas[position])
        return (alpha, sigma, Foundation.log(alpha) - Foundation.log(sigma))
    }

    /// The B(h)-scaled φ-function right-hand sides b and the matrix R of ratios rₖ^(i−1).
    private func system(rks: [Float], h: Float, order: Int) -> (hh: Float, hPhi1: Float, bH: Float, matrix: [[Float]], b: [Float]) {
        let hh = predictX0 ? -h : h
        let hPhi1 = Foundation.expm1(hh)
        var hPhiK = hPhi1 / hh - 1
        var factorial = 1
        let bH = bh1 ? hh : Foundation.expm1(hh)
        var matrix: [[Float]] = [], b: [Float] = []
        for i in 1...order {
            matrix.append(rks.map { Foundation.pow($0, Float(i - 1)) })
            b.append(hPhiK * Float(factorial) / bH)
            factorial *= i + 1
            hPhiK = hPhiK / hh - Float(1.0 / Double(factorial))
        }
        return (hh, hPhi1, bH, matrix, b)
    }

    /// Σₖ ρₖ·Dₖ.
    private func weightedSum(_ rhos: [Float], _ terms: [Tensor]) -> Tensor? {
        var total: Tensor?
        for (rho, term) in zip(rhos, terms) {
            let part = term * rho
            total = total.map { $0 + part } ?? part
        }
        return total
    }

    /// UniP-p (B(h)) predictor, from the stored model outputs.
    private func predictor(sample x: Tensor, order: Int) -> Tensor {
        let index = stepIndex!
        let m0 = modelOutputs[solverOrder - 1]!
        let (alphaT, sigmaT, lambdaT) = coefficients(index + 1)
        let (alphaS0, sigmaS0, lambdaS0) = coefficients(index)
        let h = lambdaT - lambdaS0
        var rks: [Float] = [], differences: [Tensor] = []
        for i in 1..<Swift.max(order, 1) {
            let rk = (coefficients(index - i).lambda - lambdaS0) / h
            rks.append(rk)
            differences.append(StepMath.divide(modelOutputs[solverOrder - 1 - i]! - m0, rk))
        }
        rks.append(1)
        let (_, hPhi1, bH, matrix, b) = system(rks: rks, h: h, order: order)
        var rhos: [Float] = []
        if !differences.isEmpty {
            rhos = order == 2 ? [0.5] : LinearSolve.solve(Array(matrix.dropLast().map { Array($0.dropLast()) }), Array(b.dropLast()))
        }
        let residual = weightedSum(rhos, differences)
        if predictX0 {
            let base = x * (sigmaT / sigmaS0) - m0 * (alphaT * hPhi1)
            return residual.map { base - $0 * (alphaT * bH) } ?? base
        }
        let base = x * (alphaT / alphaS0) - m0 * (sigmaT * hPhi1)
        return residual.map { base - $0 * (sigmaT * bH) } ?? base
    }

    /// UniC-p (B(h)) corrector of `sample` (predicted from `lastSample`) with the new model output.
    private func corrector(_ modelOutput: Tensor, lastSample x: Tensor, sample: Tensor, order: Int) -> Tensor {
        let index = stepIndex!
        let m0 = modelOutputs[solverOrder - 1]!
        let (alphaT, sigmaT, lambdaT) = coefficients(index)
        let (alphaS0, sigmaS0, lambdaS0) = coefficients(index - 1)
        let h = lambdaT - lambdaS0
        var rks: [Float] = [], differences: [Tensor] = []
        for i in 1..<Swift.max(order, 1) {
            let rk = (coefficients(index - (i + 1)).lambda - lambdaS0) / h
            rks.append(rk)
            differences.append(StepMath.divide(modelOutputs[solverOrder - 1 - i]! - m0, rk))
        }
        rks.append(1)
        let (_, hPhi1, bH, matrix, b) = system(rks: rks, h: h, order: order)
        let rhos = order == 1 ? [Float(0.5)] : LinearSolve.solve(matrix, b)
        let residual = weightedSum(Array(rhos.dropLast()), differences)
        let difference = modelOutput - m0
        let correction = residual.map { $0 + difference * rhos[rhos.count - 1] } ?? difference * rhos[rhos.count - 1]
        if predictX0 {
            return (x * (sigmaT / sigmaS0) - m0 * (alphaT * hPhi1)) - correction * (alphaT * bH)
        }
        return (x * (alphaT / alphaS0) - m0 * (sigmaT * hPhi1)) - correction * (sigmaT * bH)
    }

    /// diffusers' `add_noise` for this scheduler: α·x0 + σ·ε with (α, σ) of each
    /// example's timestep in `timesteps` (the last step for timesteps not in it).
    public func addNoise(_ original: Tensor, noise: Tensor, timesteps: [Float]) -> Tensor {
        let pairs = timesteps.map { SigmaMath.alphaSigma(sigmas[SigmaMath.index(of: $0, in: self.timesteps, missing: self.timesteps.count - 1)]) }
        return original * StepMath.perExample(pairs.map(\.alpha), like: original) + noise * StepMath.perExample(pairs.map(\.sigma), like: original)
    }
}

/// Small dense linear systems (UniPC's coefficient solves), by Gaussian
/// elimination with partial pivoting in double.
enum LinearSolve {
    static func solve(_ matrix: [[Float]], _ rhs: [Float]) -> [Float] {
        let n = rhs.count
        var a = matrix.map { $0.map(Double.init) }
        var b = rhs.map(Double.init)
        for column in 0..<n {
            let pivot = (column..<n).max { Swift.abs(a[$0][column]) < Swift.abs(a[$1][column]) }!
            a.swapAt(column, pivot)
            b.swapAt(column, pivot)
            for row in (column + 1)..<n {
                let factor = a[row][column] / a[column][column]
                for k in column..<n { a[row][k] -= factor * a[column][k] }
                b[row] -= factor * b[column]
            }
        }
        var x = [Double](repeating: 0, count: n)
        for row in stride(from: n - 1, through: 0, by: -1) {
            var sum = b[row]
            for k in (row + 1)..<n { sum -= a[row][k] * x[k] }
            x[row] = sum / a[row][row]
        }
        return x.map { Float($0) }
    }
}
