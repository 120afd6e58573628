import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// `diffuse convert` both ways, and the errors for files Diffuse cannot read.
final class SingleFileConvertTests: XCTestCase {
    /// Single file → diffusers folder → single file gives diffusers' script's file back byte for byte.
    func checkRoundTrip(_ name: String) throws {
        let directory = try SingleFileFixtures.temporaryDirectory(self)
        let original = SingleFileFixtures.file(name)
        let options = SingleFileOptions(tokenizer: SingleFileFixtures.folder(name).appendingPathComponent("tokenizer"))
        let fromFile = try StableDiffusionPipeline.load(singleFile: original, options: options, precision: .asStored)
        let folder = directory.appendingPathComponent("folder")
        try fromFile.save(folder: folder, dataType: .float16)

        // The folder is the diffusers folder the file was made from: same parameters, same values.
        let manifest = try SingleFileFixtures.manifest(name)
        let reloaded = try StableDiffusionPipeline.load(folder: folder, precision: .asStored)
        var matched = SingleFileFixtures.compare(reloaded.unet, with: try XCTUnwrap(manifest["unet"]), label: "\(name) folder unet")
        matched += SingleFileFixtures.compare(reloaded.vae, with: try XCTUnwrap(manifest["vae"]), label: "\(name) folder vae")
        matched += SingleFileFixtures.compare(reloaded.textEncoder, with: try XCTUnwrap(manifest["text_encoder"]), label: "\(name) folder text")
        XCTAssertEqual(matched, manifest.values.reduce(0) { $0 + $1.count })
        XCTAssertEqual(reloaded.scheduler.configuration.values["prediction_type"],
                       .string(name == "sd2" ? "v_prediction" : "epsilon"))

        let back = directory.appendingPathComponent("back.safetensors")
        try reloaded.saveSingleFile(to: back)
        let expected = try Data(contentsOf: original)
        let written = try Data(contentsOf: back)
        let left = try SafetensorsCheckpoint(path: original.path)
        let right = try SafetensorsCheckpoint(path: back.path)
        XCTAssertEqual(left.names, right.names, "\(name): tensor names")
        for tensorName in left.names where right.contains(tensorName) {
            let a = try left.info(tensorName), b = try right.info(tensorName)
            XCTAssertEqual(a.shape, b.shape, tensorName)
            XCTAssertEqual(a.dataType, b.dataType, tensorName)
            let same = try left.file(containing: tensorName).withRawBytes(of: tensorName) { first in
                try right.file(containing: tensorName).withRawBytes(of: tensorName) { second in first.elementsEqual(second) }
            }
            XCTAssertTrue(same, "\(name): \(tensorName) bytes")
        }
        print("SingleFile \(name) round trip: \(left.names.count) tensors, file \(expected.count) bytes, identical: \(expected == written)")
        XCTAssertEqual(expected, written, "\(name): the file written back is diffusers' script's file byte for byte")
    }

    func testStableDiffusion1RoundTripIsExact() throws { try checkRoundTrip("sd1") }

    func testStableDiffusion2RoundTripIsExact() throws { try checkRoundTrip("sd2") }

    // MARK: Errors

    func testPickleCheckpointIsRefusedWithTheConversionCommand() throws {
        let directory = try SingleFileFixtures.temporaryDirectory(self)
        let checkpoint = directory.appendingPathComponent("model.ckpt")
        try Data([0x50, 0x4B, 0x03, 0x04, 0, 0, 0, 0]).write(to: checkpoint)
        XCTAssertThrowsError(try StableDiffusionPipeline.load(checkpoint)) { error in
            XCTAssertEqual(error as? SingleFileError, .pickleCheckpoint(path: checkpoint.path))
            let message = "\(error)"
            XCTAssertTrue(message.contains("from_single_file('\(checkpoint.path)').save_pretrained"), message)
            XCTAssertTrue(message.contains("save_file"), message)
            XCTAssertTrue(message.contains("model.safetensors"), message)
        }
        // A pickle renamed .safetensors is recognised too.
        let renamed = directory.appendingPathComponent("renamed.safetensors")
        try Data([0x80, 0x02, 0x7D, 0x71, 0x00, 0x28, 0x58, 0x0A] + [UInt8](repeating: 0x41, count: 32)).write(to: renamed)
        XCTAssertThrowsError(try StableDiffusionSingleFile(path: renamed.path)) { error in
            XCTAssertEqual(error as? SingleFileError, .pickleCheckpoint(path: renamed.path))
        }
    }

    /// Writes the tensors of the sd1 fixture whose names pass `keep`.
    func subset(_ keep: (String) -> Bool, renaming: (String) -> String = { $0 }) throws -> URL {
        let source = try SafetensorsCheckpoint(path: SingleFileFixtures.file("sd1").path)
        var tensors: [String: Tensor] = [:]
        for name in source.names where keep(name) { tensors[renaming(name)] = try source.tensor(name) }
        let url = try SingleFileFixtures.temporaryDirectory(self).appendingPathComponent("subset.safetensors")
        try Safetensors.save(tensors, to: url.path)
        return url
    }

    func testMissingPartsAreNamed() throws {
        let unetOnly = try subset { $0.hasPrefix("model.diffusion_model.") }
        XCTAssertThrowsError(try StableDiffusionSingleFile(path: unetOnly.path)) { error in
            guard case .missingParts(_, let parts)? = error as? SingleFileError else { return XCTFail("\(error)") }
            XCTAssertEqual(parts.count, 2)
            XCTAssertTrue(parts[0].contains("VAE (first_stage_model.*)"), "\(parts)")
            XCTAssertTrue(parts[1].contains("text encoder"), "\(parts)")
        }
        let noVAE = try subset { !$0.hasPrefix("first_stage_model.") }
        XCTAssertThrowsError(try StableDiffusionSingleFile(path: noVAE.path)) { error in
            XCTAssertEqual(error as? SingleFileError, .missingParts(path: noVAE.path, parts: ["the VAE (first_stage_model.*)"]))
        }
        // A tensor missing inside a part: a strict load names it.
        let lacking = try subset { $0 != "model.diffusion_model.output_blocks.4.0.in_layers.2.weight" }
        let file = try StableDiffusionSingleFile(path: lacking.path)
        XCTAssertThrowsError(try file.loadUNet()) { error in
            XCTAssertEqual((error as? StateDictReport)?.missing, ["model.diffusion_model.output_blocks.4.0.in_layers.2.weight"])
        }
    }

    func testUnknownLayoutsAreNamed() throws {
        let diffusersUNet = try subset({ $0.hasPrefix("model.diffusion_model.") }, renaming: { "down_blocks." + $0 })
        XCTAssertThrowsError(try StableDiffusionSingleFile(path: diffusersUNet.path)) { error in
            guard case .unknownLayout(_, let reason)? = error as? SingleFileError else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("not a whole pipeline"), reason)
        }
        let other = try subset({ $0.hasPrefix("first_stage_model.decoder.conv_in") }, renaming: { "net." + $0 })
        XCTAssertThrowsError(try StableDiffusionSingleFile(path: other.path)) { error in
            guard case .unknownLayout(_, let reason)? = error as? SingleFileError else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("expected the original Stable Diffusion layout"), reason)
            XCTAssertTrue("\(error)".contains("unknown layout"), "\(error)")
        }
        let xl = try subset({ $0.hasPrefix("first_stage_model.decoder.conv_in") }, renaming: { "conditioner.embedders.0." + $0 })
        XCTAssertThrowsError(try StableDiffusionSingleFile(path: xl.path)) { error in
            XCTAssertTrue("\(error)".contains("Stable Diffusion XL"), "\(error)")
        }
    }
}
