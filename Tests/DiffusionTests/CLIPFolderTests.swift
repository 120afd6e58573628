import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// CLIP folders both ways and the errors of bad ones.
final class CLIPFolderTests: XCTestCase {
    static let fixtures = CLIPParityTests.fixtures

    func temporaryCopy(of name: String) throws -> URL {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("diffuse-clip-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: Self.fixtures.appendingPathComponent(name), to: folder)
        addTeardownBlock { try? FileManager.default.removeItem(at: folder) }
        return folder
    }

    func editConfiguration(_ folder: URL, _ edit: (inout [String: Any]) -> Void) throws {
        let url = folder.appendingPathComponent("config.json")
        var object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        edit(&object)
        try JSONSerialization.data(withJSONObject: object).write(to: url)
    }

    /// Save → load gives the same model; the file uses the published key layout
    /// (`text_model.` prefix) and float16 when asked.
    func testRoundTrip() throws {
        let model = try CLIPTextModel.load(folder: Self.fixtures.appendingPathComponent("text-legacy"))
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("diffuse-clip-save-\(UUID().uuidString)")
        addTeardownBlock { try? FileManager.default.removeItem(at: folder) }
        try model.save(folder: folder)
        try model.save(folder: folder, variant: "fp16")
        let names = try SafetensorsCheckpoint(path: folder.appendingPathComponent("model.safetensors").path).names
        XCTAssertTrue(names.allSatisfy { $0.hasPrefix("text_model.") }, "\(names.prefix(3))")
        let ids = [998, 5, 17, 999, 999, 999]
        let expected = noGrad { model(ids: ids).lastHiddenState }
        let reloaded = try CLIPTextModel.load(folder: folder)
        XCTAssertEqual(reloaded.configuration, model.configuration)
        XCTAssertEqual(noGrad { reloaded(ids: ids).lastHiddenState }.toArray(), expected.toArray())
        let half = try CLIPTextModel.load(folder: folder, variant: "fp16")
        // The fixture's weights are float16 values already: the fp16 copy is exact.
        XCTAssertEqual(noGrad { half(ids: ids).lastHiddenState }.toArray(), expected.toArray())
        // The whole CLIP folder's text tower loads as a text model, the other tower ignored.
        let text = try CLIPTextModel.load(folder: Self.fixtures.appendingPathComponent("clip"))
        XCTAssertEqual(text.configuration.hiddenSize, 32)
    }

    func testSizesThatDisagreeWithTheWeightsNameTheParameters() throws {
        let folder = try temporaryCopy(of: "text-gelu")
        try editConfiguration(folder) { $0["intermediate_size"] = 100 }
        XCTAssertThrowsError(try CLIPTextModelWithProjection.load(folder: folder)) { error in
            let report = error as? StateDictReport
            XCTAssertEqual(report?.mismatched.first?.name, "text_model.encoder.layers.0.mlp.fc1.weight", "\(error)")
            XCTAssertEqual(report?.mismatched.first?.found, [96, 48])
        }
        let loose = try CLIPTextModelWithProjection.load(folder: folder, strict: false)
        XCTAssertFalse(loose.loadReport?.isClean ?? true)
    }

    func testUnsupportedActivationAndBadValuesNameTheKey() throws {
        let folder = try temporaryCopy(of: "text-gelu")
        try editConfiguration(folder) { $0["hidden_act"] = "swish" }
        XCTAssertThrowsError(try CLIPTextModel.load(folder: folder)) { error in
            XCTAssertTrue("\(error)".contains("\"hidden_act\" = \"swish\""), "\(error)")
        }
        try editConfiguration(folder) { $0["hidden_act"] = "gelu"; $0["num_attention_heads"] = 5 }
        XCTAssertThrowsError(try CLIPTextModel.load(folder: folder)) { error in
            XCTAssertTrue("\(error)".contains("not a multiple of num_attention_heads 5"), "\(error)")
        }
        try editConfiguration(folder) { $0["num_attention_heads"] = "three" }
        XCTAssertThrowsError(try CLIPTextModel.load(folder: folder)) { error in
            XCTAssertTrue("\(error)".contains("\"num_attention_heads\" must be an integer"), "\(error)")
        }
        try editConfiguration(folder) { $0["model_type"] = "bert" }
        XCTAssertThrowsError(try CLIPTextModel.load(folder: folder)) { error in
            XCTAssertTrue("\(error)".contains("model_type \"bert\""), "\(error)")
        }
    }

    func testMissingWeightsAndPickleFiles() throws {
        let folder = try temporaryCopy(of: "text-gelu")
        try FileManager.default.removeItem(at: folder.appendingPathComponent("model.safetensors"))
        XCTAssertThrowsError(try CLIPTextModel.load(folder: folder)) { error in
            XCTAssertTrue("\(error)".contains("model.safetensors does not exist"), "\(error)")
        }
        try Data([0x80, 0x02]).write(to: folder.appendingPathComponent("pytorch_model.bin"))
        XCTAssertThrowsError(try CLIPTextModel.load(folder: folder)) { error in
            XCTAssertTrue("\(error)".contains("pytorch_model.bin"), "\(error)")
        }
        try FileManager.default.removeItem(at: folder.appendingPathComponent("config.json"))
        XCTAssertThrowsError(try CLIPTextModel.load(folder: folder)) { error in
            XCTAssertTrue("\(error)".contains("config.json does not exist"), "\(error)")
        }
    }

    /// With `DIFFUSE_CLIP_EXPORT=DIR`: writes DIR/text (a CLIPTextModel folder) and
    /// DIR/text/diffuse_check.safetensors (ids and Diffuse's outputs) for
    /// `Scripts/make-clip-goldens --verify-diffuse-folder DIR` (its report is
    /// Tests/Fixtures/clip/python-verification.txt).
    func testWriteFolderForPythonVerification() throws {
        guard let directory = ProcessInfo.processInfo.environment["DIFFUSE_CLIP_EXPORT"] else {
            throw XCTSkip("set DIFFUSE_CLIP_EXPORT to write a folder for the Python check")
        }
        let model = try CLIPTextModel.load(folder: Self.fixtures.appendingPathComponent("text-legacy"))
        let folder = URL(fileURLWithPath: directory).appendingPathComponent("text")
        try model.save(folder: folder)
        let ids = [998, 5, 17, 400, 999, 999, 999, 999]
        let output = noGrad { model(ids: ids) }
        try Safetensors.save(["ids": Tensor(ids.map(Float.init), shape: [1, ids.count]), "last_hidden_state": output.lastHiddenState,
                              "pooled": output.pooled], to: folder.appendingPathComponent("diffuse_check.safetensors").path)
    }
}
