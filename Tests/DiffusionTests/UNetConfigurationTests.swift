import Diffusion
import Foundation
import XCTest

/// `config.json` reading and writing: byte-identical round trips of files diffusers
/// wrote, `Codable`, and errors naming unsupported keys and values.
final class UNetConfigurationTests: XCTestCase {
    private let fixtures = UNetParityTests.fixtures

    private func fixtureText(_ relativePath: String) throws -> String {
        try String(contentsOf: fixtures.appendingPathComponent(relativePath), encoding: .utf8)
    }

    /// Every configuration file diffusers' `save_config` wrote comes back byte for byte.
    func testDiffusersFilesRoundTripByteForByte() throws {
        let paths = ["course", "four_level", "scale_shift", "class_conditional", "fourier", "variants"].map { "\($0)/config.json" }
            + ["pipeline/unet/config.json"]
        for path in paths {
            let text = try fixtureText(path)
            let configuration = try UNet2DConfiguration(jsonText: text)
            XCTAssertEqual(configuration.jsonText, text, path)
        }
    }

    func testReadsDiffusersKeysIntoSwiftValues() throws {
        let course = try UNet2DConfiguration(jsonText: try fixtureText("course/config.json"))
        XCTAssertEqual(course, UNetModelTests.courseConfiguration())
        let conditional = try UNet2DConfiguration(jsonText: try fixtureText("class_conditional/config.json"))
        XCTAssertEqual(conditional.classEmbeddingCount, 10)
        XCTAssertEqual(conditional.midBlockScaleFactor, 2.0.squareRoot())
        XCTAssertEqual(conditional.frequencyShift, 1)
        XCTAssertFalse(conditional.flipSinToCos)
        XCTAssertTrue(conditional.centerInputSample)
        XCTAssertEqual(conditional.downsamplePadding, 0)
        XCTAssertEqual(conditional.attentionNormGroupCount, 4)
        let variants = try UNet2DConfiguration(jsonText: try fixtureText("variants/config.json"))
        XCTAssertNil(variants.midBlockType)
        XCTAssertNil(variants.attentionHeadDimension)
        XCTAssertEqual(variants.timeEmbeddingType, .learned)
        XCTAssertEqual(variants.trainTimesteps, 100)
        XCTAssertEqual(variants.classEmbeddingType, .identity)
        XCTAssertEqual(variants.downBlockTypes, [.resnetDownsampleBlock, .attentionDownBlock, .downBlock])
        let shift = try UNet2DConfiguration(jsonText: try fixtureText("scale_shift/config.json"))
        XCTAssertEqual(shift.resnetTimeScaleShift, .scaleShift)
        XCTAssertEqual(shift.downsampleType, .resnet)
    }

    func testAbsentKeysTakeDiffusersDefaults() throws {
        XCTAssertEqual(try UNet2DConfiguration(jsonText: "{}"), UNet2DConfiguration())
        let defaults = UNet2DConfiguration()
        XCTAssertEqual(defaults.blockOutChannels, [224, 448, 672, 896])
        XCTAssertEqual(defaults.attentionHeadDimension, 8)
        XCTAssertEqual(defaults.normGroupCount, 32)
        XCTAssertEqual(defaults.normEpsilon, 1e-5)
        XCTAssertTrue(defaults.flipSinToCos)
    }

    func testCodableUsesDiffusersKeys() throws {
        let configuration = try UNet2DConfiguration(jsonText: try fixtureText("fourier/config.json"))
        let data = try JSONEncoder().encode(configuration)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        XCTAssertEqual(object["block_out_channels"] as? [Int], [16, 32])
        XCTAssertEqual(object["time_embedding_type"] as? String, "fourier")
        XCTAssertEqual(object["class_embed_type"] as? String, "timestep")
        XCTAssertEqual(object["_class_name"] as? String, "UNet2DModel")
        XCTAssertEqual(Set(object.keys), UNet2DConfiguration.keys.union(["_class_name", "_diffusers_version"]))
        XCTAssertEqual(try JSONDecoder().decode(UNet2DConfiguration.self, from: data), configuration)
    }

    func testRectangularSampleSize() throws {
        var configuration = UNet2DConfiguration()
        configuration.sampleSize = .rectangle(height: 32, width: 48)
        XCTAssertTrue(configuration.jsonText.contains("\"sample_size\": [\n    32,\n    48\n  ]"))
        XCTAssertEqual(try UNet2DConfiguration(jsonText: configuration.jsonText), configuration)
    }

    /// Python writes an int default as `1`, a float as `1.0`/`1e-05`.
    func testNumbersAreWrittenAsPythonWritesThem() {
        let text = UNet2DConfiguration().jsonText
        XCTAssertTrue(text.contains("\"mid_block_scale_factor\": 1,"))
        XCTAssertTrue(text.contains("\"dropout\": 0.0,"))
        XCTAssertTrue(text.contains("\"norm_eps\": 1e-05,"))
        XCTAssertTrue(text.contains("\"freq_shift\": 0,"))
        XCTAssertTrue(text.hasSuffix("}\n"))
    }

    func testUnsupportedKeyIsAnErrorNamingIt() throws {
        let text = try fixtureText("course/config.json").replacingOccurrences(of: "{\n", with: "{\n  \"cross_attention_dim\": 768,\n")
        XCTAssertThrowsError(try UNet2DConfiguration(jsonText: text)) { error in
            XCTAssertEqual(error as? UNet2DConfigurationError, .unsupportedKey("cross_attention_dim"))
            XCTAssertTrue("\(error)".contains("\"cross_attention_dim\""))
        }
        XCTAssertThrowsError(try UNet2DConfiguration(jsonText: "{\"_commit_hash\": \"abc\"}")) { error in
            XCTAssertEqual(error as? UNet2DConfigurationError, .unsupportedKey("_commit_hash"))
        }
        // diffusers' own bookkeeping keys are accepted.
        let accepted = try UNet2DConfiguration(jsonText: "{\"_name_or_path\": \"google/ddpm-cifar10-32\", \"_use_default_values\": [\"dropout\"]}")
        XCTAssertEqual(accepted.nameOrPath, "google/ddpm-cifar10-32")
        XCTAssertTrue(accepted.jsonText.contains("\"_name_or_path\": \"google/ddpm-cifar10-32\""))
    }

    func testUnsupportedValuesAndWrongTypesNameTheKey() {
        let cases: [(String, UNet2DConfigurationError)] = [
            ("{\"down_block_types\": [\"DownBlock2D\", \"CrossAttnDownBlock2D\"]}",
             .unsupportedValue(key: "down_block_types", value: "CrossAttnDownBlock2D", supported: ["DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"])),
            ("{\"up_block_types\": [\"SkipUpBlock2D\"]}",
             .unsupportedValue(key: "up_block_types", value: "SkipUpBlock2D", supported: ["UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"])),
            ("{\"resnet_time_scale_shift\": \"spatial\"}",
             .unsupportedValue(key: "resnet_time_scale_shift", value: "spatial", supported: ["default", "scale_shift"])),
            ("{\"mid_block_type\": \"UNetMidBlock2DCrossAttn\"}",
             .unsupportedValue(key: "mid_block_type", value: "UNetMidBlock2DCrossAttn", supported: ["UNetMidBlock2D"])),
            ("{\"act_fn\": \"tanh\"}", .unsupportedValue(key: "act_fn", value: "tanh", supported: ["silu", "swish", "mish", "gelu", "relu"])),
            ("{\"layers_per_block\": \"2\"}", .wrongType(key: "layers_per_block", expected: "an integer", found: "string \"2\"")),
            ("{\"norm_num_groups\": null}", .wrongType(key: "norm_num_groups", expected: "an integer", found: "null")),
            ("{\"_class_name\": \"UNet2DConditionModel\"}", .wrongClassName("UNet2DConditionModel")),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try UNet2DConfiguration(jsonText: text), text) { error in
                XCTAssertEqual(error as? UNet2DConfigurationError, expected, text)
            }
        }
        XCTAssertThrowsError(try UNet2DConfiguration(jsonText: "[1, 2]"))
        XCTAssertThrowsError(try UNet2DConfiguration(jsonText: "{\"in_channels\": 3,}"))
    }
}
