import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// What the Stable Diffusion 1.5-size tests share: the folder named by `DIFFUSE_SD_PIPELINE_LARGE` (made by
/// `Scripts/make-sd-pipeline-large --assemble-large`), diffusers' reference runs in it, and the comparison of a
/// generation with one (final latents within 1e-3 relative, 8-bit images within 2 levels).
enum StableDiffusionLarge {
    /// The large pipeline folder, or a skip when `DIFFUSE_SD_PIPELINE_LARGE` is not set.
    static func folder() throws -> URL {
        guard let path = ProcessInfo.processInfo.environment["DIFFUSE_SD_PIPELINE_LARGE"] else {
            throw XCTSkip("set DIFFUSE_SD_PIPELINE_LARGE to a folder made by Scripts/make-sd-pipeline-large --assemble-large")
        }
        return URL(fileURLWithPath: path)
    }

    /// A reference run diffusers wrote into the folder: its tensors and metadata.
    struct Reference {
        let tensors: [String: Tensor]
        let metadata: [String: String]

        /// The tensor `name`, or a failure naming it.
        func tensor(_ name: String) throws -> Tensor { try XCTUnwrap(tensors[name], "no \(name) in the reference") }

        /// The metadata value `name` as an integer.
        func integer(_ name: String) throws -> Int { try XCTUnwrap(Int(metadata[name] ?? ""), "no integer \(name) in the metadata") }

        /// The metadata value `name`.
        func text(_ name: String) throws -> String { try XCTUnwrap(metadata[name], "no \(name) in the metadata") }

        /// diffusers' timing line, as the script recorded it.
        var timing: String { metadata["timing"] ?? "(no timing recorded)" }
    }

    /// FOLDER/`file`, or a skip naming the script's command that writes it (`option` with `--steps 10 --size 256`).
    static func reference(_ file: String, in folder: URL, option: String, arguments: String = " --steps 10 --size 256") throws -> Reference {
        let path = folder.appendingPathComponent(file).path
        guard FileManager.default.fileExists(atPath: path) else {
            throw XCTSkip("run Scripts/make-sd-pipeline-large \(option) \(folder.path)\(arguments) first")
        }
        return Reference(tensors: try Safetensors.load(path: path, as: .float32), metadata: try SafetensorsCheckpoint(path: path).metadata)
    }

    /// How far a generation is from diffusers': the final latents' max relative error and the 8-bit images' differences.
    struct Comparison {
        let latentError: Float
        /// Absolute differences of every 8-bit sample.
        let levels: [Int]

        init(latents: Tensor, images: Tensor, reference: Reference) throws {
            latentError = StableDiffusionParityTests.relativeError(latents, try reference.tensor("final_latents"))
            let ours = StableDiffusionImageProcessor.pixelImages(images)[0].samples
            let theirs = StableDiffusionImageProcessor.pixelImages(try reference.tensor("image"))[0].samples
            levels = zip(ours, theirs).map { abs(Int($0) - Int($1)) }
        }

        /// "final latents max relative error …, pixels differing … of … (largest … levels)".
        var summary: String {
            String(format: "final latents max relative error %.2e, pixels differing %d of %d (largest %d levels)",
                   latentError, levels.filter { $0 > 0 }.count, levels.count, levels.max() ?? 0)
        }

        /// The bounds: latents within 1e-3 relative, pixels within 2 levels.
        func check(file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertLessThan(latentError, 1e-3, "final latents", file: file, line: line)
            XCTAssertLessThanOrEqual(levels.max() ?? 0, 2, "8-bit pixels", file: file, line: line)
        }
    }
}
