import Foundation
import NN
import Yams

// Reading `train.yaml`, applying `key=value` overrides, and writing the
// configuration back as JSON (into checkpoints) with the same keys.

extension TrainingConfiguration {
    /// Every key, in the order they are written.
    public static let keys: [String] = [
        "image_size", "train_batch_size", "eval_batch_size", "num_epochs", "max_train_steps",
        "gradient_accumulation_steps", "learning_rate", "lr_warmup_steps", "save_image_epochs", "save_model_epochs",
        "mixed_precision", "output_dir", "overwrite_output_dir", "seed",
        "model", "from_pipeline", "freeze", "num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type", "snr_gamma",
        "dataset", "dataset_limit", "channels", "random_flip", "prefetch_batches",
        "lr_scheduler", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon", "max_grad_norm",
        "use_ema", "ema_max_decay", "ema_min_decay", "ema_inv_gamma", "ema_power", "ema_use_warmup", "ema_update_after_step",
        "class_conditional", "condition_dropout", "eval_scheduler", "eval_inference_steps", "guidance_scale",
        "checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint",
    ]

    /// Reads a `train.yaml` text (empty text: all defaults), then applies
    /// `overrides` in order. Each override is a key (a dotted path such as
    /// `model.block_out_channels` reaches into a mapping) and a YAML value
    /// (`1e-4`, `true`, `[32, 64]`, `null`, a bare string).
    public static func load(yaml text: String, overrides: [(key: String, value: String)] = []) throws -> TrainingConfiguration {
        var root: [String: JSONValue] = [:]
        if !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            let node: Node?
            do {
                node = try Yams.compose(yaml: text)
            } catch {
                throw TrainingConfigurationError("the training configuration is not valid YAML: \(error)")
            }
            if let node {
                guard case .object(let members) = try YAMLValues.value(of: node) else {
                    throw TrainingConfigurationError("the training configuration must be a mapping of keys to values")
                }
                root = members
            }
        }
        for (key, value) in overrides {
            try YAMLValues.set(&root, path: key.split(separator: ".").map(String.init), to: try YAMLValues.parse(value: value))
        }
        return try TrainingConfiguration(jsonObject: root)
    }

    /// Reads a `train.yaml` file.
    public static func load(contentsOf url: URL, overrides: [(key: String, value: String)] = []) throws -> TrainingConfiguration {
        let text: String
        do {
            text = try String(contentsOf: url, encoding: .utf8)
        } catch {
            throw TrainingConfigurationError("cannot read \(url.path): \(error.localizedDescription)")
        }
        do {
            return try load(yaml: text, overrides: overrides)
        } catch let error as TrainingConfigurationError {
            throw TrainingConfigurationError("\(url.lastPathComponent): \(error.message)")
        }
    }

    /// Builds the configuration from its keys; absent keys keep their defaults.
    public init(jsonObject members: [String: JSONValue]) throws {
        self.init()
        let known = Set(Self.keys)
        for key in members.keys.sorted() where !known.contains(key) {
            throw TrainingConfigurationError("unknown key \"\(key)\"; known keys: \(Self.keys.joined(separator: ", "))")
        }
        let read = ValueReader(members: members)
        imageSize = try read.optionalInteger("image_size", imageSize)
        trainBatchSize = try read.integer("train_batch_size", trainBatchSize)
        evalBatchSize = try read.integer("eval_batch_size", evalBatchSize)
        numEpochs = try read.integer("num_epochs", numEpochs)
        maxTrainSteps = try read.optionalInteger("max_train_steps", maxTrainSteps)
        gradientAccumulationSteps = try read.integer("gradient_accumulation_steps", gradientAccumulationSteps)
        learningRate = try read.number("learning_rate", learningRate)
        lrWarmupSteps = try read.integer("lr_warmup_steps", lrWarmupSteps)
        saveImageEpochs = try read.integer("save_image_epochs", saveImageEpochs)
        saveModelEpochs = try read.integer("save_model_epochs", saveModelEpochs)
        mixedPrecision = try read.choice("mixed_precision", mixedPrecision, falseMeans: MixedPrecision.no)
        outputDir = try read.string("output_dir", outputDir)
        overwriteOutputDir = try read.flag("overwrite_output_dir", overwriteOutputDir)
        let seedValue = try read.integer("seed", Int(truncatingIfNeeded: seed))
        guard seedValue >= 0 else { throw TrainingConfigurationError("seed must not be negative, got \(seedValue)") }
        seed = UInt64(seedValue)
        if let value = members["model"] { model = try ModelChoice(value) }
        fromPipeline = try read.optionalString("from_pipeline", fromPipeline)
        freeze = try read.strings("freeze", freeze)
        numTrainTimesteps = try read.integer("num_train_timesteps", numTrainTimesteps)
        betaSchedule = try read.string("beta_schedule", betaSchedule)
        betaStart = try read.number("beta_start", betaStart)
        betaEnd = try read.number("beta_end", betaEnd)
        predictionType = try read.choice("prediction_type", predictionType)
        snrGamma = try read.optionalNumber("snr_gamma", snrGamma)
        dataset = try read.string("dataset", dataset)
        datasetLimit = try read.optionalInteger("dataset_limit", datasetLimit)
        channels = try read.optionalInteger("channels", channels)
        randomFlip = try read.flag("random_flip", randomFlip)
        prefetchBatches = try read.integer("prefetch_batches", prefetchBatches)
        lrScheduler = try read.choice("lr_scheduler", lrScheduler)
        adamBeta1 = try read.number("adam_beta1", adamBeta1)
        adamBeta2 = try read.number("adam_beta2", adamBeta2)
        adamWeightDecay = try read.number("adam_weight_decay", adamWeightDecay)
        adamEpsilon = try read.number("adam_epsilon", adamEpsilon)
        maxGradNorm = try read.optionalNumber("max_grad_norm", maxGradNorm)
        useEMA = try read.flag("use_ema", useEMA)
        emaMaxDecay = try read.number("ema_max_decay", emaMaxDecay)
        emaMinDecay = try read.number("ema_min_decay", emaMinDecay)
        emaInvGamma = try read.number("ema_inv_gamma", emaInvGamma)
        emaPower = try read.number("ema_power", emaPower)
        emaUseWarmup = try read.flag("ema_use_warmup", emaUseWarmup)
        emaUpdateAfterStep = try read.integer("ema_update_after_step", emaUpdateAfterStep)
        classConditional = try read.flag("class_conditional", classConditional)
        conditionDropout = try read.number("condition_dropout", conditionDropout)
        evalScheduler = try read.string("eval_scheduler", evalScheduler)
        evalInferenceSteps = try read.integer("eval_inference_steps", evalInferenceSteps)
        guidanceScale = try read.number("guidance_scale", guidanceScale)
        checkpointingSteps = try read.integer("checkpointing_steps", checkpointingSteps)
        checkpointsTotalLimit = try read.optionalInteger("checkpoints_total_limit", checkpointsTotalLimit)
        resumeFromCheckpoint = try read.optionalString("resume_from_checkpoint", resumeFromCheckpoint)
        try validate()
    }

    /// Every key with its value.
    public var jsonObject: [String: JSONValue] {
        func optional(_ value: Int?) -> JSONValue { value.map { .int($0) } ?? .null }
        func optional(_ value: String?) -> JSONValue { value.map { .string($0) } ?? .null }
        return [
            "image_size": optional(imageSize), "train_batch_size": .int(trainBatchSize), "eval_batch_size": .int(evalBatchSize),
            "num_epochs": .int(numEpochs), "max_train_steps": optional(maxTrainSteps),
            "gradient_accumulation_steps": .int(gradientAccumulationSteps), "learning_rate": .double(learningRate),
            "lr_warmup_steps": .int(lrWarmupSteps), "save_image_epochs": .int(saveImageEpochs),
            "save_model_epochs": .int(saveModelEpochs), "mixed_precision": .string(mixedPrecision.rawValue),
            "output_dir": .string(outputDir), "overwrite_output_dir": .bool(overwriteOutputDir),
            "seed": .int(Int(truncatingIfNeeded: seed)), "model": model.jsonValue, "from_pipeline": optional(fromPipeline),
            "freeze": .array(freeze.map { .string($0) }), "num_train_timesteps": .int(numTrainTimesteps),
            "beta_schedule": .string(betaSchedule), "beta_start": .double(betaStart), "beta_end": .double(betaEnd),
            "prediction_type": .string(predictionType.rawValue), "snr_gamma": snrGamma.map { .double($0) } ?? .null,
            "dataset": .string(dataset),
            "dataset_limit": optional(datasetLimit), "channels": optional(channels), "random_flip": .bool(randomFlip),
            "prefetch_batches": .int(prefetchBatches), "lr_scheduler": .string(lrScheduler.rawValue),
            "adam_beta1": .double(adamBeta1), "adam_beta2": .double(adamBeta2),
            "adam_weight_decay": .double(adamWeightDecay), "adam_epsilon": .double(adamEpsilon),
            "max_grad_norm": maxGradNorm.map { .double($0) } ?? .null, "use_ema": .bool(useEMA),
            "ema_max_decay": .double(emaMaxDecay), "ema_min_decay": .double(emaMinDecay),
            "ema_inv_gamma": .double(emaInvGamma), "ema_power": .double(emaPower), "ema_use_warmup": .bool(emaUseWarmup),
            "ema_update_after_step": .int(emaUpdateAfterStep), "class_conditional": .bool(classConditional),
            "condition_dropout": .double(conditionDropout), "eval_scheduler": .string(evalScheduler),
            "eval_inference_steps": .int(evalInferenceSteps), "guidance_scale": .double(guidanceScale),
            "checkpointing_steps": .int(checkpointingSteps), "checkpoints_total_limit": optional(checkpointsTotalLimit),
            "resume_from_checkpoint": optional(resumeFromCheckpoint),
        ]
    }

    /// The configuration as indented JSON with sorted keys.
    public var jsonText: String { JSONText.write(.object(jsonObject), indent: 2) + "\n" }
}

extension TrainingConfiguration: Codable {
    /// Decodes an object with the snake-case keys, as `init(jsonObject:)`.
    public init(from decoder: Decoder) throws {
        let value = try decoder.singleValueContainer().decode(CodableJSONValue.self).value
        guard case .object(let members) = value else { throw TrainingConfigurationError("a training configuration must be an object") }
        try self.init(jsonObject: members)
    }

    /// Encodes every key of `jsonObject`.
    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(CodableJSONValue(.object(jsonObject)))
    }
}

extension ModelChoice {
    /// A preset name, or a mapping of `config.json` keys with an optional `preset` key as its base.
    init(_ value: JSONValue) throws {
        switch value {
        case .string(let name):
            self = .preset(name)
        case .object(var members):
            var base: String?
            if let preset = members.removeValue(forKey: "preset") {
                guard case .string(let name) = preset else { throw TrainingConfigurationError("model.preset must be a preset name") }
                base = name
            }
            self = .configuration(base: base, keys: members)
        default:
            throw TrainingConfigurationError("model must be a preset name (\(ModelPresets.names.joined(separator: ", "))) or a mapping of UNet2DModel config.json keys, found a \(value.typeName)")
        }
    }

    /// The value as written in `train.yaml`.
    var jsonValue: JSONValue {
        switch self {
        case .preset(let name): return .string(name)
        case .configuration(let base, var keys):
            if let base { keys["preset"] = .string(base) }
            return .object(keys)
        }
    }
}

/// Typed reads of configuration values with key-naming errors.
private struct ValueReader {
    let members: [String: JSONValue]

    private func wrong(_ key: String, _ expected: String, _ value: JSONValue) -> TrainingConfigurationError {
        TrainingConfigurationError("\(key) must be \(expected), found \(value.typeName) \(value)")
    }

    func integer(_ key: String, _ fallback: Int) throws -> Int {
        guard let value = members[key] else { return fallback }
        switch value {
        case .int(let number): return number
        case .double(let number) where number.rounded() == number && Swift.abs(number) < 1e15: return Int(number)
        case .string(let text) where Int(text) != nil: return Int(text)!
        default: throw wrong(key, "an integer", value)
        }
    }

    func optionalInteger(_ key: String, _ fallback: Int?) throws -> Int? {
        if case .null? = members[key] { return nil }
        guard members[key] != nil else { return fallback }
        return try integer(key, 0)
    }

    func number(_ key: String, _ fallback: Double) throws -> Double {
        guard let value = members[key] else { return fallback }
        if let number = value.numberValue { return number }
        if case .string(let text) = value, let number = Double(text) { return number }
        throw wrong(key, "a number", value)
    }

    func optionalNumber(_ key: String, _ fallback: Double?) throws -> Double? {
        if case .null? = members[key] { return nil }
        guard members[key] != nil else { return fallback }
        return try number(key, 0)
    }

    func flag(_ key: String, _ fallback: Bool) throws -> Bool {
        guard let value = members[key] else { return fallback }
        switch value {
        case .bool(let flag): return flag
        case .string(let text) where ["true", "false"].contains(text.lowercased()): return text.lowercased() == "true"
        default: throw wrong(key, "true or false", value)
        }
    }

    func string(_ key: String, _ fallback: String) throws -> String {
        guard let value = members[key] else { return fallback }
        switch value {
        case .string(let text): return text
        case .int(let number): return String(number)
        default: throw wrong(key, "a string", value)
        }
    }

    func optionalString(_ key: String, _ fallback: String?) throws -> String? {
        if case .null? = members[key] { return nil }
        guard members[key] != nil else { return fallback }
        return try string(key, "")
    }

    func strings(_ key: String, _ fallback: [String]) throws -> [String] {
        guard let value = members[key] else { return fallback }
        switch value {
        case .null: return []
        case .string(let text): return [text]
        case .array(let items):
            return try items.map { item in
                guard case .string(let text) = item else { throw wrong(key, "a list of strings", value) }
                return text
            }
        default: throw wrong(key, "a list of strings", value)
        }
    }

    /// A string choice; `false` (YAML's bare `no`) reads as `falseMeans` when given.
    func choice<T: RawRepresentable & CaseIterable>(_ key: String, _ fallback: T, falseMeans: T? = nil) throws -> T where T.RawValue == String {
        guard let value = members[key] else { return fallback }
        if case .bool(false) = value, let falseMeans { return falseMeans }
        guard case .string(let text) = value else { throw wrong(key, "a string", value) }
        guard let result = T(rawValue: text) else {
            throw TrainingConfigurationError("\(key) \"\(text)\" is not one of \(T.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", "))")
        }
        return result
    }
}

/// YAML nodes as `JSONValue`s, with YAML's own scalar resolution.
enum YAMLValues {
    static func value(of node: Node) throws -> JSONValue {
        switch node {
        case .scalar(let scalar):
            if scalar.style != .plain && scalar.style != .any { return .string(scalar.string) }
            if node.null != nil { return .null }
            if let flag = node.bool { return .bool(flag) }
            if let number = node.int { return .int(number) }
            if let number = node.float { return .double(number) }
            // YAML 1.1 needs a dot in a float (`1e-4` is a string there); read it as a number.
            if let number = Double(scalar.string), scalar.string.contains(where: { $0 == "e" || $0 == "E" }) {
                return .double(number)
            }
            return .string(scalar.string)
        case .mapping(let mapping):
            var members: [String: JSONValue] = [:]
            for (key, item) in mapping {
                guard let name = key.string else { throw TrainingConfigurationError("mapping keys must be strings") }
                members[name] = try value(of: item)
            }
            return .object(members)
        case .sequence(let sequence):
            return .array(try sequence.map { try value(of: $0) })
        }
    }

    /// One override value: YAML text (a bare word is a string).
    static func parse(value text: String) throws -> JSONValue {
        guard !text.isEmpty else { return .string("") }
        do {
            guard let node = try Yams.compose(yaml: text) else { return .null }
            return try value(of: node)
        } catch {
            return .string(text)
        }
    }

    /// Sets `root[path[0]][path[1]]… = value`, creating mappings on the way.
    static func set(_ root: inout [String: JSONValue], path: [String], to value: JSONValue) throws {
        guard let first = path.first, !first.isEmpty else { throw TrainingConfigurationError("an override needs a key: key=value") }
        if path.count == 1 {
            root[first] = value
            return
        }
        var inner: [String: JSONValue] = [:]
        switch root[first] {
        case .object(let members)?: inner = members
        case .string(let preset)? where first == "model": inner = ["preset": .string(preset)]
        case nil where first == "model": inner = ["preset": .string(ModelPresets.defaultName)]
        case nil, .null?: break
        default: throw TrainingConfigurationError("cannot set \(path.joined(separator: ".")): \(first) is not a mapping")
        }
        try set(&inner, path: Array(path.dropFirst()), to: value)
        root[first] = .object(inner)
    }
}
