import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// The real configurations with random weights: Stable Diffusion 1.5's (and
/// 2.x's) `AutoencoderKL` and TAESD, written with diffusers' outputs by
/// `Scripts/make-vae-goldens --large DIR` (too large to commit). Runs when
/// `DIFFUSE_SD_LARGE=DIR` is set; the recorded run is Tests/Fixtures/vae/large-run.txt.
///
/// float32 weights: within 1e-4 of diffusers. The fp16 variant (widened, and kept
/// in 16 bits with `precision: .asStored`): within 1e-3 of diffusers' float32 run
/// on the same fp16-rounded weights.
final class AutoencoderLargeTests: XCTestCase {
    private func root() throws -> URL {
        guard let directory = ProcessInfo.processInfo.environment["DIFFUSE_SD_LARGE"] else {
            throw XCTSkip("set DIFFUSE_SD_LARGE to the folder Scripts/make-vae-goldens --large wrote")
        }
        return URL(fileURLWithPath: directory)
    }

    private func timed<T>(_ body: () -> T) -> (T, Double) {
        let start = Date()
        let result = body()
        return (result, Date().timeIntervalSince(start))
    }

    private func golden(_ folder: URL) throws -> [String: Tensor] {
        try Safetensors.load(path: folder.appendingPathComponent("io.safetensors").path, as: .float32)
    }

    func testStableDiffusionVAE() throws {
        let folder = try root().appendingPathComponent("vae-sd15")
        let golden = try golden(folder)
        let runs: [(String?, WeightPrecision, String, Float)] = [
            (nil, .float32, "", 1e-4), ("fp16", .float32, "fp16.", 1e-3), ("fp16", .asStored, "fp16.", 1e-3),
        ]
        for (variant, precision, prefix, tolerance) in runs {
            let model = try AutoencoderKL.load(folder: folder, variant: variant, precision: precision)
            XCTAssertEqual(model.loadReport, StateDictReport())
            model.eval()
            let label = (variant ?? "fp32") + (precision == .asStored ? " kept in 16 bits (\(model.parameterBytes >> 20) MB)" : "")
            let (moments, encodeSeconds) = timed { noGrad { model.encodeMoments(golden["image"]!) } }
            let (decoded, decodeSeconds) = timed { noGrad { model.decode(golden["latent"]!) } }
            let encodeError = AutoencoderParityReport.relativeError(moments, try XCTUnwrap(golden[prefix + "encoded"]))
            let decodeError = AutoencoderParityReport.relativeError(decoded, try XCTUnwrap(golden[prefix + "decoded"]))
            print("VAE large sd15 \(label): image \(golden["image"]!.shape) encode error \(encodeError) (\(String(format: "%.2f", encodeSeconds)) s), "
                + "latent \(golden["latent"]!.shape) decode error \(decodeError) (\(String(format: "%.2f", decodeSeconds)) s)")
            XCTAssertLessThan(encodeError, tolerance)
            XCTAssertLessThan(decodeError, tolerance)
        }
    }

    func testTAESD() throws {
        let folder = try root().appendingPathComponent("taesd")
        let golden = try golden(folder)
        let runs: [(String?, WeightPrecision, String, Float)] = [
            (nil, .float32, "", 1e-4), ("fp16", .float32, "fp16.", 1e-3), ("fp16", .asStored, "fp16.", 1e-3),
        ]
        for (variant, precision, prefix, tolerance) in runs {
            let model = try AutoencoderTiny.load(folder: folder, variant: variant, precision: precision)
            XCTAssertEqual(model.loadReport, StateDictReport())
            let label = (variant ?? "fp32") + (precision == .asStored ? " kept in 16 bits" : "")
            let (latents, encodeSeconds) = timed { noGrad { model.encode(golden["image"]!) } }
            let (decoded, decodeSeconds) = timed { noGrad { model.decode(golden["latent"]!) } }
            let encodeError = AutoencoderParityReport.relativeError(latents, try XCTUnwrap(golden[prefix + "encoded"]))
            let decodeError = AutoencoderParityReport.relativeError(decoded, try XCTUnwrap(golden[prefix + "decoded"]))
            print("VAE large taesd \(label): encode error \(encodeError) (\(String(format: "%.2f", encodeSeconds)) s), "
                + "decode error \(decodeError) (\(String(format: "%.2f", decodeSeconds)) s)")
            XCTAssertLessThan(encodeError, tolerance)
            XCTAssertLessThan(decodeError, tolerance)
        }
    }
}
