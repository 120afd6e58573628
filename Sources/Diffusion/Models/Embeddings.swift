import Foundation
import NN
import Tensors

/// A module that turns one timestep (or noise level) per example into a
/// feature vector: diffusers' `time_proj` of `UNet2DModel`.
public protocol TimestepProjection: Module {
    /// `[timesteps.count, outputDimension]`.
    func callAsFunction(_ timesteps: [Float]) -> Tensor
    /// Features per timestep.
    var outputDimension: Int { get }
}

extension Timesteps {
    /// diffusers' `get_timestep_embedding`: the sinusoidal embedding of DDPM.
    ///
    /// Frequencies are `exp(-ln(maxPeriod) · i / (half − downscaleFrequencyShift))`
    /// for `i < half = dimension / 2`; the result is `[sin(t·f), cos(t·f)]`
    /// (or cosines first with `flipSinToCos`), zero-padded to an odd `dimension`.
    /// Computed in `Float` in the same order of operations as diffusers.
    public static func embedding(_ timesteps: [Float], dimension: Int, flipSinToCos: Bool = false,
                                 downscaleFrequencyShift: Float = 1, scale: Float = 1, maxPeriod: Float = 10000) -> Tensor {
        let half = dimension / 2
        let logPeriod = -Float(log(Double(maxPeriod)))
        let divisor = Float(half) - downscaleFrequencyShift
        let frequencies = (0..<half).map { Foundation.exp(logPeriod * Float($0) / divisor) }
        var values = [Float](repeating: 0, count: timesteps.count * dimension)
        for (row, timestep) in timesteps.enumerated() {
            let base = row * dimension
            let (sineStart, cosineStart) = flipSinToCos ? (half, 0) : (0, half)
            for (column, frequency) in frequencies.enumerated() {
                let argument = scale * (timestep * frequency)
                values[base + sineStart + column] = Foundation.sin(argument)
                values[base + cosineStart + column] = Foundation.cos(argument)
            }
        }
        return Tensor(values, shape: [timesteps.count, dimension])
    }
}

/// diffusers' `Timesteps`: the parameter-free sinusoidal projection.
public final class Timesteps: Module, TimestepProjection {
    public let channels: Int
    public let flipSinToCos: Bool
    public let downscaleFrequencyShift: Float
    public let scale: Float

    public init(channels: Int, flipSinToCos: Bool, downscaleFrequencyShift: Float, scale: Float = 1) {
        self.channels = channels
        self.flipSinToCos = flipSinToCos
        self.downscaleFrequencyShift = downscaleFrequencyShift
        self.scale = scale
        super.init()
    }

    public var outputDimension: Int { channels }

    public func callAsFunction(_ timesteps: [Float]) -> Tensor {
        Timesteps.embedding(timesteps, dimension: channels, flipSinToCos: flipSinToCos,
                            downscaleFrequencyShift: downscaleFrequencyShift, scale: scale)
    }
}

/// diffusers' `GaussianFourierProjection`: random Fourier features of
/// `log(σ)` (score-SDE models). `weight` is a fixed random parameter
/// (`requiresGrad` false, as in diffusers), drawn from `Initialization`.
public final class GaussianFourierProjection: Module, TimestepProjection {
    /// `[embeddingSize]`, standard normal times `scale`.
    public let weight: Tensor
    /// Take the logarithm of the input first.
    public let takesLogarithm: Bool
    /// Cosines first.
    public let flipSinToCos: Bool

    public init(embeddingSize: Int = 256, scale: Float = 1, takesLogarithm: Bool = true, flipSinToCos: Bool = false) {
        let drawn = Initialization.normal([embeddingSize])
        weight = noGrad { scale == 1 ? drawn.detach() : drawn * scale }
        weight.requiresGrad = false
        self.takesLogarithm = takesLogarithm
        self.flipSinToCos = flipSinToCos
        super.init()
    }

    public var outputDimension: Int { 2 * weight.count }

    /// `[sin(2π·x·w), cos(2π·x·w)]` with `x = log(t)`, computed in `Float`
    /// in diffusers' order (`x · w · 2 · π`).
    public func callAsFunction(_ timesteps: [Float]) -> Tensor {
        let frequencies = weight.toArray()
        let size = frequencies.count
        let pi = Float.pi
        var values = [Float](repeating: 0, count: timesteps.count * 2 * size)
        for (row, timestep) in timesteps.enumerated() {
            let x = takesLogarithm ? Foundation.log(timestep) : timestep
            let base = row * 2 * size
            let (sineStart, cosineStart) = flipSinToCos ? (size, 0) : (0, size)
            for (column, frequency) in frequencies.enumerated() {
                let argument = x * frequency * 2 * pi
                values[base + sineStart + column] = Foundation.sin(argument)
                values[base + cosineStart + column] = Foundation.cos(argument)
            }
        }
        return Tensor(values, shape: [timesteps.count, 2 * size])
    }
}

/// A learned table indexed by integer timestep (`time_embedding_type: "learned"`).
extension Embedding: TimestepProjection {
    public var outputDimension: Int { weight.shape[1] }

    public func callAsFunction(_ timesteps: [Float]) -> Tensor {
        let rows = weight.shape[0]
        let indices = timesteps.map { value -> Int in
            let index = Int(value)
            guard Float(index) == value, index >= 0, index < rows else {
                fatalError("learned time embedding: timestep \(value) is not an integer in 0..<\(rows)")
            }
            return index
        }
        return self(indices)
    }
}

/// diffusers' `TimestepEmbedding`: `linear_2(act(linear_1(x)))`, with
/// `x + cond_proj(condition)` in place of `x` when it has a condition
/// projection (`time_cond_proj_dim` of `UNet2DConditionModel`).
public final class TimestepEmbedding: Module {
    public let linear1: Linear
    public let linear2: Linear
    public let activation: Activation
    /// `cond_proj`: condition width → input width, no bias.
    public let conditionProjection: Linear?

    public override class var stateDictKeys: [String: String] {
        ["linear1": "linear_1", "linear2": "linear_2", "activation": "act", "conditionProjection": "cond_proj"]
    }

    public init(inputChannels: Int, embeddingDimension: Int, activation: Activation.Function = .silu, conditionDimension: Int? = nil) {
        linear1 = Linear(inputChannels, embeddingDimension)
        self.activation = Activation(activation)
        linear2 = Linear(embeddingDimension, embeddingDimension)
        conditionProjection = conditionDimension.map { Linear($0, inputChannels, bias: false) }
        super.init()
    }

    public func callAsFunction(_ input: Tensor, condition: Tensor? = nil) -> Tensor {
        var sample = input
        if let condition {
            guard let conditionProjection else { fatalError("TimestepEmbedding: a condition was given, but there is no cond_proj") }
            sample = sample + conditionProjection(condition)
        }
        return linear2(activation(linear1(sample)))
    }
}

/// `nn.Identity` as a module (the `identity` class embedding).
public final class Identity: Module, UnaryLayer {
    public override init() { super.init() }

    public func callAsFunction(_ input: Tensor) -> Tensor { input }
}
