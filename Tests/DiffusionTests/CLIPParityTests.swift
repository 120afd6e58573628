import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// CLIP's encoders against transformers (`Scripts/make-clip-goldens`): the same
/// outputs from the same folder and inputs, and the same gradient of the
/// image–text similarity with respect to the pixels.
final class CLIPParityTests: XCTestCase {
    static let fixtures = SafetensorsFixture.directory.deletingLastPathComponent().appendingPathComponent("clip")

    /// max |ours − reference| / max |reference|.
    static func relativeError(_ ours: Tensor, _ reference: Tensor) -> Float {
        let (a, b) = (ours.toArray(), reference.toArray())
        precondition(a.count == b.count, "shapes \(ours.shape) and \(reference.shape) differ")
        let difference = zip(a, b).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        return difference / max(b.reduce(0) { max($0, abs($1)) }, 1e-30)
    }

    static func golden(_ folder: URL) throws -> [String: Tensor] {
        try Safetensors.load(path: folder.appendingPathComponent("io.safetensors").path, as: .float32)
    }

    static func ids(_ tensor: Tensor) -> [Int] { tensor.toArray().map { Int($0) } }

    func assertRelative(_ ours: Tensor, _ reference: Tensor?, _ tolerance: Float, _ what: String,
                        file: StaticString = #filePath, line: UInt = #line) {
        guard let reference else { return XCTFail("the golden has no \(what)", file: file, line: line) }
        XCTAssertEqual(ours.shape, reference.shape, what, file: file, line: line)
        let error = Self.relativeError(ours, reference)
        XCTAssertLessThan(error, tolerance, "\(what): relative error \(error)", file: file, line: line)
        lastErrors.append((what, error))
    }

    /// The relative errors `assertRelative` found, in order.
    var lastErrors: [(String, Float)] = []

    /// Stable Diffusion 1.x's layout: prefixed keys, a position_ids buffer, float16
    /// values, `eos_token_id` 2 (pooling at the largest id), quick GELU.
    func testTextModelInStableDiffusionLayout() throws {
        let folder = Self.fixtures.appendingPathComponent("text-legacy")
        let golden = try Self.golden(folder)
        let model = try CLIPTextModel.load(folder: folder)
        XCTAssertEqual(model.configuration.endTokenID, 2)
        XCTAssertEqual(model.configuration.activation, .quickGELU)
        let ids = try XCTUnwrap(golden["ids"])
        let output = noGrad { model(ids: Self.ids(ids), batch: ids.shape[0], keepingHiddenStates: true) }
        assertRelative(output.lastHiddenState, golden["last_hidden_state"], 1e-4, "last_hidden_state")
        assertRelative(output.pooled, golden["pooled"], 1e-4, "pooled")
        XCTAssertEqual(output.hiddenStates.count, 4)
        for (index, state) in output.hiddenStates.enumerated() {
            assertRelative(state, golden["hidden_state.\(index)"], 1e-4, "hidden_state.\(index)")
        }
    }

    /// GELU, the first-eos pooling rule, padding with id 0 and an attention mask,
    /// the projection, in transformers 5's key layout (no `text_model.` prefix on a lone tower).
    func testTextModelWithProjectionAndMask() throws {
        let folder = Self.fixtures.appendingPathComponent("text-gelu")
        let golden = try Self.golden(folder)
        let model = try CLIPTextModelWithProjection.load(folder: folder)
        let ids = Self.ids(try XCTUnwrap(golden["ids"]))
        let mask = Self.ids(try XCTUnwrap(golden["attention_mask"]))
        let (output, embeddings) = noGrad { model(ids: ids, batch: 2, attentionMask: mask, keepingHiddenStates: true) }
        assertRelative(output.lastHiddenState, golden["last_hidden_state"], 1e-4, "last_hidden_state")
        assertRelative(embeddings, golden["text_embeds"], 1e-4, "text_embeds")
        for (index, state) in output.hiddenStates.enumerated() {
            assertRelative(state, golden["hidden_state.\(index)"], 1e-4, "hidden_state.\(index)")
        }
        let unmasked = noGrad { model(ids: ids, batch: 2) }
        assertRelative(unmasked.textEmbeddings, golden["unmasked.text_embeds"], 1e-4, "text_embeds without a mask")
        // The mask matters here: without it the padded positions' outputs differ
        // (the pooled end token, before any padding, does not see them either way).
        XCTAssertGreaterThan(Self.relativeError(unmasked.output.lastHiddenState, output.lastHiddenState), 1e-3)
    }

    /// Both towers, logits, the contrastive loss and d(similarity)/d(pixels).
    func testCLIPModelAndPixelGradient() throws {
        try checkWholeModel(Self.fixtures.appendingPathComponent("clip"), tolerance: 1e-4, gradientTolerance: 1e-3)
    }

    @discardableResult
    func checkWholeModel(_ folder: URL, tolerance: Float, gradientTolerance: Float) throws -> [(String, Float)] {
        var errors: [(String, Float)] = []
        let golden = try Self.golden(folder)
        let model = try CLIPModel.load(folder: folder)
        let ids = try XCTUnwrap(golden["ids"])
        let batch = ids.shape[0]
        let pixels = try XCTUnwrap(golden["pixels"]).detach()
        pixels.requiresGrad = true
        let text = model.textModel(ids: Self.ids(ids), batch: batch)
        let vision = model.visionModel(pixels)
        assertRelative(text.lastHiddenState, golden["text.last_hidden_state"], tolerance, "text last_hidden_state")
        assertRelative(text.pooled, golden["text.pooled"], tolerance, "text pooled")
        assertRelative(vision.lastHiddenState, golden["vision.last_hidden_state"], tolerance, "vision last_hidden_state")
        assertRelative(vision.pooled, golden["vision.pooled"], tolerance, "vision pooled")
        let textFeatures = model.textProjection(text.pooled)
        let imageFeatures = model.visualProjection(vision.pooled)
        assertRelative(textFeatures, golden["text_embeds_raw"], tolerance, "text features")
        assertRelative(imageFeatures, golden["image_embeds_raw"], tolerance, "image features")
        let logits = model.logitsPerImage(imageFeatures: imageFeatures, textFeatures: textFeatures)
        assertRelative(logits, golden["logits_per_image"], tolerance, "logits_per_image")
        let loss = CLIPModel.contrastiveLoss(logitsPerImage: logits)
        assertRelative(loss.reshaped([1]), golden["loss"], tolerance, "contrastive loss")
        let similarity = (CLIPModel.normalized(imageFeatures) * CLIPModel.normalized(textFeatures)).sum()
        similarity.backward()
        assertRelative(try XCTUnwrap(pixels.grad), golden["pixel_gradient"], gradientTolerance, "d similarity / d pixels")
        errors = lastErrors
        return errors
    }

    /// The real configurations (random weights), generated locally by
    /// `Scripts/make-clip-goldens --large DIR` (too large to commit); runs when
    /// `DIFFUSE_CLIP_LARGE=DIR` is set. The recorded run: Tests/Fixtures/clip/large-run.txt.
    func testRealConfigurations() throws {
        guard let directory = ProcessInfo.processInfo.environment["DIFFUSE_CLIP_LARGE"] else {
            throw XCTSkip("set DIFFUSE_CLIP_LARGE to the folder Scripts/make-clip-goldens --large wrote")
        }
        let root = URL(fileURLWithPath: directory)
        for name in ["sd15-text", "sd21-text"] {
            let folder = root.appendingPathComponent(name)
            let golden = try Self.golden(folder)
            let model = try CLIPTextModel.load(folder: folder)
            let ids = try XCTUnwrap(golden["ids"])
            let started = Date()
            let output = noGrad { model(ids: Self.ids(ids), batch: ids.shape[0], keepingHiddenStates: true) }
            let seconds = Date().timeIntervalSince(started)
            let lastError = Self.relativeError(output.lastHiddenState, try XCTUnwrap(golden["last_hidden_state"]))
            let pooledError = Self.relativeError(output.pooled, try XCTUnwrap(golden["pooled"]))
            let layers = model.configuration.hiddenLayerCount
            let penultimate = Self.relativeError(output.hiddenStates[layers - 1], try XCTUnwrap(golden["hidden_state.\(layers - 1)"]))
            print("CLIP large \(name): last_hidden_state \(lastError), pooled \(pooledError), hidden_state.\(layers - 1) \(penultimate), forward \(String(format: "%.3f", seconds)) s")
            XCTAssertLessThan(lastError, 1e-4, name)
            XCTAssertLessThan(pooledError, 1e-4, name)
            XCTAssertLessThan(penultimate, 1e-4, name)
        }
        lastErrors = []
        let errors = try checkWholeModel(root.appendingPathComponent("vit-b32"), tolerance: 1e-4, gradientTolerance: 1e-3)
        print("CLIP large vit-b32: " + errors.map { "\($0.0) \($0.1)" }.joined(separator: ", "))
    }
}
