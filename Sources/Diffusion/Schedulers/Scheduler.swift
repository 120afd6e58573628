import Foundation
import Tensors

/// What one scheduler step returns.
public struct SchedulerStepOutput {
    /// x_{t−1}: the sample to feed the model at the next timestep.
    public let prevSample: Tensor
    /// The step's prediction of the clean sample x0 (after any clipping or
    /// thresholding the scheduler applies). Every scheduler returns it; it is a
    /// differentiable function of the model output and the sample.
    public let predOriginalSample: Tensor

    public init(prevSample: Tensor, predOriginalSample: Tensor) {
        self.prevSample = prevSample
        self.predOriginalSample = predOriginalSample
    }
}

/// Errors from using a scheduler.
public enum SchedulerError: Error, CustomStringConvertible, Equatable {
    /// `setTimesteps` was asked for more steps than the model was trained with.
    case tooManyInferenceSteps(requested: Int, trainTimesteps: Int)
    /// `setTimesteps` was asked for fewer than one step.
    case invalidInferenceSteps(Int)

    public var description: String {
        switch self {
        case .tooManyInferenceSteps(let requested, let trainTimesteps):
            return "num_inference_steps \(requested) cannot be larger than num_train_timesteps \(trainTimesteps): the model was trained on only \(trainTimesteps) timesteps"
        case .invalidInferenceSteps(let count):
            return "num_inference_steps must be at least 1, got \(count)"
        }
    }

    static func check(_ count: Int, trainTimesteps: Int) throws {
        guard count >= 1 else { throw SchedulerError.invalidInferenceSteps(count) }
        guard count <= trainTimesteps else { throw SchedulerError.tooManyInferenceSteps(requested: count, trainTimesteps: trainTimesteps) }
    }
}

/// A diffusion sampler with diffusers' scheduler contract.
///
/// A sampling loop (see ``SamplingLoop``):
/// ```swift
/// try scheduler.setTimesteps(50)
/// var x = Tensor.randn(shape, generator: &generator) * scheduler.initNoiseSigma
/// for t in scheduler.timesteps {
///     let output = model(scheduler.scaleModelInput(x, timestep: t), t)
///     x = scheduler.step(output, timestep: t, sample: x, generator: &generator).prevSample
/// }
/// ```
/// Swapping the sampler is one line: build another scheduler from the same
/// ``SchedulerConfiguration``. Multistep schedulers keep state between steps;
/// `setTimesteps` resets it.
public protocol Scheduler: AnyObject {
    /// diffusers' class name (`_class_name`).
    static var className: String { get }
    /// This scheduler's diffusers keys with their defaults, in diffusers' order.
    static var configurationDefaults: KeyValuePairs<String, JSONValue> { get }

    /// Builds the scheduler from a configuration; keys it does not know are
    /// kept (and written back), keys the configuration lacks take defaults.
    init(configuration: SchedulerConfiguration) throws

    /// The given configuration (with `className` set to this scheduler's).
    var configuration: SchedulerConfiguration { get }
    /// The training noise schedule.
    var noiseSchedule: NoiseSchedule { get }
    /// How many model evaluations one timestep of `timesteps` stands for, as
    /// diffusers' `order` (2 for Heun, whose timesteps repeat; 1 otherwise).
    var order: Int { get }
    /// The timesteps to evaluate the model at, in order (after `setTimesteps`).
    var timesteps: [Float] { get }
    /// The standard deviation of the initial noise.
    var initNoiseSigma: Float { get }

    /// Picks `count` inference timesteps and resets any multistep state.
    func setTimesteps(_ count: Int) throws
    /// Scales the sample to the model's input (identity except for sigma-based schedulers).
    func scaleModelInput(_ sample: Tensor, timestep: Float) -> Tensor
    /// One reverse step from `sample` at `timestep`, given the model output there.
    /// Stochastic schedulers use `noise` when given (shaped like the sample)
    /// and otherwise draw from `generator`.
    func step(_ modelOutput: Tensor, timestep: Float, sample: Tensor, noise: Tensor?, generator: inout RandomGenerator) -> SchedulerStepOutput
    /// The forward process: `original` noised to each example's timestep.
    func addNoise(_ original: Tensor, noise: Tensor, timesteps: [Float]) -> Tensor
    /// The v-prediction target √ᾱₜ·ε − √(1−ᾱₜ)·x0 at each example's training timestep.
    func velocity(_ sample: Tensor, noise: Tensor, timesteps: [Float]) -> Tensor
}

extension Scheduler {
    /// `step` without injected noise.
    public func step(_ modelOutput: Tensor, timestep: Float, sample: Tensor, generator: inout RandomGenerator) -> SchedulerStepOutput {
        step(modelOutput, timestep: timestep, sample: sample, noise: nil, generator: &generator)
    }

    /// The number of training timesteps.
    public var trainTimesteps: Int { noiseSchedule.alphasCumprod.count }

    /// The `scheduler_config.json` text diffusers writes for this scheduler
    /// (`json.dumps(config, indent=2, sort_keys=True)` and a newline).
    public var configurationJSON: String {
        configuration.jsonText(className: Self.className, defaults: Self.configurationDefaults)
    }

    /// Writes `scheduler_config.json` at `url` (a file, or a directory to put it in).
    public func saveConfiguration(to url: URL) throws {
        var file = url
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue {
            file = url.appendingPathComponent("scheduler_config.json")
        }
        try configurationJSON.write(to: file, atomically: true, encoding: .utf8)
    }

    /// diffusers' `add_noise` for ᾱ-indexed schedulers: √ᾱₜ·x0 + √(1−ᾱₜ)·ε per example.
    public func addNoise(_ original: Tensor, noise: Tensor, timesteps: [Float]) -> Tensor {
        let (signal, noiseScale) = varianceCoefficients(timesteps, like: original)
        return original * signal + noise * noiseScale
    }

    /// diffusers' `get_velocity`: √ᾱₜ·ε − √(1−ᾱₜ)·x per example.
    public func velocity(_ sample: Tensor, noise: Tensor, timesteps: [Float]) -> Tensor {
        let (signal, noiseScale) = varianceCoefficients(timesteps, like: sample)
        return noise * signal - sample * noiseScale
    }

    /// `addNoise` with timesteps given as a [B] tensor (e.g. from `Tensor.randint`).
    public func addNoise(_ original: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor {
        addNoise(original, noise: noise, timesteps: timesteps.toArray())
    }

    /// `velocity` with timesteps given as a [B] tensor.
    public func velocity(_ sample: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor {
        velocity(sample, noise: noise, timesteps: timesteps.toArray())
    }

    /// Per-example [B, 1, …] tensors √ᾱₜ and √(1−ᾱₜ) (float32, as diffusers).
    func varianceCoefficients(_ timesteps: [Float], like tensor: Tensor) -> (Tensor, Tensor) {
        let cumulative = noiseSchedule.alphasCumprod
        let indices = timesteps.map { t -> Int in
            let index = Int(t)
            precondition(Float(index) == t && index >= 0 && index < cumulative.count,
                         "timestep \(t) is not an integer training timestep in 0..<\(cumulative.count)")
            return index
        }
        let signal = indices.map { cumulative[$0].squareRoot() }
        let noiseScale = indices.map { (1 - cumulative[$0]).squareRoot() }
        return (StepMath.perExample(signal, like: tensor), StepMath.perExample(noiseScale, like: tensor))
    }
}

/// The schedulers Diffuse implements, by diffusers class name.
public enum SchedulerKind: String, CaseIterable, Sendable {
    case ddpm = "DDPMScheduler"
    case ddim = "DDIMScheduler"
    case pndm = "PNDMScheduler"
    case lms = "LMSDiscreteScheduler"
    case euler = "EulerDiscreteScheduler"
    case eulerAncestral = "EulerAncestralDiscreteScheduler"
    case heun = "HeunDiscreteScheduler"
    case dpmSolverMultistep = "DPMSolverMultistepScheduler"
    case uniPCMultistep = "UniPCMultistepScheduler"

    /// The implementing type.
    public var schedulerType: any Scheduler.Type {
        switch self {
        case .ddpm: return DDPMScheduler.self
        case .ddim: return DDIMScheduler.self
        case .pndm: return PNDMScheduler.self
        case .lms: return LMSDiscreteScheduler.self
        case .euler: return EulerDiscreteScheduler.self
        case .eulerAncestral: return EulerAncestralDiscreteScheduler.self
        case .heun: return HeunDiscreteScheduler.self
        case .dpmSolverMultistep: return DPMSolverMultistepScheduler.self
        case .uniPCMultistep: return UniPCMultistepScheduler.self
        }
    }
}

/// Building schedulers from configurations.
public enum Schedulers {
    /// A scheduler of `kind` (default: the configuration's `_class_name`) from
    /// `configuration`, as diffusers' `from_config`.
    public static func make(_ kind: SchedulerKind? = nil, configuration: SchedulerConfiguration) throws -> any Scheduler {
        guard let kind = kind ?? configuration.className.flatMap(SchedulerKind.init(rawValue:)) else {
            throw SchedulerConfigurationError.unknownClassName(configuration.className)
        }
        return try kind.schedulerType.init(configuration: configuration)
    }

    /// Reads `scheduler_config.json` (a file, or a directory holding one) and
    /// builds the scheduler it names, or `kind` from its values.
    public static func load(contentsOf url: URL, as kind: SchedulerKind? = nil) throws -> any Scheduler {
        try make(kind, configuration: SchedulerConfiguration.load(contentsOf: url))
    }
}
