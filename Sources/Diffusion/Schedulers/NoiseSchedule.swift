import Foundation
import Tensors

/// How betas are laid out over the training timesteps (`beta_schedule`).
public enum BetaSchedule: String, CaseIterable, Sendable {
    /// Evenly spaced betas from `beta_start` to `beta_end`.
    case linear
    /// Evenly spaced square roots of the betas (Stable Diffusion's schedule).
    case scaledLinear = "scaled_linear"
    /// The cosine ᾱ(t) of improved DDPM (Glide), betas capped at 0.999.
    case squaredcosCapV2 = "squaredcos_cap_v2"
    /// GeoDiff's sigmoid over [-6, 6], scaled into [`beta_start`, `beta_end`].
    case sigmoid
    /// ᾱ(t) = exp(-12 t).
    case exp
    /// The Laplace ᾱ(t) of diffusers' `betas_for_alpha_bar`.
    case laplace
}

/// What the model predicts (`prediction_type`).
public enum PredictionType: String, CaseIterable, Sendable {
    /// The noise ε.
    case epsilon
    /// The clean sample x0.
    case sample
    /// The velocity v = √ᾱ·ε − √(1−ᾱ)·x0 (Imagen Video, section 2.4).
    case vPrediction = "v_prediction"
}

/// How inference timesteps are picked from the training range (`timestep_spacing`,
/// table 2 of "Common Diffusion Noise Schedules and Sample Steps are Flawed").
public enum TimestepSpacing: String, CaseIterable, Sendable {
    case linspace, leading, trailing
}

/// DDPM's posterior variance choice (`variance_type`).
public enum VarianceType: String, CaseIterable, Sendable {
    case fixedSmall = "fixed_small"
    case fixedSmallLog = "fixed_small_log"
    case fixedLarge = "fixed_large"
    case fixedLargeLog = "fixed_large_log"
    /// The model predicts the variance in extra output channels.
    case learned
    /// The model predicts an interpolation between the small and large log variances.
    case learnedRange = "learned_range"
}

/// The training noise schedule: betas, alphas and ᾱ (`alphas_cumprod`),
/// computed with the float32 arithmetic diffusers and PyTorch use.
public struct NoiseSchedule: Sendable {
    /// βₜ for t = 0 ..< T.
    public let betas: [Float]
    /// αₜ = 1 − βₜ.
    public let alphas: [Float]
    /// ᾱₜ = ∏ αₛ (s ≤ t).
    public let alphasCumprod: [Float]

    /// Builds the schedule as diffusers' scheduler constructors do.
    public init(trainTimesteps count: Int, betaStart: Double, betaEnd: Double, schedule: BetaSchedule,
                trainedBetas: [Double]? = nil, rescaleZeroTerminalSNR: Bool = false) {
        var betas: [Float]
        if let trainedBetas {
            betas = trainedBetas.map { Float($0) }
        } else {
            switch schedule {
            case .linear:
                betas = NoiseSchedule.torchLinspace(Float(betaStart), Float(betaEnd), count)
            case .scaledLinear:
                betas = NoiseSchedule.torchLinspace(Float(betaStart.squareRoot()), Float(betaEnd.squareRoot()), count).map { $0 * $0 }
            case .squaredcosCapV2:
                betas = NoiseSchedule.betasForAlphaBar(count) { t in Foundation.pow(Foundation.cos((t + 0.008) / 1.008 * Double.pi / 2), 2) }
            case .exp:
                betas = NoiseSchedule.betasForAlphaBar(count) { t in Foundation.exp(t * -12.0) }
            case .laplace:
                betas = NoiseSchedule.betasForAlphaBar(count) { t in
                    let lambda = -0.5 * (0.5 - t < 0 ? -1.0 : 1.0) * Foundation.log(1 - 2 * Swift.abs(0.5 - t) + 1e-6)
                    let snr = Foundation.exp(lambda)
                    return (snr / (1 + snr)).squareRoot()
                }
            case .sigmoid:
                let range = Float(betaEnd - betaStart), start = Float(betaStart)
                betas = NoiseSchedule.torchLinspace(-6, 6, count).map { x in (1 / (1 + Foundation.exp(-x))) * range + start }
            }
        }
        if rescaleZeroTerminalSNR { betas = NoiseSchedule.rescaleZeroTerminalSNR(betas) }
        self.betas = betas
        self.alphas = betas.map { 1 - $0 }
        self.alphasCumprod = NoiseSchedule.cumulativeProduct(alphas)
    }

    /// `torch.linspace(start, end, count, dtype=float32)` on the CPU, bit for bit:
    /// the first half is `start + step·i`, the second `end − step·(count−1−i)`,
    /// each with one rounding (PyTorch's kernel is compiled with fused multiply-add).
    public static func torchLinspace(_ start: Float, _ end: Float, _ count: Int) -> [Float] {
        guard count > 1 else { return count == 1 ? [start] : [] }
        let step = (end - start) / Float(count - 1)
        let halfway = count / 2
        return (0..<count).map { index in
            index < halfway ? start.addingProduct(step, Float(index)) : end.addingProduct(-step, Float(count - 1 - index))
        }
    }

    /// `torch.cumprod` of float32 values: PyTorch accumulates in double and rounds each prefix.
    public static func cumulativeProduct(_ values: [Float]) -> [Float] {
        var product = 1.0
        return values.map { value in
            product *= Double(value)
            return Float(product)
        }
    }

    /// diffusers' `betas_for_alpha_bar`: βᵢ = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), 0.999), in double.
    static func betasForAlphaBar(_ count: Int, maxBeta: Double = 0.999, _ alphaBar: (Double) -> Double) -> [Float] {
        (0..<count).map { index in
            let t1 = Double(index) / Double(count), t2 = Double(index + 1) / Double(count)
            return Float(Swift.min(1 - alphaBar(t2) / alphaBar(t1), maxBeta))
        }
    }

    /// Algorithm 1 of "Common Diffusion Noise Schedules and Sample Steps are
    /// Flawed": shift and scale √ᾱ so the last timestep has zero SNR (float32).
    public static func rescaleZeroTerminalSNR(_ betas: [Float]) -> [Float] {
        let cumulative = cumulativeProduct(betas.map { 1 - $0 })
        var roots = cumulative.map { $0.squareRoot() }
        let first = roots[0], last = roots[roots.count - 1]
        let scale = first / (first - last)
        roots = roots.map { ($0 - last) * scale }
        let bars = roots.map { $0 * $0 }
        var result = [1 - bars[0]]
        for index in 1..<bars.count { result.append(1 - bars[index] / bars[index - 1]) }
        return result
    }

    /// σ = √((1 − ᾱ)/ᾱ) for every training timestep (float32).
    public var sigmas: [Float] { alphasCumprod.map { ((1 - $0) / $0).squareRoot() } }
}

// MARK: - Timestep spacing (numpy arithmetic)

enum Spacing {
    /// `np.linspace(start, stop, count)` in double.
    static func linspace(_ start: Double, _ stop: Double, _ count: Int) -> [Double] {
        guard count > 1 else { return count == 1 ? [start] : [] }
        let step = (stop - start) / Double(count - 1)
        var values = (0..<count).map { Double($0) * step + start }
        values[count - 1] = stop
        return values
    }

    /// `np.arange(start, stop, step)` with a float step (numpy fills start + i·delta).
    static func arange(_ start: Double, _ stop: Double, _ step: Double) -> [Double] {
        let length = Swift.max(0, Int(((stop - start) / step).rounded(.up)))
        guard length > 0 else { return [] }
        let delta = (start + step) - start
        return (0..<length).map { $0 == 0 ? start : start + Double($0) * delta }
    }

    /// `np.round`: halves to even.
    static func round(_ value: Double) -> Double { value.rounded(.toNearestOrEven) }

    /// DDPM/DDIM/PNDM integer timesteps, descending (`set_timesteps`).
    static func discrete(_ spacing: TimestepSpacing, trainTimesteps: Int, count: Int, stepsOffset: Int) -> [Int] {
        switch spacing {
        case .linspace:
            return linspace(0, Double(trainTimesteps - 1), count).map { Int(round($0)) }.reversed()
        case .leading:
            let ratio = trainTimesteps / count
            return (0..<count).reversed().map { $0 * ratio + stepsOffset }
        case .trailing:
            return arange(Double(trainTimesteps), 0, -Double(trainTimesteps) / Double(count)).map { Int(round($0)) - 1 }
        }
    }

    /// DPM-Solver/UniPC integer timesteps: `count + 1` points with the last dropped.
    static func multistep(_ spacing: TimestepSpacing, trainTimesteps: Int, lastTimestep: Int, count: Int, stepsOffset: Int) -> [Int] {
        switch spacing {
        case .linspace:
            return Array(linspace(0, Double(lastTimestep - 1), count + 1).map { Int(round($0)) }.reversed().dropLast())
        case .leading:
            let ratio = lastTimestep / (count + 1)
            return Array((0...count).reversed().map { $0 * ratio }.dropLast()).map { $0 + stepsOffset }
        case .trailing:
            return arange(Double(lastTimestep), 0, -Double(trainTimesteps) / Double(count)).map { Int(round($0)) - 1 }
        }
    }

    /// Euler/LMS/Heun float32 timesteps, descending.
    static func continuous(_ spacing: TimestepSpacing, trainTimesteps: Int, count: Int, stepsOffset: Int) -> [Float] {
        switch spacing {
        case .linspace:
            return linspace(0, Double(trainTimesteps - 1), count).reversed().map { Float($0) }
        case .leading:
            let ratio = trainTimesteps / count
            return (0..<count).reversed().map { Float($0 * ratio) + Float(stepsOffset) }
        case .trailing:
            return arange(Double(trainTimesteps), 0, -Double(trainTimesteps) / Double(count)).map { Float(round($0)) - 1 }
        }
    }
}

// MARK: - Sigma schedules (Karras-style schedulers)

enum SigmaMath {
    /// `np.interp(x, arange(len(table)), table)` in double.
    static func interpolate(_ x: Double, _ table: [Float]) -> Double {
        let last = table.count - 1
        if x <= 0 { return Double(table[0]) }
        if x >= Double(last) { return Double(table[last]) }
        let low = Int(x.rounded(.down))
        if Double(low) == x { return Double(table[low]) }
        let slope = (Double(table[low + 1]) - Double(table[low])) / 1.0
        return slope * (x - Double(low)) + Double(table[low])
    }

    /// `np.log` of the float32 training sigmas (kept as float32, as numpy does).
    static func logSigmas(_ sigmas: [Float]) -> [Float] { sigmas.map { Foundation.log($0) } }

    /// diffusers' `_sigma_to_t`: the fractional training timestep of σ, by
    /// linear interpolation in log σ.
    static func sigmaToT(_ sigma: Double, _ logSigmas: [Float]) -> Double {
        let logSigma = Foundation.log(Swift.max(sigma, 1e-10))
        // cumsum(dists >= 0).argmax(): the last index whose log sigma is <= log_sigma.
        var count = 0
        for value in logSigmas where logSigma - Double(value) >= 0 { count += 1 }
        var lowIndex = 0
        if count > 0 {
            var running = 0
            for (index, value) in logSigmas.enumerated() {
                if logSigma - Double(value) >= 0 { running += 1 }
                if running == count { lowIndex = index; break }
            }
        }
        lowIndex = Swift.min(lowIndex, logSigmas.count - 2)
        let low = Double(logSigmas[lowIndex]), high = Double(logSigmas[lowIndex + 1])
        let weight = Swift.min(Swift.max((low - logSigma) / (low - high), 0), 1)
        return (1 - weight) * Double(lowIndex) + weight * Double(lowIndex + 1)
    }

    /// Karras et al. (2022) ρ = 7 schedule from σ_max down to σ_min.
    static func karras(sigmaMin: Double, sigmaMax: Double, count: Int) -> [Double] {
        let rho = 7.0
        let minInverse = Foundation.pow(sigmaMin, 1 / rho), maxInverse = Foundation.pow(sigmaMax, 1 / rho)
        return Spacing.linspace(0, 1, count).map { Foundation.pow(maxInverse + $0 * (minInverse - maxInverse), rho) }
    }

    /// Log-uniform sigmas from σ_max down to σ_min.
    static func exponential(sigmaMin: Double, sigmaMax: Double, count: Int) -> [Double] {
        Spacing.linspace(Foundation.log(sigmaMax), Foundation.log(sigmaMin), count).map { Foundation.exp($0) }
    }

    /// (α, σ) of the variance-preserving process for a Karras σ: α = 1/√(σ²+1), σ·α (float32).
    @inline(__always)
    static func alphaSigma(_ sigma: Float) -> (alpha: Float, sigma: Float) {
        let alpha = 1 / (sigma * sigma + 1).squareRoot()
        return (alpha, sigma * alpha)
    }

    /// λ = log α − log σ (float32).
    @inline(__always)
    static func lambda(_ sigma: Float) -> Float {
        let (alpha, sigmaT) = alphaSigma(sigma)
        return Foundation.log(alpha) - Foundation.log(sigmaT)
    }

    /// diffusers' `index_for_timestep`: the position of `timestep` in `timesteps`,
    /// the second match when it occurs twice; `missing` when absent (nil: fatal).
    static func index(of timestep: Float, in timesteps: [Float], missing: Int? = nil) -> Int {
        let matches = timesteps.indices.filter { timesteps[$0] == timestep }
        if matches.isEmpty {
            if let missing { return missing }
            fatalError("timestep \(timestep) is not one of the scheduler's timesteps; pass values from `timesteps`")
        }
        return matches.count > 1 ? matches[1] : matches[0]
    }
}

// MARK: - Tensor helpers shared by the step functions

enum StepMath {
    /// `tensor / scalar` with a true division (PyTorch divides; multiplying by
    /// the reciprocal can differ in the last bit). Differentiable in `tensor`.
    @inline(__always)
    static func divide(_ tensor: Tensor, _ scalar: Float) -> Tensor { tensor / Tensor(scalar: scalar) }

    /// A [B, 1, 1, …] tensor of per-example values for broadcasting against `like`.
    static func perExample(_ values: [Float], like tensor: Tensor) -> Tensor {
        precondition(values.count == tensor.shape[0], "\(values.count) per-example values for a batch of \(tensor.shape[0])")
        return Tensor(values, shape: [values.count] + Array(repeating: 1, count: tensor.rank - 1))
    }

    /// The analytic x0 for a variance-preserving sample: given √ᾱ and √(1−ᾱ).
    static func predictedOriginal(_ modelOutput: Tensor, sample: Tensor, type: PredictionType, alpha: Float, sigma: Float) -> Tensor {
        switch type {
        case .epsilon: return divide(sample - modelOutput * sigma, alpha)
        case .sample: return modelOutput
        case .vPrediction: return sample * alpha - modelOutput * sigma
        }
    }

    /// Imagen's dynamic thresholding (diffusers' `_threshold_sample`): per example,
    /// s = clamp(quantile(|x0|, ratio), 1, maxValue); x0 → clamp(x0, −s, s)/s.
    /// s is treated as a constant for gradients.
    static func threshold(_ sample: Tensor, ratio: Double, maxValue: Double) -> Tensor {
        let batch = sample.shape[0]
        let flat = sample.toArray()
        let perExample = sample.count / batch
        var parts: [Tensor] = []
        for index in 0..<batch {
            let row = flat[index * perExample ..< (index + 1) * perExample].map { Swift.abs($0) }.sorted()
            // torch.quantile: rank = q·(n−1) in float32, then lerp between neighbours.
            let rank = Float(ratio) * Float(perExample - 1)
            let below = Int(rank.rounded(.down)), above = Int(rank.rounded(.up))
            let weight = rank - Float(below)
            let low = row[below], high = row[Swift.min(above, perExample - 1)]
            let quantile = Swift.abs(weight) < 0.5 ? low + weight * (high - low) : high - (high - low) * (1 - weight)
            let s = Swift.min(Swift.max(quantile, 1), Float(maxValue))
            let example = sample.narrowed(axis: 0, start: index, length: 1)
            parts.append(divide(example.clamped(min: -s, max: s), s))
        }
        return batch == 1 ? parts[0] : Tensor.concatenate(parts, axis: 0)
    }

    /// `noise` if given (checked against `shape`), else a fresh standard normal draw.
    static func noise(_ noise: Tensor?, shape: [Int], generator: inout RandomGenerator) -> Tensor {
        if let noise {
            precondition(noise.shape == shape, "step noise has shape \(noise.shape), the sample \(shape)")
            return noise
        }
        return Tensor.randn(shape, generator: &generator)
    }
}
