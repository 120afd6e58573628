import TestSupport
import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// `diffuse train-clip`: the captioned dataset, the contrastive trainer, its
/// parameter groups, temperature clamp, checkpoints and saved folder.
final class CLIPTrainingTests: XCTestCase {
    /// A stand-in for Fashion-MNIST: random grey 28×28 images labelled 0…9.
    static func greyDataset(count: Int, seed: UInt64 = 1) -> InMemoryDataset {
        var generator = RandomGenerator(seed: seed)
        let images = Tensor.rand([count, 1, 28, 28], low: -1, high: 1, generator: &generator)
        return InMemoryDataset(images: images, labels: (0..<count).map { $0 % 10 }, classNames: FashionMNIST.classNames)
    }

    static func captioned(count: Int, seed: UInt64 = 0) -> CaptionedTintedDataset {
        CaptionedTintedDataset(base: greyDataset(count: count), seed: seed, itemNames: CaptionedTintedDataset.itemNames)
    }

    static var tokenizer: WordTokenizer {
        WordTokenizer(words: ["a", "an", "photo", "of", "on", "background"]
                      + CaptionedTintedDataset.itemNames.flatMap { $0.split(separator: " ").map(String.init) }
                      + NamedColor.allCases.map(\.name))
    }

    static func tinyOptions(outputDir: String, steps: Int) -> CLIPTrainingOptions {
        var options = CLIPTrainingOptions()
        options.model = .tiny
        options.outputDir = outputDir
        options.batchSize = 16
        options.steps = steps
        options.learningRate = 3e-3
        options.warmupSteps = 2
        options.checkpointingSteps = 0
        options.logEvery = 1000
        options.prefetchBatches = 0
        return options
    }

    static func trainer(_ options: CLIPTrainingOptions, dataset: Dataset) throws -> CLIPTrainer {
        let trainer = try CLIPTrainer(options: options, tokenizer: tokenizer, dataset: dataset)
        trainer.silence()
        return trainer
    }

    // MARK: The dataset

    func testCaptionsAndColoursAreDeterministic() throws {
        let first = Self.captioned(count: 300), second = Self.captioned(count: 300), reseeded = Self.captioned(count: 300, seed: 7)
        var templates = Set<Int>(), foregrounds = Set<NamedColor>(), backgrounds = Set<NamedColor>()
        var differences = 0
        for index in 0..<300 {
            let description = first.description(of: index, label: index % 10)
            XCTAssertEqual(description, second.description(of: index, label: index % 10))
            XCTAssertEqual(try first.example(at: index).image.toArray(), try second.example(at: index).image.toArray())
            XCTAssertEqual(try first.example(at: index).caption, description.caption)
            if description != reseeded.description(of: index, label: index % 10) { differences += 1 }
            XCTAssertNotEqual(description.foreground, description.background, "example \(index)")
            XCTAssertEqual(description.item, CaptionedTintedDataset.itemNames[index % 10])
            for (painted, named) in [(description.foregroundRGB, description.foreground), (description.backgroundRGB, description.background)] {
                for (channel, centre) in zip(painted, named.rgb) { XCTAssertLessThanOrEqual(abs(channel - centre), first.colorJitter + 1e-6) }
                XCTAssertEqual(NamedColor.nearest(to: painted), named)
            }
            templates.insert(description.template.rawValue)
            foregrounds.insert(description.foreground)
            backgrounds.insert(description.background)
        }
        XCTAssertEqual(templates.count, CaptionedTintedDataset.CaptionTemplate.allCases.count)
        XCTAssertEqual(foregrounds.count, NamedColor.allCases.count)
        XCTAssertEqual(backgrounds.count, NamedColor.allCases.count)
        XCTAssertGreaterThan(differences, 250, "another seed should give other colours and captions")
    }

    func testCaptionWording() {
        let template = CaptionedTintedDataset.CaptionTemplate.self
        XCTAssertEqual(template.foregroundOnBackground.caption(item: "sneaker", foreground: .red, background: .blue), "a red sneaker on a blue background")
        XCTAssertEqual(template.foregroundOnBackground.caption(item: "ankle boot", foreground: .orange, background: .orange),
                       "an orange ankle boot on an orange background")
        XCTAssertEqual(template.photoOfForeground.caption(item: "bag", foreground: .yellow, background: .red), "a photo of a yellow bag")
        XCTAssertEqual(template.foregroundOnly.caption(item: "trouser", foreground: .blue, background: .red), "a blue trouser")
        XCTAssertEqual(template.foregroundOnShortBackground.caption(item: "shirt", foreground: .green, background: .white), "a green shirt on white")
        XCTAssertEqual(template.photoOfItem.caption(item: "ankle boot", foreground: .green, background: .white), "a photo of an ankle boot")
        XCTAssertEqual(template.itemOnBackground.caption(item: "t-shirt", foreground: .green, background: .grey), "a t-shirt on a grey background")
    }

    func testTintPaintsForegroundAndBackground() throws {
        let dataset = Self.captioned(count: 20)
        let base = dataset.base
        for index in 0..<20 {
            let grey = try base.example(at: index).image.toArray()
            let image = try dataset.example(at: index).image.toArray()
            let description = dataset.description(of: index, label: index % 10)
            let plane = grey.count
            for position in [0, 100, 783] {
                let level = (grey[position] + 1) / 2
                for channel in 0..<3 {
                    let expected = (level * description.foregroundRGB[channel] + (1 - level) * description.backgroundRGB[channel]) * 2 - 1
                    XCTAssertEqual(image[channel * plane + position], expected, accuracy: 1e-5)
                }
            }
        }
    }

    func testTokenizedCaptionsArePaddedWithMask() {
        let tokenizer = Self.tokenizer
        let batch = tokenizer.encode(["a red bag", "a photo of a blue ankle boot"])
        XCTAssertEqual(batch.length, 9)
        XCTAssertEqual(Array(batch.ids[0..<5]), [tokenizer.startTokenID] + tokenizer.tokenIDs("a red bag").dropFirst().dropLast() + [tokenizer.endTokenID])
        XCTAssertEqual(Array(batch.ids[5..<9]), [Int](repeating: tokenizer.paddingTokenID, count: 4))
        XCTAssertEqual(Array(batch.attentionMask[0..<9]), [1, 1, 1, 1, 1, 0, 0, 0, 0])
        XCTAssertEqual(Array(batch.attentionMask[9..<18]), [Int](repeating: 1, count: 9))
        let cut = tokenizer.encode(["a photo of a blue ankle boot"], length: 4)
        XCTAssertEqual(cut.ids.count, 4)
        XCTAssertEqual(cut.ids.last, tokenizer.endTokenID)
    }

    // MARK: Initialisation and parameter groups

    func testInitializationFollowsTransformers() {
        var text = CLIPTextConfiguration(), vision = CLIPVisionConfiguration()
        (text.hiddenSize, text.intermediateSize, text.hiddenLayerCount, text.attentionHeadCount, text.vocabularySize) = (64, 256, 2, 2, 500)
        (vision.hiddenSize, vision.intermediateSize, vision.hiddenLayerCount, vision.attentionHeadCount) = (96, 384, 3, 2)
        (vision.imageSize, vision.patchSize) = (28, 7)
        let model = CLIPModel(CLIPConfiguration(text: text, vision: vision, projectionDimension: 32))
        model.logitScale.copyValues(from: Tensor.full(0, []))
        model.initializeWeights(seed: 3)
        func standardDeviation(_ tensor: Tensor) -> Double {
            let values = tensor.toArray().map(Double.init)
            let mean = values.reduce(0, +) / Double(values.count)
            return (values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)).squareRoot()
        }
        func assertStandardDeviation(_ tensor: Tensor, _ expected: Double, _ what: String) {
            // The sample deviation's own spread is about 1/√(2n) of it.
            XCTAssertEqual(standardDeviation(tensor), expected, accuracy: expected * max(0.06, 3.5 / (2 * Double(tensor.count)).squareRoot()), what)
        }
        let textLayer = model.textModel.encoder.layers[1], visionLayer = model.visionModel.encoder.layers[2]
        assertStandardDeviation(model.textModel.embeddings.tokenEmbedding.weight, 0.02, "token_embedding")
        assertStandardDeviation(model.textModel.embeddings.positionEmbedding.weight, 0.02, "text position_embedding")
        assertStandardDeviation(textLayer.selfAttention.queryProjection.weight, pow(64, -0.5) * pow(4, -0.5), "text q_proj")
        assertStandardDeviation(textLayer.selfAttention.outputProjection.weight, pow(64, -0.5), "text out_proj")
        assertStandardDeviation(textLayer.mlp.fc1.weight, pow(128, -0.5), "text fc1")
        assertStandardDeviation(textLayer.mlp.fc2.weight, pow(64, -0.5) * pow(4, -0.5), "text fc2")
        assertStandardDeviation(visionLayer.selfAttention.valueProjection.weight, pow(96, -0.5) * pow(6, -0.5), "vision v_proj")
        assertStandardDeviation(visionLayer.mlp.fc2.weight, pow(96, -0.5) * pow(6, -0.5), "vision fc2")
        assertStandardDeviation(model.visionModel.embeddings.classEmbedding, pow(96, -0.5), "class_embedding")
        assertStandardDeviation(model.visionModel.embeddings.patchEmbedding.weight, 0.02, "patch_embedding")
        assertStandardDeviation(model.textProjection.weight, pow(64, -0.5), "text_projection")
        assertStandardDeviation(model.visualProjection.weight, pow(96, -0.5), "visual_projection")
        XCTAssertEqual(textLayer.selfAttention.keyProjection.bias!.toArray(), [Float](repeating: 0, count: 64))
        XCTAssertEqual(visionLayer.mlp.fc1.bias!.toArray(), [Float](repeating: 0, count: 384))
        XCTAssertEqual(model.visionModel.preLayerNorm.weight!.toArray(), [Float](repeating: 1, count: 96))
        XCTAssertEqual(model.logitScale.item, 2.6592, accuracy: 1e-6)
    }

    func testNoDecayGroupsAreGainsBiasesClassTokenAndTemperature() throws {
        let trainer = try Self.trainer(Self.tinyOptions(outputDir: try temporaryFolderPath("clip-training"), steps: 1), dataset: Self.captioned(count: 32))
        let undecayed = Set(trainer.optimizer.undecayed.map(\.name))
        let decayed = Set(trainer.optimizer.decayed.map(\.name))
        XCTAssertTrue(undecayed.isDisjoint(with: decayed))
        XCTAssertEqual(undecayed.union(decayed), Set(trainer.model.namedParameters().map(\.name)))
        for name in undecayed {
            let isGain = name.contains("layer_norm") || name.contains("layrnorm") || name.contains("layernorm")
            XCTAssertTrue(isGain || name.hasSuffix(".bias") || name == "vision_model.embeddings.class_embedding" || name == "logit_scale", name)
        }
        for name in ["logit_scale", "vision_model.embeddings.class_embedding", "text_model.final_layer_norm.weight",
                     "vision_model.pre_layrnorm.weight", "vision_model.post_layernorm.bias",
                     "text_model.encoder.layers.0.layer_norm1.weight", "text_model.encoder.layers.0.self_attn.q_proj.bias",
                     "vision_model.encoder.layers.0.mlp.fc2.bias"] {
            XCTAssertTrue(undecayed.contains(name), "\(name) must not decay")
        }
        for name in ["text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
                     "vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.position_embedding.weight",
                     "text_model.encoder.layers.0.self_attn.q_proj.weight", "vision_model.encoder.layers.0.mlp.fc1.weight",
                     "text_projection.weight", "visual_projection.weight"] {
            XCTAssertTrue(decayed.contains(name), "\(name) must decay")
        }
        // Per layer 4 LayerNorm tensors + 6 biases; text final norm 2; vision pre/post norms 4, class token 1; temperature 1.
        XCTAssertEqual(undecayed.count, 10 + 2 + 10 + 4 + 1 + 1)

        // With zero gradients AdamW only decays: the matrices shrink by lr·λ, the rest stays.
        let optimizer = GroupedAdamW(module: trainer.model, learningRate: 0.1, weightDecay: 0.5)
        let before = trainer.model.namedParameters().map { ($0.name, $0.tensor.toArray()) }
        for parameter in optimizer.parameters { parameter.grad = Tensor.zeros(parameter.shape) }
        optimizer.step()
        for ((name, old), (_, tensor)) in zip(before, trainer.model.namedParameters()) {
            let new = tensor.toArray()
            let factor: Float = decayed.contains(name) ? 0.95 : 1
            for (value, previous) in zip(new, old).prefix(50) { XCTAssertEqual(value, previous * factor, accuracy: 1e-6, name) }
        }
    }

    func testTemperatureIsClampedAfterEachStep() throws {
        let trainer = try Self.trainer(Self.tinyOptions(outputDir: try temporaryFolderPath("clip-training"), steps: 2), dataset: Self.captioned(count: 32))
        let ceiling = Float(log(100.0))
        trainer.model.logitScale.copyValues(from: Tensor.full(3, []))
        trainer.clampTemperature()
        XCTAssertEqual(trainer.model.logitScale.item, 3)
        trainer.model.logitScale.copyValues(from: Tensor.full(7, []))
        trainer.clampTemperature()
        XCTAssertEqual(trainer.model.logitScale.item, ceiling)
        // A training step starting above the ceiling ends at it.
        trainer.model.logitScale.copyValues(from: Tensor.full(9, []))
        var results: [CLIPTrainer.StepResult] = []
        trainer.onStep = { results.append($0) }
        _ = try trainer.run()
        XCTAssertEqual(results.count, 2)
        XCTAssertLessThanOrEqual(trainer.model.logitScale.item, ceiling)
        XCTAssertLessThanOrEqual(results[0].temperatureScale, 100.0001)
    }

    // MARK: Training, resuming, saving

    func testLossFallsOnATinyRun() throws {
        let options = Self.tinyOptions(outputDir: try temporaryFolderPath("clip-training"), steps: 60)
        let trainer = try Self.trainer(options, dataset: Self.captioned(count: 128))
        var losses: [Float] = []
        trainer.onStep = { losses.append($0.loss) }
        let summary = try trainer.run()
        XCTAssertEqual(summary.step, 60)
        XCTAssertEqual(losses.count, 60)
        let first = losses.prefix(5).reduce(0, +) / 5, last = losses.suffix(5).reduce(0, +) / 5
        XCTAssertLessThan(last, first * 0.6, "losses \(losses)")
        XCTAssertLessThan(last, log(16) * 0.6, "better than chance, ln(batch): losses \(losses)")
    }

    func testResumedRunGivesTheSameLosses() throws {
        let dataset = Self.captioned(count: 48)
        let steps = 9
        let whole = try Self.trainer(Self.tinyOptions(outputDir: try temporaryFolderPath("clip-training"), steps: steps), dataset: dataset)
        var reference: [Float] = []
        whole.onStep = { reference.append($0.loss) }
        _ = try whole.run()

        let folder = try temporaryFolderPath("clip-training")
        let first = try Self.trainer(Self.tinyOptions(outputDir: folder, steps: steps), dataset: dataset)
        var losses: [Float] = []
        first.onStep = { result in
            losses.append(result.loss)
            if result.step == 4 { first.interruption.request() }
        }
        let stopped = try first.run()
        XCTAssertTrue(stopped.interrupted)
        XCTAssertEqual(stopped.step, 4)
        XCTAssertFalse(FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent("config.json")),
                       "an interrupted run writes a checkpoint, not the model folder")
        var options = Self.tinyOptions(outputDir: folder, steps: steps)
        options.resumeFromCheckpoint = "latest"
        let second = try Self.trainer(options, dataset: dataset)
        second.onStep = { losses.append($0.loss) }
        let finished = try second.run()
        XCTAssertFalse(finished.interrupted)
        XCTAssertEqual(losses, reference)
        for ((name, resumed), (_, uninterrupted)) in zip(second.model.namedParameters(), whole.model.namedParameters()) {
            XCTAssertEqual(resumed.toArray(), uninterrupted.toArray(), name)
        }
    }

    func testSavedFolderReloadsWithEqualOutputs() throws {
        let folder = try temporaryFolderPath("clip-training")
        let dataset = Self.captioned(count: 32)
        let trainer = try Self.trainer(Self.tinyOptions(outputDir: folder, steps: 3), dataset: dataset)
        _ = try trainer.run()
        let url = URL(fileURLWithPath: folder)
        for name in ["config.json", "model.safetensors", "preprocessor_config.json", "vocab.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: url.appendingPathComponent(name).path), name)
        }
        let loaded = try CLIPModel.load(folder: url)
        XCTAssertEqual(loaded.configuration, trainer.model.configuration)
        trainer.model.eval()
        let captions = ["a red bag on a blue background", "a photo of an ankle boot", "a grey coat"]
        let tokens = Self.tokenizer.encode(captions)
        let (pixels, _) = try CLIPEvaluator.images(of: dataset, count: 4, size: 28)
        let ours = noGrad { (trainer.model.textFeatures(ids: tokens.ids, batch: 3, attentionMask: tokens.attentionMask), trainer.model.imageFeatures(pixels)) }
        let theirs = noGrad { (loaded.textFeatures(ids: tokens.ids, batch: 3, attentionMask: tokens.attentionMask), loaded.imageFeatures(pixels)) }
        XCTAssertEqual(ours.0.toArray(), theirs.0.toArray())
        XCTAssertEqual(ours.1.toArray(), theirs.1.toArray())
        XCTAssertEqual(loaded.logitScale.item, trainer.model.logitScale.item)
        // A model that was not trained differs (the comparison can fail).
        let fresh = CLIPModel(trainer.model.configuration)
        fresh.initializeWeights(seed: 99)
        XCTAssertNotEqual(noGrad { fresh.imageFeatures(pixels) }.toArray(), ours.1.toArray())
    }

    func testOutputFolderOfAnEarlierRunIsNotOverwritten() throws {
        let folder = try temporaryFolderPath("clip-training")
        let dataset = Self.captioned(count: 32)
        _ = try Self.trainer(Self.tinyOptions(outputDir: folder, steps: 2), dataset: dataset).run()
        XCTAssertThrowsError(try Self.trainer(Self.tinyOptions(outputDir: folder, steps: 2), dataset: dataset).run()) { error in
            XCTAssertEqual(error as? TrainingError, .outputExists(folder))
        }
        var options = Self.tinyOptions(outputDir: folder, steps: 2)
        options.overwriteOutputDir = true
        XCTAssertEqual(try Self.trainer(options, dataset: dataset).run().step, 2)
    }

    func testEvaluationScoresAreFractions() throws {
        let dataset = Self.captioned(count: 40)
        let trainer = try Self.trainer(Self.tinyOptions(outputDir: try temporaryFolderPath("clip-training"), steps: 1), dataset: dataset)
        let evaluation = try CLIPEvaluator.evaluate(trainer.model, tokenizer: Self.tokenizer, dataset: dataset, count: 30)
        XCTAssertEqual(evaluation.imageCount, 30)
        for score in evaluation.variants { XCTAssertTrue((0...1).contains(score.accuracy), "\(score)") }
        XCTAssertEqual(Set(evaluation.variants.map(\.task)), ["zero_shot", "foreground_color", "background_color", "full_caption"])
        XCTAssertEqual(evaluation.zeroShotAccuracyPerClass.count, 10)
    }

    func testImageFolderWithMetadataIsACaptionSource() throws {
        let folder = try temporaryFolderPath("data")
        let colors: [(String, [UInt8])] = [("red", [220, 30, 30]), ("blue", [30, 70, 220]), ("green", [30, 160, 50]), ("white", [245, 245, 245])]
        var lines: [String] = []
        for (index, (name, rgb)) in colors.enumerated() {
            try writeFlatPNG(to: "\(folder)/images/\(index).png", width: 32, height: 40, color: rgb)
            lines.append("{\"file_name\": \"images/\(index).png\", \"text\": \"a \(name) bag\"}")
        }
        try writeFile(Array((lines.joined(separator: "\n") + "\n").utf8), to: "\(folder)/metadata.jsonl")
        var options = Self.tinyOptions(outputDir: try temporaryFolderPath("clip-training"), steps: 2)
        options.dataset = folder
        options.batchSize = 4
        let dataset = try CLIPTraining.openDataset(options, training: true)
        XCTAssertEqual(dataset.count, 4)
        XCTAssertEqual(try dataset.example(at: 2).caption, "a green bag")
        let trainer = try Self.trainer(options, dataset: dataset)
        var losses: [Float] = []
        trainer.onStep = { losses.append($0.loss) }
        XCTAssertEqual(try trainer.run().step, 2)
        XCTAssertEqual(losses.count, 2)
        XCTAssertTrue(losses.allSatisfy(\.isFinite))

        // A folder without captions is refused with a hint.
        let bare = try temporaryFolderPath("data")
        try writeFlatPNG(to: "\(bare)/0.png", color: [1, 2, 3])
        options.dataset = bare
        XCTAssertThrowsError(try CLIPTraining.openDataset(options, training: true)) { error in
            XCTAssertTrue("\(error)".contains("metadata.jsonl"), "\(error)")
        }
    }
}
