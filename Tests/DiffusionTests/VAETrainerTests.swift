import TestSupport
import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// `diffuse train-vae`: the loss and its reductions, the trainer's runs, resume,
/// grids, `scaling_factor` and the saved `vae/` folder.
final class VAETrainerTests: XCTestCase {
    // MARK: The loss

    /// The KL term against the closed form ½ Σ (μ² + σ² − 1 − log σ²) computed by hand, per image.
    func testKLTermIsTheClosedFormSummedPerImage() {
        // Two images, one latent channel of 1×2: moments are [mean | log-variance].
        let moments = Tensor([0.5, -1.0, /* logvar */ 0.0, 0.4,
                              2.0, 0.0, /* logvar */ -1.0, 40.0], shape: [2, 2, 1, 2])
        let posterior = DiagonalGaussianDistribution(moments: moments)
        func term(_ mean: Double, _ logVariance: Double) -> Double {
            let clamped = Swift.min(Swift.max(logVariance, -30), 20)
            return 0.5 * (mean * mean + Foundation.exp(clamped) - 1 - clamped)
        }
        let expected = [term(0.5, 0) + term(-1, 0.4), term(2, -1) + term(0, 40)]
        let kl = posterior.kl().toArray()
        XCTAssertEqual(Double(kl[0]), expected[0], accuracy: 1e-5)
        XCTAssertEqual(Double(kl[1]), expected[1], accuracy: expected[1] * 1e-6)
    }

    /// loss = Σ ℓ(x̂ − x) / B + w · Σ KL / B, with x̂ the decoder's output for z = μ + σ·ε.
    func testLossReductionsByHand() throws {
        var configuration = VAETrainingOptions()
        configuration.model = .tiny
        configuration.resolution = 8
        Initialization.seed(3)
        let model = try AutoencoderKL(configuration: configuration.modelConfiguration(channels: 3))
        var generator = RandomGenerator(seed: 4)
        let images = Tensor.rand([3, 3, 8, 8], low: -1, high: 1, generator: &generator)
        let noise = Tensor.randn([3, 4, 4, 4], generator: &generator)
        for kind in VAEReconstructionLoss.allCases {
            let terms = noGrad { VAETrainer.loss(model: model, images: images, noise: noise, reconstruction: kind, klWeight: 0.25) }
            let posterior = noGrad { model.encode(images) }
            let decoded = noGrad { model.decode(posterior.sample(noise: noise)) }.toArray()
            let target = images.toArray()
            let reconstruction = zip(decoded, target).map { kind == .l1 ? Double(Swift.abs($0 - $1)) : Double(($0 - $1) * ($0 - $1)) }
                .reduce(0, +) / 3
            let mean = posterior.mean.toArray(), logVariance = posterior.logVariance.toArray()
            let kl = zip(mean, logVariance).map { 0.5 * (Double($0 * $0) + Foundation.exp(Double($1)) - 1 - Double($1)) }.reduce(0, +) / 3
            XCTAssertEqual(Double(terms.reconstruction.item), reconstruction, accuracy: reconstruction * 1e-5, "\(kind)")
            XCTAssertEqual(Double(terms.kl.item), kl, accuracy: kl * 1e-5, "\(kind)")
            XCTAssertEqual(Double(terms.loss.item), reconstruction + 0.25 * kl, accuracy: (reconstruction + kl) * 1e-5, "\(kind)")
        }
    }

    // MARK: Runs

    func testLossFallsOnATinyRun() throws {
        let folder = try temporaryFolderPath("training")
        var options = VAETrainerFixtures.options(outputDir: folder, steps: 40)
        options.learningRate = 1e-2
        let trainer = try VAETrainerFixtures.trainer(options)
        var losses: [Float] = []
        trainer.onStep = { losses.append($0.reconstruction) }
        let summary = try trainer.run()
        XCTAssertEqual(summary.step, 40)
        XCTAssertEqual(losses.count, 40)
        let first = losses.prefix(3).reduce(0, +) / 3, last = losses.suffix(5).reduce(0, +) / 5
        XCTAssertLessThan(last, first * 0.8, "reconstruction terms \(losses)")
    }

    func testResumedRunGivesTheSameLossesAndWeights() throws {
        let steps = 8
        let whole = try VAETrainerFixtures.trainer(VAETrainerFixtures.options(outputDir: try temporaryFolderPath("training"), steps: steps))
        var reference: [VAETrainer.StepResult] = []
        whole.onStep = { reference.append($0) }
        let wholeSummary = try whole.run()

        let folder = try temporaryFolderPath("training")
        let first = try VAETrainerFixtures.trainer(VAETrainerFixtures.options(outputDir: folder, steps: steps))
        var results: [VAETrainer.StepResult] = []
        first.onStep = { result in
            results.append(result)
            if result.step == 3 { first.interruption.request() }
        }
        let stopped = try first.run()
        XCTAssertTrue(stopped.interrupted)
        XCTAssertEqual(stopped.step, 3)
        XCTAssertNil(stopped.vaePath)
        XCTAssertFalse(FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent("vae")),
                       "an interrupted run writes a checkpoint, not vae/")
        var options = VAETrainerFixtures.options(outputDir: folder, steps: steps)
        options.resumeFromCheckpoint = "latest"
        let second = try VAETrainerFixtures.trainer(options)
        XCTAssertEqual(second.step, 0)
        second.onStep = { results.append($0) }
        let finished = try second.run()
        XCTAssertFalse(finished.interrupted)
        XCTAssertEqual(results, reference)
        for ((name, resumed), (_, uninterrupted)) in zip(second.model.namedParameters(), whole.model.namedParameters()) {
            XCTAssertEqual(resumed.toArray(), uninterrupted.toArray(), name)
        }
        XCTAssertEqual(finished.scalingFactor, wholeSummary.scalingFactor)
    }

    func testSavedVAEFolderLoadsBackWithTheMeasuredScalingFactor() throws {
        let folder = try temporaryFolderPath("training")
        var options = VAETrainerFixtures.options(outputDir: folder, steps: 4)
        options.useEMA = false
        let trainer = try VAETrainerFixtures.trainer(options)
        let summary = try trainer.run()
        let vaePath = try XCTUnwrap(summary.vaePath)
        XCTAssertEqual(vaePath, (folder as NSString).appendingPathComponent("vae"))
        for name in ["config.json", "diffusion_pytorch_model.safetensors"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: (vaePath as NSString).appendingPathComponent(name)), name)
        }
        let loaded = try AutoencoderKL.load(folder: URL(fileURLWithPath: vaePath))
        let scalingFactor = try XCTUnwrap(summary.scalingFactor)
        XCTAssertEqual(loaded.configuration.scalingFactor, scalingFactor)
        XCTAssertNotEqual(scalingFactor, 0.18215)
        var expected = trainer.model.configuration
        expected.scalingFactor = scalingFactor
        XCTAssertEqual(loaded.configuration, expected)
        XCTAssertEqual(loaded.configuration.blockOutChannels, [8, 16])
        XCTAssertEqual(loaded.configuration.latentChannels, 4)

        // The same reconstructions as the trained model.
        let images = Tensor.stack((0..<4).map { try! VAETrainerFixtures.dataset().example(at: $0).image }, axis: 0)
        trainer.model.eval()
        XCTAssertEqual(trainer.reconstruct(images).toArray(), noGrad { loaded.decode(loaded.encode(images).mode()) }.toArray())

        // scaling_factor is 1 / std of the sampled latents (Bessel-corrected), measured again the same way.
        XCTAssertEqual(try trainer.measureScalingFactor(images: 32), scalingFactor)
        var generator = RandomGenerator(seed: 1)
        let sampled: [Float] = noGrad { trainer.model.encode(images).sample(generator: &generator) }.toArray()
        let latents: [Double] = sampled.map { Double($0) }
        let mean: Double = latents.reduce(0, +) / Double(latents.count)
        let squares: Double = latents.map { ($0 - mean) * ($0 - mean) }.reduce(0, +)
        let deviation: Double = (squares / Double(latents.count - 1)).squareRoot()
        XCTAssertEqual(1 / deviation, scalingFactor, accuracy: scalingFactor * 0.5, "the same order as 4 images' latents")

        // The final grid: two rows (originals, reconstructions) of gridImages columns.
        let grid = try XCTUnwrap(summary.grids.last)
        XCTAssertTrue(grid.hasSuffix("reconstructions/step-000004.png"), grid)
        let image = try PNG.decode(Array(try Data(contentsOf: URL(fileURLWithPath: grid))), path: grid)
        XCTAssertEqual(image.width, 4 * (8 + 2) + 2)
        XCTAssertEqual(image.height, 2 * (8 + 2) + 2)
        XCTAssertEqual(image.channels, 3)
        // The checkpoint and the logs are there.
        XCTAssertEqual(TrainingCheckpoint.list(in: folder).last?.step, 4)
        XCTAssertEqual(try TrainingFixtures.losses(outputDir: folder).keys.sorted(), [1, 2, 3, 4])
    }

    func testOutputFolderOfAnEarlierRunIsNotOverwritten() throws {
        let folder = try temporaryFolderPath("training")
        _ = try VAETrainerFixtures.trainer(VAETrainerFixtures.options(outputDir: folder, steps: 1)).run()
        XCTAssertThrowsError(try VAETrainerFixtures.trainer(VAETrainerFixtures.options(outputDir: folder, steps: 1)).run()) { error in
            XCTAssertEqual(error as? TrainingError, .outputExists(folder))
        }
        var options = VAETrainerFixtures.options(outputDir: folder, steps: 1)
        options.overwriteOutputDir = true
        XCTAssertEqual(try VAETrainerFixtures.trainer(options).run().step, 1)
    }

    func testBadOptionsAreClearErrors() throws {
        let folder = try temporaryFolderPath("training")
        func message(_ change: (inout VAETrainingOptions) -> Void) -> String {
            var options = VAETrainerFixtures.options(outputDir: folder, steps: 1)
            change(&options)
            do {
                _ = try VAETrainerFixtures.trainer(options)
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        XCTAssertTrue(message { $0.resolution = 10; $0.blockOutChannels = [8, 16, 16] }.contains("not divisible by 4"))
        XCTAssertTrue(message { $0.batchSize = 0 }.contains("--batch-size"))
        XCTAssertTrue(message { $0.klWeight = -1 }.contains("--kl-weight"))
        XCTAssertTrue(message { $0.batchSize = 100 }.contains("fewer than one batch"))
        XCTAssertTrue(message { $0.blockOutChannels = [6, 16]; $0.normGroupCount = 4 }.contains("norm_num_groups"))
        var options = VAETrainerFixtures.options(outputDir: folder, steps: 1)
        options.dataset = "/no/such/folder"
        XCTAssertThrowsError(try VAETrainer(options: options)) { error in
            XCTAssertTrue("\(error)".contains("/no/such/folder"), "\(error)")
        }
    }

    func testNonFiniteLossStops() throws {
        let folder = try temporaryFolderPath("training")
        var options = VAETrainerFixtures.options(outputDir: folder, steps: 20)
        options.batchSize = 48
        options.gradientAccumulationSteps = 1
        let trainer = try VAETrainerFixtures.trainer(options, dataset: VAETrainerFixtures.dataset(poisonedIndex: 7))
        XCTAssertThrowsError(try trainer.run()) { error in
            guard case .nonFiniteLoss(let step, let value, _)? = error as? TrainingError else { return XCTFail("\(error)") }
            XCTAssertEqual(step, 1)
            XCTAssertTrue(value.isNaN)
        }
    }
}

/// A stand-in process group that records the trainer's calls (and averages nothing).
final class RecordingGroup: DataParallelGroup {
    let rank: Int, size: Int
    var calls: [String] = []
    var broadcastCounts: [Int] = []

    init(rank: Int, size: Int) {
        self.rank = rank
        self.size = size
    }

    func broadcast(_ tensors: [Tensor], from root: Int) throws {
        calls.append("broadcast")
        broadcastCounts.append(tensors.count)
    }
    func averageGradients(of parameters: [Tensor]) throws {
        XCTAssertTrue(parameters.allSatisfy { $0.grad != nil }, "gradients are averaged after the backward passes")
        calls.append("average-gradients")
    }
    func average(_ values: [Float]) throws -> [Float] { values }
    func barrier() throws { calls.append("barrier") }
}

final class VAETrainerDataParallelTests: XCTestCase {
    /// Parameters broadcast once after they are built; gradients averaged once per optimizer
    /// step (after the last micro-batch); a barrier after every write.
    func testHooksAreCalledAtTheirPoints() throws {
        let folder = try temporaryFolderPath("training")
        let group = RecordingGroup(rank: 0, size: 1)
        var options = VAETrainerFixtures.options(outputDir: folder, steps: 4, checkpointing: 2)
        options.gridEvery = 3
        let trainer = try VAETrainer(options: options, dataset: VAETrainerFixtures.dataset(), group: group)
        trainer.silence()
        XCTAssertEqual(group.calls, ["broadcast"])
        XCTAssertEqual(group.broadcastCounts, [trainer.model.parameters().count])
        _ = try trainer.run()
        XCTAssertEqual(group.calls.filter { $0 == "average-gradients" }.count, 4, "one per optimizer step, not per micro-batch")
        // After the broadcast: the start barrier, then per step the average; checkpoint at 2 (barrier), grid at 3 (barrier),
        // and at the end the grid, the checkpoint and vae/ (a barrier each).
        XCTAssertEqual(Array(group.calls.dropFirst()), ["barrier", "average-gradients", "average-gradients", "barrier",
                                                        "average-gradients", "barrier", "average-gradients",
                                                        "barrier", "barrier", "barrier"])
    }

    /// A rank other than 0 trains the same way and writes nothing.
    func testOnlyTheWriterWritesFiles() throws {
        let folder = try temporaryFolderPath("training")
        let group = RecordingGroup(rank: 1, size: 2)
        let trainer = try VAETrainer(options: VAETrainerFixtures.options(outputDir: folder, steps: 3, checkpointing: 1),
                                     dataset: VAETrainerFixtures.dataset(), group: group)
        trainer.silence()
        let summary = try trainer.run()
        XCTAssertEqual(summary.step, 3)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder), [])
    }

    /// `--mixed-precision bf16` stores saved activations in bfloat16: the losses stay close to float32's.
    func testMixedPrecisionRunsClose() throws {
        var losses: [MixedPrecision: [Float]] = [:]
        for precision in [MixedPrecision.no, .bf16] {
            var options = VAETrainerFixtures.options(outputDir: try temporaryFolderPath("training"), steps: 3)
            options.mixedPrecision = precision
            let trainer = try VAETrainerFixtures.trainer(options)
            trainer.onStep = { losses[precision, default: []].append($0.loss) }
            _ = try trainer.run()
        }
        let full = try XCTUnwrap(losses[.no]), reduced = try XCTUnwrap(losses[.bf16])
        XCTAssertEqual(full.count, 3)
        XCTAssertEqual(full[0], reduced[0], accuracy: full[0] * 1e-6, "the first forward does not depend on saved activations")
        for (a, b) in zip(full, reduced) { XCTAssertEqual(a, b, accuracy: a * 0.05) }
    }
}
