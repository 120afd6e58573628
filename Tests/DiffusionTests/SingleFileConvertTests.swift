import TestSupport
import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// `diffuse convert` both ways, and the errors for files Diffuse cannot read.
final class SingleFileConvertTests: XCTestCase {
    /// Single file → diffusers folder → single file gives diffusers' script's file back byte for byte.
    func checkRoundTrip(_ name: String) throws {
        let directory = try temporaryFolderURL("single-file")
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

    /// A folder whose structure diffusers' script cannot write (one layer per block, 4 GroupNorm groups): the
    /// file Diffuse writes has the original layout's block indices, and reads back, with the folder's
    /// configurations, into the same parameters. (diffusers' from_single_file reads it too:
    /// Tests/Fixtures/single-file/python-check-sd-pipeline-tiny.txt.)
    func testFolderToSingleFileWithOneLayerPerBlock() throws {
        let folder = StableDiffusionParityTests.tiny
        let directory = try temporaryFolderURL("single-file")
        let pipeline = try StableDiffusionPipeline.load(folder: folder)
        let url = directory.appendingPathComponent("tiny.safetensors")
        try pipeline.saveSingleFile(to: url)
        let written = try SafetensorsCheckpoint(path: url.path)
        XCTAssertEqual(written.names.count, pipeline.unet.namedParameters().count + pipeline.vae.namedParameters().count
                       + pipeline.textEncoder.namedParameters().count)
        for name in ["model.diffusion_model.input_blocks.2.0.op.weight", "model.diffusion_model.input_blocks.3.0.in_layers.0.weight",
                     "model.diffusion_model.output_blocks.1.1.conv.weight", "model.diffusion_model.output_blocks.2.1.proj_in.weight",
                     "model.diffusion_model.middle_block.2.emb_layers.1.weight", "first_stage_model.decoder.up.3.upsample.conv.weight",
                     "first_stage_model.encoder.mid.attn_1.proj_out.weight", "cond_stage_model.transformer.text_model.final_layer_norm.bias"] {
            XCTAssertTrue(written.contains(name), name)
        }
        XCTAssertEqual(try written.info("first_stage_model.encoder.mid.attn_1.q.weight").shape.count, 4)
        let back = try StableDiffusionPipeline.load(singleFile: url, options: SingleFileOptions(configurationFolder: folder))
        for (label, ours, theirs) in [("unet", back.unet as Module, pipeline.unet as Module), ("vae", back.vae, pipeline.vae),
                                      ("text", back.textEncoder, pipeline.textEncoder)] {
            var expected: [String: (shape: [Int], hash: String)] = [:]
            for (name, tensor) in theirs.namedParameters() { expected[name] = (tensor.shape, SingleFileFixtures.hash(tensor)) }
            XCTAssertEqual(SingleFileFixtures.compare(ours, with: expected, label: label), expected.count, label)
        }
    }

    func testInpaintingUNetIsInferredAndKeepsEpsilon() throws {
        let source = try SafetensorsCheckpoint(path: SingleFileFixtures.file("sd2").path)
        var tensors: [String: Tensor] = [:]
        for name in source.names { tensors[name] = try source.tensor(name) }
        let key = "model.diffusion_model.input_blocks.0.0.weight"
        let convIn = try XCTUnwrap(tensors[key])
        tensors[key] = Tensor.zeros([convIn.shape[0], 9] + convIn.shape.suffix(2)).converted(to: .float16)
        let url = try temporaryFolderURL("single-file").appendingPathComponent("inpainting.safetensors")
        try Safetensors.save(tensors, to: url.path)
        let file = try StableDiffusionSingleFile(path: url.path)
        XCTAssertEqual(file.unetConfiguration.inChannels, 9)
        XCTAssertEqual(file.unetConfiguration.outChannels, 4)
        XCTAssertEqual(file.family, .stableDiffusion2)
        XCTAssertEqual(file.predictionType, .epsilon, "diffusers' inpainting_v2 is an epsilon model")
        XCTAssertTrue(file.summary.contains("inpainting"), file.summary)
        XCTAssertEqual(try file.loadUNet().configuration.inChannels, 9)
    }

    // MARK: Errors

    func testPickleCheckpointIsRefusedWithTheConversionCommand() throws {
        let directory = try temporaryFolderURL("single-file")
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
        let url = try temporaryFolderURL("single-file").appendingPathComponent("subset.safetensors")
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
