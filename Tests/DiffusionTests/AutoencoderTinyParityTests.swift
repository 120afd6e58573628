import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// `AutoencoderTiny` (TAESD) against diffusers (`Scripts/make-vae-goldens`):
/// encodings, decodings (with the tanh clamp and the [0, 1] ↔ [−1, 1] maps),
/// the byte-quantised `forward`, slicing, tiling, and gradients.
final class AutoencoderTinyParityTests: XCTestCase {
    func check(_ name: String) throws {
        let folder = AutoencoderKLParityTests.fixtures.appendingPathComponent(name)
        let configuration = try AutoencoderTinyConfiguration.load(contentsOf: folder)
        let model = try AutoencoderTiny(configuration: configuration)
        UNetHashedWeights.fill(model)
        let golden = try SafetensorsFixture.load("io", subdirectory: "vae/\(name)")
        var report = AutoencoderParityReport(name: name)
        let image = try golden.tensor("image"), latent = try golden.tensor("latent")
        let latents = noGrad { model.encode(image) }
        report.compare("latents", latents, try golden.tensor("latents"))
        report.compare("scaled", noGrad { model.scaleLatents(latents) }, try golden.tensor("scaled"))
        report.compare("decoded", noGrad { model.decode(latent) }, try golden.tensor("decoded"))
        report.compare("forward", model(image), try golden.tensor("forward"))
        model.usesSlicing = true
        report.compare("sliced.latents", noGrad { model.encode(image) }, try golden.tensor("sliced.latents"))
        report.compare("sliced.decoded", noGrad { model.decode(latent) }, try golden.tensor("sliced.decoded"))
        model.usesSlicing = false
        if let tiledImage = golden.tensors["tiled.image"] {
            model.usesTiling = true
            model.tileSampleSize = 128
            model.tileLatentSize = 128 / model.spatialScaleFactor
            report.compare("tiled.latents", noGrad { model.encode(tiledImage) }, try golden.tensor("tiled.latents"))
            report.compare("tiled.decoded", noGrad { model.decode(try! golden.tensor("tiled.latent")) }, try golden.tensor("tiled.decoded"))
            // The tiled decoding is differentiable (blend masks and region replacement are tensor ops).
            let leaf = try golden.leaf("tiled.latent")
            model.decode(leaf).sum().backward()
            XCTAssertEqual(leaf.grad?.shape, leaf.shape)
            model.usesTiling = false
            model.zeroGradients()
        }

        let latentLeaf = try golden.leaf("latent")
        let decodeLoss = (model.decode(latentLeaf) * (try golden.tensor("decode.upstream"))).sum()
        decodeLoss.backward()
        report.compare("decode.loss", decodeLoss.reshaped([1]), try golden.tensor("decode.loss"))
        report.compare("decode.latent_grad", try XCTUnwrap(latentLeaf.grad), try golden.tensor("decode.latent_grad"), gradient: true)
        report.compareParameterGradients(model, golden: golden, prefix: "decode")
        model.zeroGradients()

        let imageLeaf = try golden.leaf("image")
        let encodeLoss = (model.encode(imageLeaf) * (try golden.tensor("encode.upstream"))).sum()
        encodeLoss.backward()
        report.compare("encode.loss", encodeLoss.reshaped([1]), try golden.tensor("encode.loss"))
        report.compare("encode.image_grad", try XCTUnwrap(imageLeaf.grad), try golden.tensor("encode.image_grad"), gradient: true)
        report.compareParameterGradients(model, golden: golden, prefix: "encode")
        report.finish()
    }

    /// Four levels of 8 channels, ReLU; tiles of 128 pixels (16 latents) over a 136-pixel image.
    func testBasicConfiguration() throws { try check("tiny-basic") }

    /// Two levels of 12 channels, SiLU, latent magnitude 2 and shift 0.25.
    func testVariantsConfiguration() throws {
        try check("tiny-variants")
        let configuration = try AutoencoderTinyConfiguration.load(contentsOf: AutoencoderKLParityTests.fixtures.appendingPathComponent("tiny-variants"))
        XCTAssertEqual(configuration.scalingFactor, 1.5)
        XCTAssertEqual(configuration.shiftFactor, 0.1)
        XCTAssertEqual(configuration.latentMagnitude, 2)
    }

    /// TAESD's configuration: the defaults, 64 channels, [1, 3, 3, 3] / [3, 3, 3, 1] blocks.
    func testDefaultsAreTAESD() throws {
        let model = try AutoencoderTiny()
        XCTAssertEqual(model.configuration.encoderBlockCounts, [1, 3, 3, 3])
        XCTAssertEqual(model.configuration.decoderBlockCounts, [3, 3, 3, 1])
        XCTAssertEqual(model.spatialScaleFactor, 8)
        XCTAssertEqual(model.tileLatentSize, 64)
        let names = model.namedParameters().map(\.name)
        XCTAssertEqual(names.first, "encoder.layers.0.weight")
        XCTAssertTrue(names.contains("encoder.layers.1.conv.4.bias"))
        XCTAssertTrue(names.contains("encoder.layers.2.weight"))
        XCTAssertTrue(names.contains("decoder.layers.2.conv.0.weight"))
        XCTAssertFalse(names.contains("encoder.layers.2.bias"), "the stride-2 convolutions have no bias")
        XCTAssertEqual(model.parameterCount, 2_445_063)  // diffusers: AutoencoderTiny() has 2,445,063
    }
}
