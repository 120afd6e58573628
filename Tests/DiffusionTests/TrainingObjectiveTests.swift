import TestSupport
import Diffusion
import Foundation
import XCTest

/// The objectives train, and Min-SNR weighting with a huge γ is plain MSE.
final class TrainingObjectiveTests: XCTestCase {
    private func losses(_ overrides: [(key: String, value: String)]) throws -> [Float] {
        let folder = try temporaryFolderPath("training")
        let trainer = try TrainingFixtures.trainer(yaml: TrainingFixtures.yaml(outputDir: folder, steps: 8, checkpointing: 0),
                                                   overrides: overrides)
        _ = try trainer.run()
        let byStep = try TrainingFixtures.losses(outputDir: folder)
        return (1...8).map { byStep[$0] ?? .nan }
    }

    func testEveryObjectiveTrains() throws {
        for objective in ["epsilon", "sample", "v_prediction", "x0"] {
            let values = try losses([("prediction_type", objective)])
            XCTAssertTrue(values.allSatisfy(\.isFinite), "\(objective): \(values)")
        }
    }

    func testMinSNRWithAHugeGammaIsPlainMSE() throws {
        let plain = try losses([])
        let weighted = try losses([("snr_gamma", "1.0e12")])
        for (a, b) in zip(plain, weighted) { XCTAssertEqual(a, b, accuracy: 1e-4 * Swift.abs(a)) }
        let clipped = try losses([("snr_gamma", "5")])
        XCTAssertNotEqual(clipped[0], plain[0])
    }

    func testFineTuneFromAPipelineKeepsFrozenWeights() throws {
        let base = try temporaryFolderPath("training")
        _ = try TrainingFixtures.trainer(yaml: TrainingFixtures.yaml(outputDir: base, steps: 2, checkpointing: 0)).run()
        let tuned = try temporaryFolderPath("training")
        let trainer = try TrainingFixtures.trainer(yaml: TrainingFixtures.yaml(outputDir: tuned, steps: 4, checkpointing: 0),
                                                   overrides: [("from_pipeline", base), ("freeze", "[\"down_blocks.*\", \"/conv_in\\\\..*/\"]"),
                                                               ("use_ema", "false")])
        XCTAssertLessThan(trainer.optimizer.parameters.count, trainer.unet.parameters().count)
        _ = try trainer.run()
        let before = try DDPMPipeline.load(folder: URL(fileURLWithPath: base)).unet.stateDict()
        let after = try DDPMPipeline.load(folder: URL(fileURLWithPath: tuned)).unet.stateDict()
        for (name, tensor) in after {
            let frozen = name.hasPrefix("down_blocks.") || name.hasPrefix("conv_in.")
            let same = tensor.toArray() == before[name]?.toArray()
            if frozen { XCTAssertTrue(same, "\(name) is frozen but changed") }
            if name == "conv_out.weight" { XCTAssertFalse(same, "\(name) did not train") }
        }
    }
}
