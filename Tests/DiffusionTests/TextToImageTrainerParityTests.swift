import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// One training step of the text-to-image trainer against diffusers' `train_text_to_image.py` and
/// `train_text_to_image_lora.py` recipe in PyTorch (Scripts/make-text-to-image-training-goldens,
/// Tests/Fixtures/text-to-image-training): from the tiny pipeline's weights, the same two images and
/// captions, posterior noise, noise and timesteps — the cached posterior, the latents, the prompt
/// embeddings, the loss, the gradients, the gradient norm and the weights after AdamW.
final class TextToImageTrainerParityTests: XCTestCase {
    static func golden(_ name: String) throws -> GoldenCase {
        try SafetensorsFixture.load(name, subdirectory: "text-to-image-training")
    }

    static func relativeError(_ ours: Tensor, _ reference: Tensor) -> Float {
        StableDiffusionParityTests.relativeError(ours, reference)
    }

    /// A trainer on the golden's two images and captions (learning rate 1e-3, constant, clipping at 1).
    func trainer(_ golden: GoldenCase, configure: (inout TextToImageTrainingOptions) -> Void) throws -> TextToImageTrainer {
        var options = TextToImageFixtures.options(outputDir: try temporaryFolderPath("t2i"))
        (options.randomFlip, options.captionDropout, options.noiseOffset, options.useEMA) = (false, 0, 0, false)
        options.snrGamma = nil
        configure(&options)
        let captions = try golden.string("captions").components(separatedBy: "\n")
        return try TextToImageFixtures.trainer(options, dataset: TextToImageTestDataset(images: try golden.tensor("images"), captions: captions))
    }

    /// Runs the golden's step on `trainer`; returns the loss, and checks the latents against PyTorch's.
    func step(_ trainer: TextToImageTrainer, _ golden: GoldenCase) throws -> Float {
        let captions = try golden.string("captions").components(separatedBy: "\n")
        let latents = trainer.latents(trainer.latentCache.posterior([0, 1], flipped: [false, false]), noise: try golden.tensor("posterior_noise"))
        XCTAssertLessThan(Self.relativeError(latents, try golden.tensor("latents")), 1e-5, "latents")
        let context = try trainer.encoderHiddenStates(captions)
        if let reference = golden.tensors["encoder_hidden_states"] {
            XCTAssertLessThan(Self.relativeError(context, reference), 1e-5, "encoder_hidden_states")
        }
        let loss = trainer.loss(latents: latents, noise: try golden.tensor("noise"), timesteps: try golden.tensor("timesteps").toArray(),
                                encoderHiddenStates: context)
        loss.backward()
        return loss.item
    }

    /// transformers 5 names the text encoder's layers without `text_model.`; Diffuse's paths have it.
    static func diffuseKey(_ key: String) -> String {
        key.hasPrefix("text_encoder.") && !key.hasPrefix("text_encoder.text_model.")
            ? "text_encoder.text_model." + key.dropFirst("text_encoder.".count) : key
    }

    static func pythonKey(_ key: String) -> String {
        key.replacingOccurrences(of: "text_encoder.text_model.", with: "text_encoder.")
    }

    func testFullFineTuningStepMatchesDiffusers() throws {
        let golden = try Self.golden("full")
        let trainer = try trainer(golden) { $0.snrGamma = 5 }
        XCTAssertEqual(trainer.predictionType, .epsilon)
        let loss = try step(trainer, golden)
        let reference = try golden.tensor("loss").toArray()[0]
        XCTAssertEqual(loss, reference, accuracy: 1e-5 * abs(reference))
        let parameters = Dictionary(uniqueKeysWithValues: trainer.unet.namedParameters().map { ($0.name, $0.tensor) })
        var worst: (gradient: Float, weight: Float) = (0, 0)
        let names = golden.tensors.keys.filter { $0.hasPrefix("grad.") }.map { String($0.dropFirst(5)) }.sorted()
        XCTAssertEqual(names.count, 7)
        for name in names {
            let gradient = try XCTUnwrap(parameters[name]?.grad, name)
            let error = Self.relativeError(gradient, try golden.tensor("grad." + name))
            XCTAssertLessThan(error, 1e-4, "gradient of \(name)")
            worst.gradient = max(worst.gradient, error)
        }
        let (norm, _) = try trainer.applyGradients()
        XCTAssertEqual(norm, try golden.tensor("grad_norm").toArray()[0], accuracy: 1e-4 * norm)
        for name in names {
            let after = try golden.tensor("after." + name)
            let difference = zip(parameters[name]!.toArray(), after.toArray()).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThan(difference, 1e-6, "\(name) after the AdamW step")
            worst.weight = max(worst.weight, difference)
        }
        print(String(format: "full fine-tuning step: loss %.6f (diffusers %.6f), gradients within %.1e, weights after AdamW within %.1e",
                     loss, reference, worst.gradient, worst.weight))
    }

    func testLoRAStepMatchesDiffusersAndPEFT() throws {
        let golden = try Self.golden("lora")
        let trainer = try trainer(golden) { options in
            options.loraRank = 4
            options.loraAlpha = 8
            options.trainTextEncoderLoRA = true
            options.predictionType = .vPrediction
        }
        XCTAssertNil(trainer.promptCache, "the text encoder trains adapters: no cached embeddings")
        let initial = golden.tensors.filter { $0.key.hasPrefix("initial.") }
        var factors: [String: Tensor] = [:]
        for (key, tensor) in initial { factors[Self.diffuseKey(String(key.dropFirst("initial.".count)))] = tensor }
        XCTAssertEqual(factors.count, 2 * (trainer.unetAdapters.count + trainer.textEncoderAdapters.count), "the same layers are adapted")
        try TextToImageLoRA.load(factors, into: trainer.unetAdapters, prefix: "unet.")
        try TextToImageLoRA.load(factors, into: trainer.textEncoderAdapters, prefix: "text_encoder.")
        let loss = try step(trainer, golden)
        let reference = try golden.tensor("loss").toArray()[0]
        XCTAssertEqual(loss, reference, accuracy: 1e-5 * abs(reference))
        var current: [String: Tensor] = [:]
        for (path, adapter) in trainer.unetAdapters + trainer.textEncoderAdapters {
            let component = trainer.unetAdapters.contains { $0.adapter === adapter } ? "unet" : "text_encoder"
            current["\(component).\(path).lora_A.weight"] = adapter.down
            current["\(component).\(path).lora_B.weight"] = adapter.up
        }
        var worst: (gradient: Float, weight: Float) = (0, 0)
        for (key, tensor) in current {
            let gradient = try XCTUnwrap(tensor.grad, key)
            let error = Self.relativeError(gradient, try golden.tensor("grad." + Self.pythonKey(key)))
            XCTAssertLessThan(error, 1e-4, "gradient of \(key)")
            worst.gradient = max(worst.gradient, error)
        }
        let (norm, _) = try trainer.applyGradients()
        XCTAssertEqual(norm, try golden.tensor("grad_norm").toArray()[0], accuracy: 1e-4 * norm)
        for (key, tensor) in current {
            let difference = zip(tensor.toArray(), try golden.tensor("after." + Self.pythonKey(key)).toArray()).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThan(difference, 1e-4, "\(key) after the AdamW step")
            worst.weight = max(worst.weight, difference)
        }
        print(String(format: "LoRA step (%d factors): loss %.6f (diffusers %.6f), gradients within %.1e, factors after AdamW within %.1e",
                     current.count, loss, reference, worst.gradient, worst.weight))
    }
}
