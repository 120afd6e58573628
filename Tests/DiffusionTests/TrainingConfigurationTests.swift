import Diffusion
import Foundation
import XCTest

/// `train.yaml`: the course's TrainConfig keys, defaults, overrides and errors that name the key.
final class TrainingConfigurationTests: XCTestCase {
    func testCourseKeysAndDefaults() throws {
        let configuration = try TrainingConfiguration.load(yaml: """
            image_size: 32
            train_batch_size: 16
            eval_batch_size: 16
            num_epochs: 50
            gradient_accumulation_steps: 1
            learning_rate: 1e-4
            lr_warmup_steps: 500
            save_image_epochs: 10
            save_model_epochs: 30
            mixed_precision: fp16
            output_dir: ddpm-butterflies-128
            overwrite_output_dir: true
            seed: 0
            """)
        XCTAssertEqual(configuration.imageSize, 32)
        XCTAssertEqual(configuration.trainBatchSize, 16)
        XCTAssertEqual(configuration.numEpochs, 50)
        XCTAssertEqual(configuration.learningRate, 1e-4)
        XCTAssertEqual(configuration.saveImageEpochs, 10)
        XCTAssertEqual(configuration.saveModelEpochs, 30)
        XCTAssertEqual(configuration.mixedPrecision, .fp16)
        XCTAssertEqual(configuration.outputDir, "ddpm-butterflies-128")
        XCTAssertTrue(configuration.overwriteOutputDir)
        // Keys not given keep their defaults.
        XCTAssertEqual(configuration.model, .preset("course-mnist"))
        XCTAssertEqual(configuration.predictionType, .epsilon)
        XCTAssertEqual(configuration.lrScheduler, .cosine)
        XCTAssertEqual(configuration.maxGradNorm, 1.0)
        XCTAssertNil(configuration.resumeFromCheckpoint)
    }

    func testOverridesApplyInOrderAndReachIntoTheModel() throws {
        let configuration = try TrainingConfiguration.load(
            yaml: "num_epochs: 3\nmodel: small\nmixed_precision: no\n",
            overrides: [("num_epochs", "5"), ("learning_rate", "3e-4"), ("model.block_out_channels", "[16, 32]"),
                        ("model.down_block_types", "[DownBlock2D, DownBlock2D]"), ("model.up_block_types", "[UpBlock2D, UpBlock2D]"),
                        ("class_conditional", "true"), ("freeze", "[\"conv_in.*\", \"/time_embedding\\\\..*/\"]"),
                        ("resume_from_checkpoint", "latest"), ("max_grad_norm", "null"), ("num_epochs", "6")])
        XCTAssertEqual(configuration.numEpochs, 6)
        XCTAssertEqual(configuration.learningRate, 3e-4)
        XCTAssertEqual(configuration.mixedPrecision, .no, "YAML's bare no reads as mixed_precision no")
        XCTAssertTrue(configuration.classConditional)
        XCTAssertEqual(configuration.freeze, ["conv_in.*", "/time_embedding\\..*/"])
        XCTAssertEqual(configuration.resumeFromCheckpoint, "latest")
        XCTAssertNil(configuration.maxGradNorm)
        guard case let .configuration(base, keys) = configuration.model else { return XCTFail("\(configuration.model)") }
        XCTAssertEqual(base, "small")
        XCTAssertEqual(keys["block_out_channels"], .array([.int(16), .int(32)]))

        let unet = try ModelPresets.resolve(configuration.model, imageSize: 16, channels: 3, classCount: 10)
        XCTAssertEqual(unet.blockOutChannels, [16, 32])
        XCTAssertEqual(unet.layersPerBlock, 1, "the preset's other keys stay")
        XCTAssertEqual(unet.sampleSize, .square(16))
        XCTAssertEqual(unet.inChannels, 3)
        XCTAssertEqual(unet.classEmbeddingCount, 11, "classes + the unconditional class")
    }

    func testCourseMNISTPresetHasTheCourseParameterCount() throws {
        let configuration = try ModelPresets.resolve(.preset("course-mnist"), imageSize: 28, channels: 1, classCount: nil)
        XCTAssertEqual(try UNet2DModel(configuration: configuration).parameterCount, 1_707_009)
    }

    func testErrorsNameTheKey() {
        func message(_ yaml: String, _ overrides: [(key: String, value: String)] = []) -> String {
            do {
                _ = try TrainingConfiguration.load(yaml: yaml, overrides: overrides)
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        XCTAssertTrue(message("image_sise: 28").contains("unknown key \"image_sise\""))
        XCTAssertTrue(message("train_batch_size: many").contains("train_batch_size must be an integer"))
        XCTAssertTrue(message("mixed_precision: fp8").contains("mixed_precision \"fp8\""))
        XCTAssertTrue(message("prediction_type: noise").contains("prediction_type"))
        XCTAssertTrue(message("condition_dropout: 1.5").contains("condition_dropout"))
        XCTAssertTrue(message("eval_scheduler: magic").contains("eval_scheduler"))
        XCTAssertTrue(message("[1, 2]").contains("mapping"))
        XCTAssertTrue(message("", [("num_epochs", "0")]).contains("num_epochs must be at least 1"))
        XCTAssertThrowsError(try ModelPresets.resolve(.preset("huge"), imageSize: 28, channels: 1, classCount: nil))
        XCTAssertThrowsError(try ModelPresets.resolve(.configuration(base: nil, keys: ["num_class_embeds": .int(4)]),
                                                      imageSize: 28, channels: 1, classCount: 10)) { error in
            XCTAssertTrue("\(error)".contains("needs 11"), "\(error)")
        }
    }

    func testJSONRoundTrip() throws {
        let configuration = try TrainingConfiguration.load(yaml: "model: {preset: tiny, layers_per_block: 2}\nseed: 12\nuse_ema: true\n")
        let data = try JSONEncoder().encode(configuration)
        XCTAssertEqual(try JSONDecoder().decode(TrainingConfiguration.self, from: data), configuration)
        XCTAssertEqual(try TrainingConfiguration(jsonObject: configuration.jsonObject), configuration)
    }

    func testSchedulerNames() {
        XCTAssertEqual(SchedulerNames.kind("ddim"), .ddim)
        XCTAssertEqual(SchedulerNames.kind("DPMSolverMultistepScheduler"), .dpmSolverMultistep)
        XCTAssertEqual(SchedulerNames.kind("eulerdiscrete"), .euler)
        XCTAssertNil(SchedulerNames.kind("magic"))
    }
}
