import Foundation

/// A `scheduler_config.json`: diffusers' scheduler settings, by diffusers key.
///
/// The configuration holds only the keys that were given (read from a file or
/// set in code); a scheduler built from it fills every other key with its own
/// default, as diffusers' `from_config` does. That is what lets any scheduler be
/// built from another's configuration (a DDPM-trained pipeline sampled with
/// DPM-Solver++): keys the new scheduler knows are taken, keys it lacks are kept
/// and written back, keys it has but the configuration lacks take its defaults.
///
/// Reading is strict about what it understands: a known key with a value of the
/// wrong type, or a string that is not one of the key's allowed values, is an
/// error naming the key. Keys no scheduler here knows are kept (and written back)
/// and reported once, on standard error.
///
/// ```swift
/// var configuration = SchedulerConfiguration()
/// configuration.betaSchedule = .scaledLinear
/// configuration.predictionType = .vPrediction
/// let scheduler = try DDIMScheduler(configuration: configuration)
/// let fast = try DPMSolverMultistepScheduler(configuration: scheduler.configuration)
/// ```
public struct SchedulerConfiguration: Equatable, Sendable {
    /// `_class_name`: the diffusers class the configuration was written for.
    public var className: String?
    /// The given values by diffusers key, private (`_`) keys other than
    /// `_class_name` included, as read.
    public private(set) var values: [String: JSONValue]

    /// An empty configuration: every scheduler built from it uses its defaults.
    public init(className: String? = nil) {
        self.className = className
        self.values = [:]
    }

    /// A configuration from diffusers keys and values, checked like a file.
    public init(className: String? = nil, values: [String: JSONValue]) throws {
        self.className = className
        self.values = [:]
        for (key, value) in values { try set(key, value) }
    }

    /// Reads a `scheduler_config.json` (or a directory holding one).
    public static func load(contentsOf url: URL) throws -> SchedulerConfiguration {
        var file = url
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: file.path, isDirectory: &isDirectory), isDirectory.boolValue {
            file = file.appendingPathComponent("scheduler_config.json")
        }
        guard FileManager.default.fileExists(atPath: file.path) else {
            throw SchedulerConfigurationError.fileNotFound(file.path)
        }
        let text: String
        do {
            text = try String(contentsOf: file, encoding: .utf8)
        } catch {
            throw SchedulerConfigurationError.unreadable(file.path, "\(error)")
        }
        return try SchedulerConfiguration(jsonText: text, source: file.lastPathComponent)
    }

    /// Parses the text of a `scheduler_config.json`.
    public init(jsonText: String, source: String = "scheduler_config.json") throws {
        let root: JSONValue
        do {
            root = try JSONText.parse(jsonText)
        } catch let error as JSONSyntaxError {
            throw SchedulerConfigurationError.invalidJSON(source, error.description)
        }
        guard case .object(var members) = root else {
            throw SchedulerConfigurationError.notAnObject(source, root.typeName)
        }
        var className: String?
        if let name = members.removeValue(forKey: "_class_name") {
            guard case .string(let text) = name else {
                throw SchedulerConfigurationError.wrongType(key: "_class_name", expected: "string", found: name)
            }
            className = text
        }
        members.removeValue(forKey: "_diffusers_version")
        // In-memory diffusers configs list the keys that took defaults; those were not given.
        if case .array(let defaulted)? = members.removeValue(forKey: "_use_default_values") {
            for case .string(let key) in defaulted { members.removeValue(forKey: key) }
        }
        try self.init(className: className, values: members)
        let unknown = members.keys.filter { !$0.hasPrefix("_") && SchedulerConfiguration.keyKinds[$0] == nil }.sorted()
        if !unknown.isEmpty {
            SchedulerConfiguration.warn("\(source): keys \(unknown.joined(separator: ", ")) are not known to any scheduler; they are kept (and written back) but ignored")
        }
    }

    /// The value given for `key`, if any.
    public subscript(key: String) -> JSONValue? { values[key] }

    /// Sets a value after checking it against the key's type and allowed values.
    public mutating func set(_ key: String, _ value: JSONValue) throws {
        if key == "_class_name" {
            guard case .string(let name) = value else {
                throw SchedulerConfigurationError.wrongType(key: key, expected: "string", found: value)
            }
            className = name
            return
        }
        if let kind = SchedulerConfiguration.keyKinds[key] { try kind.check(key: key, value: value) }
        values[key] = value
    }

    /// Removes a given value, so schedulers use their default.
    public mutating func removeValue(forKey key: String) { values.removeValue(forKey: key) }

    /// Where warnings go (standard error unless replaced, e.g. by a test).
    nonisolated(unsafe) public static var warningHandler: (String) -> Void = { message in
        FileHandle.standardError.write(Data(("warning: " + message + "\n").utf8))
    }

    static func warn(_ message: String) { warningHandler(message) }

    // MARK: Writing

    /// The `scheduler_config.json` text a scheduler with these keys and defaults
    /// writes: `json.dumps(config, indent=2, sort_keys=True) + "\n"`.
    func jsonText(className: String, defaults: KeyValuePairs<String, JSONValue>) -> String {
        var members = values
        for (key, value) in defaults where members[key] == nil { members[key] = value }
        members["_class_name"] = .string(className)
        members["_diffusers_version"] = .string(SchedulerConfiguration.diffusersVersion)
        return JSONText.write(.object(members), indent: 2) + "\n"
    }

    /// The diffusers version written into `_diffusers_version`.
    public static let diffusersVersion = "0.42.1"
}

/// Errors reading or using a scheduler configuration.
public enum SchedulerConfigurationError: Error, CustomStringConvertible, Equatable {
    case fileNotFound(String)
    case unreadable(String, String)
    case invalidJSON(String, String)
    case notAnObject(String, String)
    case wrongType(key: String, expected: String, found: JSONValue)
    case unknownValue(key: String, value: String, allowed: [String])
    case invalidValue(key: String, value: JSONValue, reason: String)
    case unknownClassName(String?)
    case unsupported(key: String, value: JSONValue, reason: String)

    public var description: String {
        switch self {
        case .fileNotFound(let path): return "scheduler configuration not found: \(path)"
        case .unreadable(let path, let reason): return "cannot read scheduler configuration \(path): \(reason)"
        case .invalidJSON(let source, let reason): return "\(source) is not valid JSON: \(reason)"
        case .notAnObject(let source, let type): return "\(source) must hold a JSON object, not a \(type)"
        case .wrongType(let key, let expected, let found):
            return "scheduler configuration key \"\(key)\" must be \(expected), got \(found.typeName) \(found)"
        case .unknownValue(let key, let value, let allowed):
            return "scheduler configuration key \"\(key)\" has unknown value \"\(value)\"; expected one of \(allowed.map { "\"\($0)\"" }.joined(separator: ", "))"
        case .invalidValue(let key, let value, let reason):
            return "scheduler configuration key \"\(key)\" has invalid value \(value): \(reason)"
        case .unknownClassName(let name):
            let known = SchedulerKind.allCases.map(\.rawValue).joined(separator: ", ")
            if let name { return "unknown scheduler class \"\(name)\" (_class_name); known: \(known)" }
            return "the scheduler configuration has no _class_name; pass the scheduler kind (known: \(known))"
        case .unsupported(let key, let value, let reason):
            return "scheduler configuration key \"\(key)\" = \(value) is not supported: \(reason)"
        }
    }
}

// MARK: - Key types

extension SchedulerConfiguration {
    /// What a key may hold.
    indirect enum KeyKind {
        case int, float, bool, floatList, intList
        case choice([String])
        case nullable(KeyKind)

        var name: String {
            switch self {
            case .int: return "an integer"
            case .float: return "a number"
            case .bool: return "true or false"
            case .floatList: return "a list of numbers"
            case .intList: return "a list of integers"
            case .choice: return "a string"
            case .nullable(let inner): return inner.name + " or null"
            }
        }

        func check(key: String, value: JSONValue) throws {
            switch (self, value) {
            case (.nullable, .null): return
            case (.nullable(let inner), _): try inner.check(key: key, value: value)
            case (.int, .int), (.float, .int), (.float, .double), (.bool, .bool): return
            case (.floatList, .array(let items)) where items.allSatisfy({ $0.numberValue != nil }): return
            case (.intList, .array(let items)) where items.allSatisfy({ if case .int = $0 { return true } else { return false } }): return
            case (.choice(let allowed), .string(let text)):
                guard allowed.contains(text) else {
                    throw SchedulerConfigurationError.unknownValue(key: key, value: text, allowed: allowed)
                }
            default:
                throw SchedulerConfigurationError.wrongType(key: key, expected: name, found: value)
            }
        }
    }

    /// Every key the schedulers here read, with its type.
    static let keyKinds: [String: KeyKind] = [
        "num_train_timesteps": .int, "beta_start": .float, "beta_end": .float,
        "beta_schedule": .choice(BetaSchedule.allCases.map(\.rawValue)),
        "trained_betas": .nullable(.floatList),
        "prediction_type": .choice(PredictionType.allCases.map(\.rawValue)),
        "timestep_spacing": .choice(TimestepSpacing.allCases.map(\.rawValue)),
        "steps_offset": .int, "clip_sample": .bool, "clip_sample_range": .float,
        "thresholding": .bool, "dynamic_thresholding_ratio": .float, "sample_max_value": .float,
        "set_alpha_to_one": .bool, "rescale_betas_zero_snr": .bool,
        "variance_type": .nullable(.choice(VarianceType.allCases.map(\.rawValue))),
        "skip_prk_steps": .bool,
        "use_karras_sigmas": .nullable(.bool), "use_exponential_sigmas": .nullable(.bool), "use_beta_sigmas": .nullable(.bool),
        "interpolation_type": .choice(["linear", "log_linear"]),
        "sigma_min": .nullable(.float), "sigma_max": .nullable(.float),
        "timestep_type": .choice(["discrete", "continuous"]),
        "final_sigmas_type": .choice(["zero", "sigma_min"]),
        "solver_order": .int,
        "algorithm_type": .choice(["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver", "deis"]),
        "solver_type": .choice(["midpoint", "heun", "logrho", "bh1", "bh2"]),
        "lower_order_final": .bool, "euler_at_final": .bool, "use_lu_lambdas": .bool,
        "use_flow_sigmas": .bool, "flow_shift": .float, "lambda_min_clipped": .float,
        "use_dynamic_shifting": .bool, "time_shift_type": .choice(["exponential", "linear"]),
        "predict_x0": .bool, "disable_corrector": .intList,
        "solver_p": .nullable(.bool), "shift_terminal": .nullable(.float),
    ]
}

// MARK: - Typed access

extension SchedulerConfiguration {
    private func typed<T: RawRepresentable>(_ key: String) -> T? where T.RawValue == String {
        if case .string(let text)? = values[key] { return T(rawValue: text) }
        return nil
    }

    private mutating func setTyped<T: RawRepresentable>(_ key: String, _ value: T?) where T.RawValue == String {
        if let value { values[key] = .string(value.rawValue) } else { values.removeValue(forKey: key) }
    }

    private func number(_ key: String) -> Double? { values[key]?.numberValue }
    private mutating func setNumber(_ key: String, _ value: Double?) {
        if let value { values[key] = .double(value) } else { values.removeValue(forKey: key) }
    }

    private func integer(_ key: String) -> Int? { if case .int(let value)? = values[key] { return value } else { return nil } }
    private mutating func setInteger(_ key: String, _ value: Int?) {
        if let value { values[key] = .int(value) } else { values.removeValue(forKey: key) }
    }

    private func flag(_ key: String) -> Bool? { if case .bool(let value)? = values[key] { return value } else { return nil } }
    private mutating func setFlag(_ key: String, _ value: Bool?) {
        if let value { values[key] = .bool(value) } else { values.removeValue(forKey: key) }
    }

    /// `num_train_timesteps` (nil: the scheduler's default).
    public var trainTimesteps: Int? { get { integer("num_train_timesteps") } set { setInteger("num_train_timesteps", newValue) } }
    /// `beta_start`.
    public var betaStart: Double? { get { number("beta_start") } set { setNumber("beta_start", newValue) } }
    /// `beta_end`.
    public var betaEnd: Double? { get { number("beta_end") } set { setNumber("beta_end", newValue) } }
    /// `beta_schedule`.
    public var betaSchedule: BetaSchedule? { get { typed("beta_schedule") } set { setTyped("beta_schedule", newValue) } }
    /// `trained_betas`: explicit betas, overriding the schedule.
    public var trainedBetas: [Double]? {
        get { if case .array(let items)? = values["trained_betas"] { return items.compactMap(\.numberValue) } else { return nil } }
        set { if let newValue { values["trained_betas"] = .array(newValue.map { .double($0) }) } else { values.removeValue(forKey: "trained_betas") } }
    }
    /// `prediction_type`.
    public var predictionType: PredictionType? { get { typed("prediction_type") } set { setTyped("prediction_type", newValue) } }
    /// `timestep_spacing`.
    public var timestepSpacing: TimestepSpacing? { get { typed("timestep_spacing") } set { setTyped("timestep_spacing", newValue) } }
    /// `steps_offset`.
    public var stepsOffset: Int? { get { integer("steps_offset") } set { setInteger("steps_offset", newValue) } }
    /// `clip_sample`.
    public var clipSample: Bool? { get { flag("clip_sample") } set { setFlag("clip_sample", newValue) } }
    /// `clip_sample_range`.
    public var clipSampleRange: Double? { get { number("clip_sample_range") } set { setNumber("clip_sample_range", newValue) } }
    /// `thresholding`: dynamic thresholding of the predicted x0.
    public var thresholding: Bool? { get { flag("thresholding") } set { setFlag("thresholding", newValue) } }
    /// `dynamic_thresholding_ratio`.
    public var dynamicThresholdingRatio: Double? { get { number("dynamic_thresholding_ratio") } set { setNumber("dynamic_thresholding_ratio", newValue) } }
    /// `sample_max_value`.
    public var sampleMaxValue: Double? { get { number("sample_max_value") } set { setNumber("sample_max_value", newValue) } }
    /// `set_alpha_to_one`.
    public var setAlphaToOne: Bool? { get { flag("set_alpha_to_one") } set { setFlag("set_alpha_to_one", newValue) } }
    /// `rescale_betas_zero_snr`.
    public var rescaleBetasZeroSNR: Bool? { get { flag("rescale_betas_zero_snr") } set { setFlag("rescale_betas_zero_snr", newValue) } }
    /// `variance_type`.
    public var varianceType: VarianceType? { get { typed("variance_type") } set { setTyped("variance_type", newValue) } }
    /// `skip_prk_steps` (PNDM).
    public var skipPRKSteps: Bool? { get { flag("skip_prk_steps") } set { setFlag("skip_prk_steps", newValue) } }
    /// `use_karras_sigmas`.
    public var useKarrasSigmas: Bool? { get { flag("use_karras_sigmas") } set { setFlag("use_karras_sigmas", newValue) } }
    /// `use_exponential_sigmas`.
    public var useExponentialSigmas: Bool? { get { flag("use_exponential_sigmas") } set { setFlag("use_exponential_sigmas", newValue) } }
    /// `solver_order` (DPM-Solver, UniPC).
    public var solverOrder: Int? { get { integer("solver_order") } set { setInteger("solver_order", newValue) } }
    /// `algorithm_type` (DPM-Solver): "dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver".
    public var algorithmType: String? {
        get { if case .string(let text)? = values["algorithm_type"] { return text } else { return nil } }
        set { if let newValue { values["algorithm_type"] = .string(newValue) } else { values.removeValue(forKey: "algorithm_type") } }
    }
    /// `solver_type`: "midpoint"/"heun" (DPM-Solver), "bh1"/"bh2" (UniPC).
    public var solverType: String? {
        get { if case .string(let text)? = values["solver_type"] { return text } else { return nil } }
        set { if let newValue { values["solver_type"] = .string(newValue) } else { values.removeValue(forKey: "solver_type") } }
    }
}

// MARK: - Reading with a scheduler's defaults

/// A configuration seen through one scheduler's key list and defaults.
struct ConfigurationReader {
    let configuration: SchedulerConfiguration
    let defaults: KeyValuePairs<String, JSONValue>

    func value(_ key: String) -> JSONValue {
        if let given = configuration.values[key] { return given }
        guard let fallback = defaults.first(where: { $0.key == key })?.value else {
            fatalError("ConfigurationReader: \(key) is not one of this scheduler's keys")
        }
        return fallback
    }

    func int(_ key: String) -> Int {
        if case .int(let number) = value(key) { return number }
        fatalError("ConfigurationReader: \(key) is not an integer")
    }

    func double(_ key: String) -> Double {
        guard let number = value(key).numberValue else { fatalError("ConfigurationReader: \(key) is not a number") }
        return number
    }

    func optionalDouble(_ key: String) -> Double? { value(key).numberValue }

    /// A boolean; null counts as false (diffusers' `bool | None` keys).
    func bool(_ key: String) -> Bool {
        if case .bool(let flag) = value(key) { return flag }
        return false
    }

    func string(_ key: String) -> String? {
        if case .string(let text) = value(key) { return text }
        return nil
    }

    func choice<T: RawRepresentable>(_ key: String, as type: T.Type = T.self) -> T where T.RawValue == String {
        guard let text = string(key), let result = T(rawValue: text) else { fatalError("ConfigurationReader: \(key) is not a valid choice") }
        return result
    }

    func doubles(_ key: String) -> [Double]? {
        if case .array(let items) = value(key) { return items.compactMap(\.numberValue) }
        return nil
    }

    func ints(_ key: String) -> [Int] {
        if case .array(let items) = value(key) { return items.compactMap { if case .int(let n) = $0 { return n } else { return nil } } }
        return []
    }

    /// Throws `unsupported` when a key holds something this port does not implement.
    func require(_ key: String, _ condition: Bool, _ reason: String) throws {
        guard condition else { throw SchedulerConfigurationError.unsupported(key: key, value: value(key), reason: reason) }
    }

    /// Throws `invalidValue` naming the key.
    func check(_ key: String, _ condition: Bool, _ reason: String) throws {
        guard condition else { throw SchedulerConfigurationError.invalidValue(key: key, value: value(key), reason: reason) }
    }

    /// The noise schedule every scheduler here shares (betas → alphas_cumprod).
    func noiseSchedule(rescaleKey: Bool = true) throws -> NoiseSchedule {
        let count = int("num_train_timesteps")
        try check("num_train_timesteps", count >= 2, "needs at least 2 training timesteps")
        let trained = doubles("trained_betas")
        if let trained {
            try check("trained_betas", trained.count == count, "holds \(trained.count) betas but num_train_timesteps is \(count)")
        }
        return NoiseSchedule(
            trainTimesteps: count, betaStart: double("beta_start"), betaEnd: double("beta_end"),
            schedule: choice("beta_schedule"), trainedBetas: trained,
            rescaleZeroTerminalSNR: rescaleKey && bool("rescale_betas_zero_snr"))
    }
}
