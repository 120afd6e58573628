import Diffusion
import Foundation
import Tensors
import XCTest

/// `scheduler_config.json` reading and writing, `from_config` conversions, and errors.
final class SchedulerConfigurationTests: XCTestCase {
    static var fixtures: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures").appendingPathComponent("schedulers")
    }

    /// configs.json: {"defaults": {class: text}, "source": text, "converted": {class: text}}.
    func configGoldens() throws -> [String: Any] {
        let data = try Data(contentsOf: Self.fixtures.appendingPathComponent("configs.json"))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    /// Captures warnings while `body` runs.
    func warnings(_ body: () throws -> Void) rethrows -> [String] {
        var captured: [String] = []
        let saved = SchedulerConfiguration.warningHandler
        SchedulerConfiguration.warningHandler = { captured.append($0) }
        defer { SchedulerConfiguration.warningHandler = saved }
        try body()
        return captured
    }

    func testDefaultsAreWrittenExactlyAsDiffusers() throws {
        let defaults = try configGoldens()["defaults"] as! [String: String]
        for kind in SchedulerKind.allCases {
            let scheduler = try kind.schedulerType.init(configuration: SchedulerConfiguration())
            XCTAssertEqual(scheduler.configurationJSON, defaults[kind.rawValue], kind.rawValue)
        }
    }

    func testFromConfigOfASavedDDPMConfigMatchesDiffusersForEveryScheduler() throws {
        let goldens = try configGoldens()
        let source = goldens["source"] as! String
        let converted = goldens["converted"] as! [String: String]
        var configuration: SchedulerConfiguration!
        let messages = try warnings { configuration = try SchedulerConfiguration(jsonText: source) }
        XCTAssertEqual(messages.count, 1, "one warning for the unknown key")
        XCTAssertTrue(messages.first?.contains("some_future_key") ?? false, "\(messages)")
        XCTAssertEqual(configuration["some_future_key"], .array([.int(1), .double(2.5), .string("x")]), "unknown keys are kept")
        for kind in SchedulerKind.allCases {
            let scheduler = try Schedulers.make(kind, configuration: configuration)
            XCTAssertEqual(scheduler.configurationJSON, converted[kind.rawValue], kind.rawValue)
            // Converting back and forth keeps everything.
            let again = try Schedulers.make(.ddpm, configuration: scheduler.configuration)
            XCTAssertEqual(again.configurationJSON, try Schedulers.make(.ddpm, configuration: configuration).configurationJSON)
        }
        // The source names DDPMScheduler, so make() without a kind builds that.
        XCTAssertTrue(try Schedulers.make(configuration: configuration) is DDPMScheduler)
    }

    func testFromConfigInCodeTakesOnlyGivenKeys() throws {
        // A DDPM scheduler with defaults gives no keys: DPM-Solver keeps its own defaults
        // (as diffusers' from_config of an in-memory config whose keys all took defaults).
        let ddpm = DDPMScheduler()
        let dpm = try DPMSolverMultistepScheduler(configuration: ddpm.configuration)
        try dpm.setTimesteps(20)
        XCTAssertEqual(dpm.timesteps.first, 999, "linspace, DPM-Solver's default")
        // The same DDPM read back from its file gives every key: the leading spacing carries over.
        let saved = try SchedulerConfiguration(jsonText: ddpm.configurationJSON)
        let fromFile = try DPMSolverMultistepScheduler(configuration: saved)
        try fromFile.setTimesteps(20)
        XCTAssertEqual(fromFile.timesteps.first, 940, "leading: 1000 // 21 · 20")
        XCTAssertTrue(fromFile.configurationJSON.contains("\"clip_sample\": true"), "DDPM-only keys are written back")
        // Typed setters.
        var configuration = SchedulerConfiguration()
        configuration.betaSchedule = .scaledLinear
        configuration.predictionType = .vPrediction
        configuration.timestepSpacing = .trailing
        configuration.betaStart = 0.00085
        configuration.betaEnd = 0.012
        let euler = try EulerDiscreteScheduler(configuration: configuration)
        XCTAssertTrue(euler.configurationJSON.contains("\"beta_schedule\": \"scaled_linear\""))
        XCTAssertTrue(euler.configurationJSON.contains("\"prediction_type\": \"v_prediction\""))
        XCTAssertEqual(euler.configuration.betaSchedule, .scaledLinear)
    }

    func testLoadAndSaveFiles() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("scheduler-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var configuration = SchedulerConfiguration()
        configuration.solverOrder = 3
        configuration.useKarrasSigmas = true
        let scheduler = try DPMSolverMultistepScheduler(configuration: configuration)
        try scheduler.saveConfiguration(to: directory)
        let file = directory.appendingPathComponent("scheduler_config.json")
        XCTAssertEqual(try String(contentsOf: file, encoding: .utf8), scheduler.configurationJSON)
        XCTAssertTrue(scheduler.configurationJSON.contains("\"lambda_min_clipped\": -Infinity"))
        let loaded = try Schedulers.load(contentsOf: directory)
        XCTAssertTrue(loaded is DPMSolverMultistepScheduler)
        XCTAssertEqual(loaded.configurationJSON, scheduler.configurationJSON)
        let asUniPC = try Schedulers.load(contentsOf: file, as: .uniPCMultistep)
        XCTAssertTrue(asUniPC.configurationJSON.contains("\"solver_type\": \"bh2\""), "midpoint maps to bh2 as in diffusers")
    }

    func testPythonNumberAndStringFormatting() throws {
        let cases: [(Double, String)] = [
            (0.0001, "0.0001"), (0.00001, "1e-05"), (0.00085, "0.00085"), (1, "1.0"), (0.02, "0.02"), (-0.5, "-0.5"),
            (1e16, "1e+16"), (1e15, "1000000000000000.0"), (123456789.125, "123456789.125"), (0.1 + 0.2, "0.30000000000000004"),
            (2.5e-05, "2.5e-05"), (-.infinity, "-Infinity"), (.infinity, "Infinity"), (1.7976931348623157e308, "1.7976931348623157e+308"),
            (Double.leastNonzeroMagnitude, "5e-324"), (0, "0.0"),
        ]
        for (value, text) in cases {
            XCTAssertEqual(try SchedulerConfiguration(values: ["x": .double(value)]).valuesText(), "{\"x\": \(text)}")
        }
        // Integers stay integers, strings are escaped as Python's json.dumps (ensure_ascii) does.
        let configuration = try SchedulerConfiguration(jsonText: "{\"beta_end\": 1, \"note\": \"caf\\u00e9 \\\"q\\\" \\n 🙂\"}")
        XCTAssertEqual(configuration["beta_end"], .int(1))
        XCTAssertEqual(configuration["note"], .string("café \"q\" \n 🙂"))
        let text = try DDIMScheduler(configuration: configuration).configurationJSON
        XCTAssertTrue(text.contains("\"beta_end\": 1,"), text)
        XCTAssertTrue(text.contains("\"note\": \"caf\\u00e9 \\\"q\\\" \\n \\ud83d\\ude42\""), text)
    }

    // MARK: Errors

    func assertError(_ expected: String..., file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void) {
        do {
            _ = try warnings { try body() }
            XCTFail("no error thrown", file: file, line: line)
        } catch {
            let message = "\(error)"
            for part in expected {
                XCTAssertTrue(message.contains(part), "error \"\(message)\" should mention \(part)", file: file, line: line)
            }
        }
    }

    func testMissingFile() {
        assertError("not found", "nowhere/scheduler_config.json") {
            _ = try Schedulers.load(contentsOf: URL(fileURLWithPath: "/tmp/nowhere/scheduler_config.json"))
        }
    }

    func testBadJSON() {
        assertError("not valid JSON", "line 3, column 17") {
            _ = try SchedulerConfiguration(jsonText: "{\n  \"beta_end\": 0.02,\n  \"beta_start\": ,\n}")
        }
        assertError("not valid JSON", "end of the text") { _ = try SchedulerConfiguration(jsonText: "{\"a\": ") }
        assertError("must hold a JSON object", "list") { _ = try SchedulerConfiguration(jsonText: "[1, 2]") }
        assertError("not valid JSON", "after the value") { _ = try SchedulerConfiguration(jsonText: "{} {}") }
    }

    func testWrongTypes() {
        assertError("\"beta_start\"", "must be a number", "string \"0.1\"") {
            _ = try SchedulerConfiguration(jsonText: "{\"beta_start\": \"0.1\"}")
        }
        assertError("\"num_train_timesteps\"", "must be an integer", "float 1000.0") {
            _ = try SchedulerConfiguration(jsonText: "{\"num_train_timesteps\": 1000.0}")
        }
        assertError("\"clip_sample\"", "true or false", "integer 1") {
            _ = try SchedulerConfiguration(jsonText: "{\"clip_sample\": 1}")
        }
        assertError("\"trained_betas\"", "list of numbers") {
            _ = try SchedulerConfiguration(jsonText: "{\"trained_betas\": [0.1, \"x\"]}")
        }
        assertError("\"prediction_type\"", "must be a string", "null") {
            _ = try SchedulerConfiguration(jsonText: "{\"prediction_type\": null}")
        }
        assertError("\"_class_name\"", "string") { _ = try SchedulerConfiguration(jsonText: "{\"_class_name\": 3}") }
    }

    func testUnknownEnumValues() {
        assertError("\"beta_schedule\"", "unknown value \"cosine\"", "\"squaredcos_cap_v2\"") {
            _ = try SchedulerConfiguration(jsonText: "{\"beta_schedule\": \"cosine\"}")
        }
        assertError("\"prediction_type\"", "\"x0\"", "\"v_prediction\"") {
            _ = try SchedulerConfiguration(jsonText: "{\"prediction_type\": \"x0\"}")
        }
        assertError("\"timestep_spacing\"", "\"uniform\"") { _ = try SchedulerConfiguration(jsonText: "{\"timestep_spacing\": \"uniform\"}") }
        assertError("\"variance_type\"", "\"fixed\"") { _ = try SchedulerConfiguration(jsonText: "{\"variance_type\": \"fixed\"}") }
        assertError("unknown scheduler class \"KarrasVeScheduler\"", "DDPMScheduler") {
            _ = try Schedulers.make(configuration: SchedulerConfiguration(jsonText: "{\"_class_name\": \"KarrasVeScheduler\"}"))
        }
        assertError("no _class_name") { _ = try Schedulers.make(configuration: SchedulerConfiguration()) }
    }

    func testInvalidAndUnsupportedValues() {
        assertError("\"trained_betas\"", "holds 3 betas but num_train_timesteps is 1000") {
            _ = try DDPMScheduler(configuration: SchedulerConfiguration(jsonText: "{\"trained_betas\": [0.1, 0.2, 0.3]}"))
        }
        assertError("\"solver_order\"", "1, 2 and 3") {
            _ = try DPMSolverMultistepScheduler(configuration: SchedulerConfiguration(jsonText: "{\"solver_order\": 4}"))
        }
        assertError("\"use_beta_sigmas\"", "not supported") {
            _ = try EulerDiscreteScheduler(configuration: SchedulerConfiguration(jsonText: "{\"use_beta_sigmas\": true}"))
        }
        assertError("\"final_sigmas_type\"", "sigma_min") {
            _ = try DPMSolverMultistepScheduler(configuration: SchedulerConfiguration(jsonText: "{\"algorithm_type\": \"dpmsolver\"}"))
        }
        assertError("\"prediction_type\"", "not supported") {
            _ = try PNDMScheduler(configuration: SchedulerConfiguration(jsonText: "{\"prediction_type\": \"sample\"}"))
        }
    }

    func testTooManyInferenceSteps() throws {
        for kind in SchedulerKind.allCases {
            let scheduler = try kind.schedulerType.init(configuration: SchedulerConfiguration(jsonText: "{\"num_train_timesteps\": 100}"))
            assertError("num_inference_steps 101", "num_train_timesteps 100") { try scheduler.setTimesteps(101) }
            assertError("at least 1") { try scheduler.setTimesteps(0) }
            XCTAssertNoThrow(try scheduler.setTimesteps(100), kind.rawValue)
        }
    }
}

extension SchedulerConfiguration {
    /// The given values as one-line JSON (for formatting tests).
    func valuesText() -> String { JSONValue.object(values).description }
}
