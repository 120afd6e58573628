import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// `AutoencoderKL` against diffusers (`Scripts/make-vae-goldens`): the same
/// posterior, samples, KL, decodings, sliced and tiled results, and gradients
/// (of the decoding with respect to the latents and the parameters, of the
/// encoding with respect to the image and the parameters), with the hashed
/// weights of the UNet goldens.
final class AutoencoderKLParityTests: XCTestCase {
    static let fixtures = SafetensorsFixture.directory.deletingLastPathComponent().appendingPathComponent("vae")

    static func model(_ name: String) throws -> (AutoencoderKL, GoldenCase) {
        let folder = fixtures.appendingPathComponent(name)
        let configuration = try AutoencoderKLConfiguration.load(contentsOf: folder.appendingPathComponent("config.json"))
        let model = try AutoencoderKL(configuration: configuration)
        UNetHashedWeights.fill(model)
        return (model, try SafetensorsFixture.load("io", subdirectory: "vae/\(name)"))
    }

    func check(_ name: String) throws {
        let (model, golden) = try Self.model(name)
        var report = AutoencoderParityReport(name: name)
        let image = try golden.tensor("image")
        let posterior = noGrad { model.encode(image) }
        report.compare("moments", posterior.moments, try golden.tensor("moments"))
        report.compare("mean", posterior.mean, try golden.tensor("mean"))
        report.compare("logvar", posterior.logVariance, try golden.tensor("logvar"))
        report.compare("std", posterior.standardDeviation, try golden.tensor("std"))
        let sample = noGrad { posterior.sample(noise: try! golden.tensor("noise")) }
        report.compare("sample", sample, try golden.tensor("sample"))
        report.compare("kl", noGrad { posterior.kl() }, try golden.tensor("kl"))
        report.compare("nll", noGrad { posterior.negativeLogLikelihood(try! golden.tensor("sample")) }, try golden.tensor("nll"))
        XCTAssertEqual(posterior.mode().toArray(), posterior.mean.toArray())
        let latent = try golden.tensor("latent")
        report.compare("decoded", noGrad { model.decode(latent) }, try golden.tensor("decoded"))
        report.compare("forward", noGrad { model(image) }, try golden.tensor("forward"))

        model.usesSlicing = true
        report.compare("sliced.moments", noGrad { model.encodeMoments(image) }, try golden.tensor("sliced.moments"))
        report.compare("sliced.decoded", noGrad { model.decode(latent) }, try golden.tensor("sliced.decoded"))
        model.usesSlicing = false

        let tiledImage = try golden.tensor("tiled.image"), tiledLatent = try golden.tensor("tiled.latent")
        model.usesTiling = true
        model.usesSlicing = tiledImage.shape[0] > 1
        report.compare("tiled.moments", noGrad { model.encodeMoments(tiledImage) }, try golden.tensor("tiled.moments"))
        report.compare("tiled.decoded", noGrad { model.decode(tiledLatent) }, try golden.tensor("tiled.decoded"))
        model.usesSlicing = false
        let tiledLeaf = try golden.leaf("tiled.latent")
        (model.decode(tiledLeaf) * (try golden.tensor("tiled.upstream"))).sum().backward()
        report.compare("tiled.latent_grad", try XCTUnwrap(tiledLeaf.grad), try golden.tensor("tiled.latent_grad"), gradient: true)
        model.usesTiling = false
        model.zeroGradients()

        let latentLeaf = try golden.leaf("latent")
        let decodeLoss = (model.decode(latentLeaf) * (try golden.tensor("decode.upstream"))).sum()
        decodeLoss.backward()
        report.compare("decode.loss", decodeLoss.reshaped([1]), try golden.tensor("decode.loss"))
        report.compare("decode.latent_grad", try XCTUnwrap(latentLeaf.grad), try golden.tensor("decode.latent_grad"), gradient: true)
        report.compareParameterGradients(model, golden: golden, prefix: "decode")
        model.zeroGradients()

        let imageLeaf = try golden.leaf("image")
        let encoded = model.encode(imageLeaf)
        let encodeLoss = (encoded.mean * (try golden.tensor("encode.mean_upstream"))).sum()
            + (encoded.logVariance * (try golden.tensor("encode.logvar_upstream"))).sum()
        encodeLoss.backward()
        report.compare("encode.loss", encodeLoss.reshaped([1]), try golden.tensor("encode.loss"))
        report.compare("encode.image_grad", try XCTUnwrap(imageLeaf.grad), try golden.tensor("encode.image_grad"), gradient: true)
        report.compareParameterGradients(model, golden: golden, prefix: "encode")
        report.finish()
    }

    /// Two levels, one resnet per encoder block, quant convolutions, the mid-block
    /// attention; tiles of 16 pixels over 40×40 images (edge tiles of 4), sliced.
    func testBasicConfiguration() throws { try check("kl-basic") }

    /// Three levels, two resnets per block, two latent channels, no quant convolutions,
    /// no mid-block attention, GELU resnets, a one-channel output, 24-pixel tiles.
    func testVariantsConfiguration() throws {
        try check("kl-variants")
        let configuration = try AutoencoderKLConfiguration.load(contentsOf: Self.fixtures.appendingPathComponent("kl-variants"))
        XCTAssertEqual(configuration.shiftFactor, 0.1159)
        XCTAssertEqual(configuration.scalingFactor, 0.3611)
        XCTAssertFalse(configuration.forceUpcast)
        let model = try AutoencoderKL(configuration: configuration)
        XCTAssertNil(model.quantConvolution)
        XCTAssertNil(model.postQuantConvolution)
        XCTAssertTrue(model.encoder.midBlock.attentions.isEmpty)
        let latents = Tensor([0.5, -1, 2, 0.25], shape: [1, 1, 2, 2])
        let scaled = model.scaledLatents(latents)
        XCTAssertEqual(scaled.toArray()[0], (0.5 - 0.1159) * 0.3611, accuracy: 1e-6)
        for (value, expected) in zip(model.unscaledLatents(scaled).toArray(), latents.toArray()) {
            XCTAssertEqual(value, expected, accuracy: 1e-6)
        }
    }

    /// A seeded sample is mean + std · noise with the generator's standard normal draws.
    func testSeededSample() throws {
        let (model, golden) = try Self.model("kl-basic")
        let posterior = noGrad { model.encode(try! golden.tensor("image")) }
        var generator = RandomGenerator(seed: 42)
        let sample = posterior.sample(generator: &generator)
        var replay = RandomGenerator(seed: 42)
        let noise = Tensor.randn(posterior.mean.shape, generator: &replay)
        XCTAssertEqual(sample.toArray(), posterior.sample(noise: noise).toArray())
        var other = RandomGenerator(seed: 43)
        XCTAssertNotEqual(sample.toArray(), posterior.sample(generator: &other).toArray())
    }
}

/// Relative errors of one parity run (max |ours − diffusers| / max |diffusers|),
/// asserted against 1e-4 (values) and 1e-3 (gradients) and printed.
struct AutoencoderParityReport {
    let name: String
    var values: [(String, Float)] = []
    var gradients: [(String, Float)] = []

    init(name: String) { self.name = name }

    static func maxAbs(_ values: [Float]) -> Float { values.reduce(0) { max($0, abs($1)) } }

    static func relativeError(_ ours: Tensor, _ reference: Tensor, floor: Float = 1e-30) -> Float {
        let (a, b) = (ours.toArray(), reference.toArray())
        precondition(a.count == b.count, "shapes \(ours.shape) and \(reference.shape) differ")
        let difference = zip(a, b).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        return difference / max(Self.maxAbs(b), floor)
    }

    mutating func compare(_ what: String, _ ours: Tensor, _ reference: Tensor, gradient: Bool = false,
                          file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(ours.shape, reference.shape, "\(name) \(what) shape", file: file, line: line)
        guard ours.shape == reference.shape else { return }
        let error = Self.relativeError(ours, reference)
        XCTAssertLessThan(error, gradient ? 1e-3 : 1e-4, "\(name) \(what)", file: file, line: line)
        if gradient { gradients.append((what, error)) } else { values.append((what, error)) }
    }

    /// Compares every parameter gradient with the golden's `<prefix>.grad.*` (whole)
    /// or `<prefix>.gradsummary.*` (three hash-random projections, L2 norm, max |g|),
    /// each against its own scale but not below 1e-3 of the largest gradient entry
    /// (as `UNetParityTests` does: some gradients are zero up to rounding on both sides).
    mutating func compareParameterGradients(_ model: Module, golden: GoldenCase, prefix: String,
                                            file: StaticString = #filePath, line: UInt = #line) {
        let whole = "\(prefix).grad.", summary = "\(prefix).gradsummary."
        let largest = golden.tensors.compactMap { key, value -> Float? in
            if key.hasPrefix(whole) { return Self.maxAbs(value.toArray()) }
            if key.hasPrefix(summary) { return value.toArray()[4] }
            return nil
        }.max() ?? 1
        let floor = 1e-3 * largest
        var worst: (String, Float) = ("", 0)
        var compared = 0
        for (parameterName, parameter) in model.namedParameters() {
            guard let gradient = parameter.grad else { continue }
            var error: Float
            if let reference = golden.tensors[whole + parameterName] {
                let scale = max(Self.maxAbs(reference.toArray()), floor)
                error = zip(gradient.toArray(), reference.toArray()).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) } / scale
            } else if let values = golden.tensors[summary + parameterName]?.toArray() {
                let ours = gradient.toArray().map(Double.init)
                let norm = max(Double(values[3]), Double(floor) * Double(ours.count).squareRoot())
                let projectionScale = norm * (1.0 / 3.0).squareRoot()
                var relative = 0.0
                for k in 0..<3 {
                    let vector = UNetHashedWeights.uniform(seed: UNetHashedWeights.projectionSeed(parameterName, k), count: ours.count)
                    var projection = 0.0
                    for index in ours.indices { projection += ours[index] * Double(vector[index]) }
                    relative = max(relative, abs(projection - Double(values[k])) / projectionScale)
                }
                let ourNorm = ours.reduce(0) { $0 + $1 * $1 }.squareRoot()
                relative = max(relative, abs(ourNorm - Double(values[3])) / norm)
                let ourMax = ours.reduce(0) { max($0, abs($1)) }
                relative = max(relative, abs(ourMax - Double(values[4])) / max(Double(values[4]), Double(floor)))
                error = Float(relative)
            } else {
                // A gradient diffusers does not have must be zero (a parameter off the path).
                error = Self.maxAbs(gradient.toArray()) / floor * 1e-3
                if error > 0 { XCTFail("\(name) \(prefix): the golden has no gradient for \(parameterName)", file: file, line: line) }
                continue
            }
            compared += 1
            if error > worst.1 { worst = (parameterName, error) }
        }
        let expected = golden.tensors.keys.filter { $0.hasPrefix(whole) || $0.hasPrefix(summary) }.count
        XCTAssertEqual(compared, expected, "\(name) \(prefix): every golden gradient is compared", file: file, line: line)
        XCTAssertLessThan(worst.1, 1e-3, "\(name) \(prefix) parameter gradients (worst \(worst.0))", file: file, line: line)
        gradients.append(("\(prefix) parameters (\(compared), worst \(worst.0))", worst.1))
    }

    func finish() {
        func format(_ list: [(String, Float)]) -> String { list.map { "\($0.0) \(String(format: "%.2e", $0.1))" }.joined(separator: ", ") }
        print("Autoencoder parity \(name): values: \(format(values)); gradients: \(format(gradients))")
    }
}
