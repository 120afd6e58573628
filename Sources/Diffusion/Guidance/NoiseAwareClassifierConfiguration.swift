import Foundation

/// The `config.json` of a ``NoiseAwareClassifier`` folder (snake_case keys,
/// as diffusers writes its model configurations).
public struct NoiseAwareClassifierConfiguration: Codable, Equatable, Sendable {
    /// The model class written as `_class_name`.
    public static let className = "NoiseAwareClassifier"

    /// `_class_name`.
    public var className = NoiseAwareClassifierConfiguration.className
    /// Image channels.
    public var inChannels = 1
    /// Side of the square images it was trained on.
    public var sampleSize = 28
    /// Channels of each down block (each but the last halves the resolution).
    public var blockOutChannels = [32, 64, 64]
    /// Resnets per down block.
    public var layersPerBlock = 1
    /// Group-norm groups.
    public var normGroupCount = 8
    /// Group-norm epsilon.
    public var normEpsilon = 1e-5
    /// A resnet–resnet middle block after the down blocks.
    public var addMidBlock = true
    /// The sinusoidal time embedding's `flip_sin_to_cos` (UNet2DModel's default).
    public var flipSinToCos = true
    /// The sinusoidal time embedding's `freq_shift` (UNet2DModel's default).
    public var frequencyShift = 0
    /// The class names, by label; their count is the number of outputs.
    public var classNames: [String] = []
    /// True when trained on noised images at random timesteps (for guidance);
    /// false for a clean-image classifier (evaluated at timestep 0).
    public var noiseAware = true
    /// The noise schedule the noised training images were drawn from (diffusers'
    /// scheduler keys); guidance checks that the sampling scheduler uses the same one.
    public var numTrainTimesteps = 1000
    /// `beta_schedule` of that noise schedule.
    public var betaSchedule = "linear"
    /// `beta_start` of that noise schedule.
    public var betaStart = 0.0001
    /// `beta_end` of that noise schedule.
    public var betaEnd = 0.02

    /// Number of classes.
    public var classCount: Int { classNames.count }

    /// The defaults above (no classes: set `classNames`).
    public init() {}

    enum CodingKeys: String, CodingKey {
        case className = "_class_name"
        case inChannels = "in_channels"
        case sampleSize = "sample_size"
        case blockOutChannels = "block_out_channels"
        case layersPerBlock = "layers_per_block"
        case normGroupCount = "norm_num_groups"
        case normEpsilon = "norm_eps"
        case addMidBlock = "add_mid_block"
        case flipSinToCos = "flip_sin_to_cos"
        case frequencyShift = "freq_shift"
        case classNames = "class_names"
        case noiseAware = "noise_aware"
        case numTrainTimesteps = "num_train_timesteps"
        case betaSchedule = "beta_schedule"
        case betaStart = "beta_start"
        case betaEnd = "beta_end"
    }

    /// Reads a `config.json`; keys it lacks take the defaults above (`class_names` is required).
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let defaults = NoiseAwareClassifierConfiguration()
        func value<Value: Decodable>(_ key: CodingKeys, _ fallback: Value) throws -> Value {
            try container.decodeIfPresent(Value.self, forKey: key) ?? fallback
        }
        className = try value(.className, defaults.className)
        inChannels = try value(.inChannels, defaults.inChannels)
        sampleSize = try value(.sampleSize, defaults.sampleSize)
        blockOutChannels = try value(.blockOutChannels, defaults.blockOutChannels)
        layersPerBlock = try value(.layersPerBlock, defaults.layersPerBlock)
        normGroupCount = try value(.normGroupCount, defaults.normGroupCount)
        normEpsilon = try value(.normEpsilon, defaults.normEpsilon)
        addMidBlock = try value(.addMidBlock, defaults.addMidBlock)
        flipSinToCos = try value(.flipSinToCos, defaults.flipSinToCos)
        frequencyShift = try value(.frequencyShift, defaults.frequencyShift)
        classNames = try container.decode([String].self, forKey: .classNames)
        noiseAware = try value(.noiseAware, defaults.noiseAware)
        numTrainTimesteps = try value(.numTrainTimesteps, defaults.numTrainTimesteps)
        betaSchedule = try value(.betaSchedule, defaults.betaSchedule)
        betaStart = try value(.betaStart, defaults.betaStart)
        betaEnd = try value(.betaEnd, defaults.betaEnd)
    }

    /// Checks that the configuration builds a model, naming the key at fault.
    public func validate() throws {
        func require(_ condition: Bool, _ message: @autoclosure () -> String) throws {
            if !condition { throw GuidanceError("classifier config.json: " + message()) }
        }
        try require(className == Self.className, "_class_name is \"\(className)\", expected \"\(Self.className)\"")
        try require(inChannels > 0, "in_channels must be positive")
        try require(!blockOutChannels.isEmpty && blockOutChannels.allSatisfy { $0 > 0 }, "block_out_channels must be positive sizes")
        try require(layersPerBlock > 0, "layers_per_block must be positive")
        try require(normGroupCount > 0 && blockOutChannels.allSatisfy { $0 % normGroupCount == 0 },
                    "norm_num_groups \(normGroupCount) must divide every block_out_channels entry \(blockOutChannels)")
        try require(classNames.count >= 2, "class_names must name at least two classes")
        try require(numTrainTimesteps > 0, "num_train_timesteps must be positive")
    }

    /// The noise schedule keys as a scheduler configuration.
    public var schedulerConfiguration: SchedulerConfiguration {
        get throws {
            try SchedulerConfiguration(values: [
                "num_train_timesteps": .int(numTrainTimesteps), "beta_schedule": .string(betaSchedule),
                "beta_start": .double(betaStart), "beta_end": .double(betaEnd),
            ])
        }
    }

    /// Takes the noise schedule keys of a scheduler configuration (diffusers' defaults where it has none).
    public mutating func adoptNoiseSchedule(of configuration: SchedulerConfiguration) {
        if case .int(let value)? = configuration["num_train_timesteps"] { numTrainTimesteps = value }
        if case .string(let value)? = configuration["beta_schedule"] { betaSchedule = value }
        if let value = configuration["beta_start"]?.numberValue { betaStart = value }
        if let value = configuration["beta_end"]?.numberValue { betaEnd = value }
    }
}
