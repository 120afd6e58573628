import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// What a generation keeps resident: the UNet's and text encoder's weights mapped from the pipeline's
/// files give their pages back before the VAE decode, and the next image reads them again unchanged.
final class StableDiffusionMemoryTests: XCTestCase {
    func testMappedDenoisingWeightsAreGivenBackBeforeTheDecode() throws {
        guard MappedPages.isEnabled else { throw XCTSkip("DIFFUSE_KEEP_MAPPED_PAGES=1 keeps mapped pages") }
        // A 16-bit pipeline folder loaded as stored: its weights stay mapped from the files.
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("diffuse-sd-memory-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        try StableDiffusionPipeline.load(folder: StableDiffusionParityTests.tiny).save(folder: folder, dataType: .bfloat16)
        let pipeline = try StableDiffusionPipeline.load(folder: folder, precision: .asStored)
        let unetWeight = try XCTUnwrap(pipeline.unet.parameters().max { $0.count < $1.count })
        let textWeight = try XCTUnwrap(pipeline.textEncoder.parameters().max { $0.count < $1.count })
        var parameters = StableDiffusionParameters(prompts: ["a red shirt"])
        parameters.steps = 2
        func resident(_ weight: Tensor) -> Int {
            let size = weight.storage.dataType.byteSize
            return MappedPages.residentPages(weight.storage.bytes + weight.offset * size, byteCount: weight.count * size)
        }
        for weight in [unetWeight, textWeight] {
            XCTAssertTrue(weight.storage.isBorrowed, "the tiny pipeline's weights are mapped from its safetensors files")
            XCTAssertGreaterThan(weight.count * weight.storage.dataType.byteSize, 2 * 4096, "a weight with a whole page")
        }
        var residentWhileDenoising = (unet: 0, text: 0)
        var generator = RandomGenerator(seed: 5)
        let first = try pipeline.generate(parameters, generator: &generator) { _ in
            residentWhileDenoising = (resident(unetWeight), resident(textWeight))
        }
        let after = (unet: resident(unetWeight), text: resident(textWeight))
        XCTAssertGreaterThan(residentWhileDenoising.unet, 2, "the UNet's weight is read from its pages during the steps")
        XCTAssertLessThanOrEqual(after.unet, 2, "only the partial pages at the ends may stay through the decode")
        XCTAssertLessThan(after.text, residentWhileDenoising.text, "the text encoder's whole pages are given back too")
        XCTAssertLessThanOrEqual(after.text, 2, "only the partial pages at the ends may stay through the decode")

        generator = RandomGenerator(seed: 5)
        let second = try pipeline.generate(parameters, generator: &generator)
        XCTAssertEqual(first.images.toArray(), second.images.toArray(), "the pages read again hold the same weights")
    }
}
