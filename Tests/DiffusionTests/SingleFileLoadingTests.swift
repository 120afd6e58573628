import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// Single-file checkpoints written by diffusers' own convert_diffusers_to_original_stable_diffusion.py
/// (Scripts/make-single-file-goldens, Tests/Fixtures/single-file): the configurations inferred from the
/// tensors equal the diffusers folder's, every parameter loaded from the file equals the folder's, and
/// text-to-image from the file gives diffusers' latents from the folder.
final class SingleFileLoadingTests: XCTestCase {
    // MARK: Inference

    func checkConfigurations(_ name: String) throws -> StableDiffusionSingleFile {
        let file = try StableDiffusionSingleFile(path: SingleFileFixtures.file(name).path)
        let folder = SingleFileFixtures.folder(name)
        let unet = try UNet2DConditionConfiguration.load(contentsOf: folder.appendingPathComponent("unet/config.json"))
        let inferred = file.unetConfiguration
        let count = unet.blockOutChannels.count
        XCTAssertEqual(inferred.blockOutChannels, unet.blockOutChannels, name)
        XCTAssertEqual(inferred.layersPerBlock.values(count: count), unet.layersPerBlock.values(count: count), name)
        XCTAssertEqual(inferred.downBlockTypes, unet.downBlockTypes, name)
        XCTAssertEqual(inferred.upBlockTypes, unet.upBlockTypes, name)
        XCTAssertEqual(inferred.midBlockType, unet.midBlockType, name)
        XCTAssertEqual(inferred.crossAttentionDimension.values(count: count), unet.crossAttentionDimension.values(count: count), name)
        XCTAssertEqual(inferred.resolvedHeadCounts, unet.resolvedHeadCounts, name)
        XCTAssertEqual(inferred.useLinearProjection, unet.useLinearProjection, name)
        XCTAssertEqual(inferred.normGroupCount, unet.normGroupCount, name)
        XCTAssertEqual(inferred.inChannels, unet.inChannels, name)
        XCTAssertEqual(inferred.outChannels, unet.outChannels, name)
        XCTAssertEqual(inferred.sampleSize, unet.sampleSize, name)
        XCTAssertEqual(inferred.transformerLayersPerBlock.values(count: count), unet.transformerLayersPerBlock.values(count: count), name)

        let vae = try AutoencoderKLConfiguration.load(contentsOf: folder.appendingPathComponent("vae/config.json"))
        XCTAssertEqual(file.vaeConfiguration.blockOutChannels, vae.blockOutChannels, name)
        XCTAssertEqual(file.vaeConfiguration.layersPerBlock, vae.layersPerBlock, name)
        XCTAssertEqual(file.vaeConfiguration.latentChannels, vae.latentChannels, name)
        XCTAssertEqual(file.vaeConfiguration.normGroupCount, vae.normGroupCount, name)
        XCTAssertEqual(file.vaeConfiguration.scalingFactor, vae.scalingFactor, name)
        XCTAssertEqual(file.vaeConfiguration.sampleSize, vae.sampleSize, name)

        let textData = try Data(contentsOf: folder.appendingPathComponent("text_encoder/config.json"))
        let text = try XCTUnwrap(try JSONSerialization.jsonObject(with: textData) as? [String: Any])
        XCTAssertEqual(file.textConfiguration.hiddenSize, text["hidden_size"] as? Int, name)
        XCTAssertEqual(file.textConfiguration.hiddenLayerCount, text["num_hidden_layers"] as? Int, name)
        XCTAssertEqual(file.textConfiguration.intermediateSize, text["intermediate_size"] as? Int, name)
        XCTAssertEqual(file.textConfiguration.attentionHeadCount, text["num_attention_heads"] as? Int, name)
        XCTAssertEqual(file.textConfiguration.activation.rawValue, text["hidden_act"] as? String, name)
        XCTAssertEqual(file.textConfiguration.vocabularySize, text["vocab_size"] as? Int, name)
        XCTAssertEqual(file.textConfiguration.maximumPositionEmbeddings, text["max_position_embeddings"] as? Int, name)

        let scheduler = try SchedulerConfiguration.load(contentsOf: folder.appendingPathComponent("scheduler"))
        XCTAssertEqual(scheduler.values["prediction_type"], .string(file.predictionType.rawValue), name)
        print("SingleFile \(name): \(file.summary)")
        return file
    }

    func testStableDiffusion1ConfigurationsInferredFromTheTensors() throws {
        let file = try checkConfigurations("sd1")
        XCTAssertEqual(file.family, .stableDiffusion1)
        XCTAssertEqual(file.textEncoderLayout, .clip)
        XCTAssertEqual(file.predictionType, .epsilon)
        XCTAssertTrue(file.predictionTypeInferred)
    }

    func testStableDiffusion2InferencePicksOpenCLIPAndVPrediction() throws {
        let file = try checkConfigurations("sd2")
        XCTAssertEqual(file.family, .stableDiffusion2)
        XCTAssertEqual(file.textEncoderLayout, .openCLIP(storedLayers: 23))
        XCTAssertEqual(file.textConfiguration.activation, .gelu)
        XCTAssertEqual(file.predictionType, .vPrediction)
        XCTAssertEqual(file.unetConfiguration.sampleSize, .square(96))
        XCTAssertTrue(file.unetConfiguration.useLinearProjection)
        let scheduler = try file.schedulerConfiguration
        XCTAssertEqual(scheduler.values["prediction_type"], .string("v_prediction"))
        XCTAssertEqual(scheduler.values["beta_start"], .double(0.00085))
        XCTAssertEqual(scheduler.values["skip_prk_steps"], .bool(true))
        // The flag overrides the heuristic.
        let given = try StableDiffusionSingleFile(path: SingleFileFixtures.file("sd2").path, predictionType: .epsilon)
        XCTAssertEqual(given.predictionType, .epsilon)
        XCTAssertFalse(given.predictionTypeInferred)
        XCTAssertEqual(given.unetConfiguration.sampleSize, .square(64))
    }

    // MARK: Every parameter

    func checkParameters(_ name: String, precision: WeightPrecision = .float32) throws {
        let file = try StableDiffusionSingleFile(path: SingleFileFixtures.file(name).path)
        let manifest = try SingleFileFixtures.manifest(name)
        var matched = 0
        let unet = try file.loadUNet(precision: precision)
        matched += SingleFileFixtures.compare(unet, with: try XCTUnwrap(manifest["unet"]), label: "\(name) unet")
        let vae = try file.loadVAE(precision: precision)
        matched += SingleFileFixtures.compare(vae, with: try XCTUnwrap(manifest["vae"]), label: "\(name) vae")
        let text = try file.loadTextEncoder(precision: precision)
        matched += SingleFileFixtures.compare(text, with: try XCTUnwrap(manifest["text_encoder"]), label: "\(name) text_encoder")
        let total = manifest.values.reduce(0) { $0 + $1.count }
        print("SingleFile \(name) (\(precision.rawValue)): \(matched) of \(total) parameters equal the diffusers folder's bit for bit")
        XCTAssertEqual(matched, total)
    }

    func testStableDiffusion1EveryParameterEqualsTheFolder() throws { try checkParameters("sd1") }

    func testStableDiffusion2EveryParameterEqualsTheFolder() throws { try checkParameters("sd2") }

    func testStableDiffusion2AsStoredKeepsFloat16AndTheSameValues() throws {
        try checkParameters("sd2", precision: .asStored)
        let file = try StableDiffusionSingleFile(path: SingleFileFixtures.file("sd2").path)
        let text = try file.loadTextEncoder(precision: .asStored)
        XCTAssertTrue(text.namedParameters().allSatisfy { $0.tensor.dataType == .float16 })
    }

    /// What original checkpoints carry beside the three models: OpenCLIP's 24th layer, `text_projection` and
    /// `logit_scale` (2.x; Stable Diffusion uses the penultimate layer, so the last is not loaded), EMA copies,
    /// the DDPM schedule buffers, `position_ids`, the VAE's training loss. A strict load ignores them.
    func testOriginalCheckpointExtrasAreIgnored() throws {
        let source = try SafetensorsCheckpoint(path: SingleFileFixtures.file("sd2").path)
        var tensors: [String: Tensor] = [:]
        for name in source.names { tensors[name] = try source.tensor(name) }
        let open = "cond_stage_model.model."
        for name in source.names where name.hasPrefix(open + "transformer.resblocks.22.") {
            tensors[name.replacingOccurrences(of: "resblocks.22.", with: "resblocks.23.")] = Tensor.zeros(try source.info(name).shape)
        }
        let width = try source.info(open + "token_embedding.weight").shape[1]
        tensors[open + "text_projection"] = Tensor.zeros([width, width])
        tensors[open + "logit_scale"] = Tensor.zeros([])
        tensors["model_ema.decay"] = Tensor.zeros([])
        tensors["model_ema.diffusion_modelout2weight"] = Tensor.zeros([4])
        tensors["alphas_cumprod"] = Tensor.zeros([1000])
        tensors["first_stage_model.loss.logvar"] = Tensor.zeros([])
        let url = try temporaryFolderURL("single-file").appendingPathComponent("original.safetensors")
        try Safetensors.save(tensors, to: url.path)
        let file = try StableDiffusionSingleFile(path: url.path)
        XCTAssertEqual(file.textEncoderLayout, .openCLIP(storedLayers: 24))
        XCTAssertEqual(file.textConfiguration.hiddenLayerCount, 23)
        let manifest = try SingleFileFixtures.manifest("sd2")
        let text = try file.loadTextEncoder()
        XCTAssertEqual(text.loadReport, StateDictReport())
        let total = try XCTUnwrap(manifest["text_encoder"]).count
        XCTAssertEqual(SingleFileFixtures.compare(text, with: try XCTUnwrap(manifest["text_encoder"]), label: "text"), total)
        XCTAssertEqual(try file.loadVAE().loadReport, StateDictReport())
        XCTAssertEqual(try file.loadUNet().loadReport, StateDictReport())
    }

    // MARK: Generation

    func checkGeneration(_ name: String) throws {
        let golden = try SafetensorsFixture.load("\(name)-generation", subdirectory: "single-file")
        func decoded(_ key: String) throws -> Any {
            try JSONSerialization.jsonObject(with: Data(try golden.string(key).utf8), options: .fragmentsAllowed)
        }
        let options = SingleFileOptions(tokenizer: SingleFileFixtures.folder(name).appendingPathComponent("tokenizer"))
        let pipeline = try StableDiffusionPipeline.load(singleFile: SingleFileFixtures.file(name), options: options)
        XCTAssertEqual(type(of: pipeline.scheduler).className, try golden.string("scheduler"))
        var parameters = StableDiffusionParameters(prompt: try XCTUnwrap(try decoded("prompt") as? String))
        parameters.negativePrompts = [try XCTUnwrap(try decoded("negative_prompt") as? String)]
        parameters.steps = try XCTUnwrap(try decoded("steps") as? Int)
        parameters.guidanceScale = try XCTUnwrap(try decoded("guidance_scale") as? Double)
        parameters.height = try XCTUnwrap(try decoded("height") as? Int)
        parameters.width = try XCTUnwrap(try decoded("width") as? Int)
        parameters.latents = try golden.tensor("latents")
        var generator = RandomGenerator(seed: 0)
        let output = try pipeline.generate(parameters, generator: &generator)
        let ids = try golden.tensor("prompt_ids").toArray().map { Int($0) }
        XCTAssertEqual(output.embeddings.promptIDs.flatMap { $0 }, ids, "\(name): prompt ids")
        let latentError = StableDiffusionParityTests.relativeError(output.latents, try golden.tensor("final_latents"))
        let imageError = StableDiffusionParityTests.relativeError(output.images, try golden.tensor("image"))
        print(String(format: "SingleFile %@ text-to-image from the single file against diffusers from the folder: "
                     + "final latents max relative error %.2e, image %.2e", name, latentError, imageError))
        // The bound is 1e-3; these tiny random models measure 1.9e-6 (sd1) and 8.9e-5 (sd2, v-prediction).
        XCTAssertLessThan(latentError, 5e-4)
        XCTAssertLessThan(imageError, 5e-4)
    }

    func testStableDiffusion1GenerationFromTheFileMatchesDiffusersFromTheFolder() throws { try checkGeneration("sd1") }

    func testStableDiffusion2GenerationFromTheFileMatchesDiffusersFromTheFolder() throws { try checkGeneration("sd2") }

    func testPipelineLoaderAcceptsAFileWhereAFolderWasExpected() throws {
        guard ProcessInfo.processInfo.environment[StableDiffusionSingleFile.vocabularyEnvironmentKey] != nil
                || FileManager.default.fileExists(atPath: CLIPTraining.defaultVocabularyPath) else {
            throw XCTSkip("set DIFFUSE_CLIP_VOCAB to bpe_simple_vocab_16e6.txt.gz (the single file's default tokenizer)")
        }
        // The tiny text encoders have 1,514 tokens: CLIP's full vocabulary does not fit them.
        XCTAssertThrowsError(try StableDiffusionPipeline.load(folder: SingleFileFixtures.file("sd1"))) { error in
            XCTAssertTrue("\(error)".contains("49408"), "\(error)")
        }
        let sd1 = try StableDiffusionSingleFile(path: SingleFileFixtures.file("sd1").path)
        XCTAssertEqual(try sd1.makeTokenizer().paddingID, 49407)
        let sd2 = try StableDiffusionSingleFile(path: SingleFileFixtures.file("sd2").path)
        XCTAssertEqual(try sd2.makeTokenizer().paddingID, 0, "Stable Diffusion 2.x pads with \"!\"")
        let pipeline = try StableDiffusionPipeline.load(SingleFileFixtures.file("sd1"),
                                                        options: SingleFileOptions(tokenizer: SingleFileFixtures.folder("sd1")))
        XCTAssertEqual(pipeline.tokenizer.vocabulary.count, 1514)
    }
}
