import Diffusion
import Foundation
import NN
import Tensors
import TestSupport
import XCTest

/// diffusers `vae/` folders both ways: folders `save_pretrained` wrote (float32
/// and the fp16 variant) load with a clean report and give diffusers' outputs;
/// folders Diffuse writes (whole, fp16, sharded) reload to the same model and
/// carry diffusers' `config.json`; bad configurations and weights are errors naming the key.
final class AutoencoderFolderTests: XCTestCase {
    static let fixtures = AutoencoderKLParityTests.fixtures

    private func relative(_ ours: Tensor, _ reference: Tensor) -> Float { AutoencoderParityReport.relativeError(ours, reference) }

    func testDiffusersKLFolderLoadsWithCleanReport() throws {
        let folder = Self.fixtures.appendingPathComponent("folder-kl")
        let model = try AutoencoderKL.load(folder: folder)
        XCTAssertEqual(model.loadReport?.isClean, true)
        XCTAssertEqual(model.loadReport, StateDictReport())
        let golden = try SafetensorsFixture.load("folder-kl-io", subdirectory: "vae")
        let moments = noGrad { model.encodeMoments(try! golden.tensor("image")) }
        XCTAssertLessThan(relative(moments, try golden.tensor("encoded")), 1e-4)
        let decoded = noGrad { model.decode(moments.narrowed(axis: 1, start: 0, length: 4)) }
        XCTAssertLessThan(relative(decoded, try golden.tensor("decoded")), 1e-4)
        // diffusers' config.json, read and written back, is the same text.
        let text = try String(contentsOf: folder.appendingPathComponent("config.json"), encoding: .utf8)
        XCTAssertEqual(model.configuration.jsonText, text)

        let half = try AutoencoderKL.load(folder: folder, variant: "fp16")
        XCTAssertEqual(half.loadReport?.isClean, true)
        for ((name, a), (_, b)) in zip(model.namedParameters(), half.namedParameters()) {
            XCTAssertEqual(b.toArray(), a.converted(to: .float16).converted(to: .float32).toArray(), name)
        }
        // Kept in 16 bits: half the bytes, and exactly the widened model's outputs.
        let kept = try AutoencoderKL.load(folder: folder, variant: "fp16", precision: .asStored)
        XCTAssertEqual(kept.loadReport, StateDictReport())
        XCTAssertEqual(kept.parameterBytes * 2, half.parameterBytes)
        let image = try golden.tensor("image")
        XCTAssertEqual(noGrad { kept.encodeMoments(image) }.toArray(), noGrad { half.encodeMoments(image) }.toArray())
        let latent = moments.narrowed(axis: 1, start: 0, length: 4)
        XCTAssertEqual(noGrad { kept.decode(latent) }.toArray(), noGrad { half.decode(latent) }.toArray())
    }

    func testDiffusersTinyFolderLoadsWithCleanReport() throws {
        let folder = Self.fixtures.appendingPathComponent("folder-tiny")
        let model = try AutoencoderTiny.load(folder: folder)
        XCTAssertEqual(model.loadReport, StateDictReport())
        let golden = try SafetensorsFixture.load("folder-tiny-io", subdirectory: "vae")
        let latents = noGrad { model.encode(try! golden.tensor("image")) }
        XCTAssertLessThan(relative(latents, try golden.tensor("encoded")), 1e-4)
        XCTAssertLessThan(relative(noGrad { model.decode(latents) }, try golden.tensor("decoded")), 1e-4)
        let text = try String(contentsOf: folder.appendingPathComponent("config.json"), encoding: .utf8)
        XCTAssertEqual(model.configuration.jsonText, text)
        XCTAssertEqual(try AutoencoderTiny.load(folder: folder, variant: "fp16").loadReport, StateDictReport())
    }

    /// Whole, fp16 and sharded folders written by Diffuse reload to the same weights.
    func testRoundTrip() throws {
        var configuration = AutoencoderKLConfiguration()
        configuration.blockOutChannels = [8, 16]
        configuration.downBlockTypes = [.downEncoderBlock, .downEncoderBlock]
        configuration.upBlockTypes = [.upDecoderBlock, .upDecoderBlock]
        configuration.normGroupCount = 4
        configuration.shiftFactor = 0.0609
        configuration.latentsMean = [0.1, 0.2, 0.3, 0.4]
        configuration.latentsStandardDeviation = [1, 2, 3, 4]
        configuration.sampleSize = .rectangle(height: 24, width: 32)
        let model = try AutoencoderKL(configuration: configuration)
        for (label, variant, shard) in [("whole", nil, nil), ("fp16", "fp16", nil), ("sharded", nil, 40_000)] as [(String, String?, Int?)] {
            let folder = try temporaryFolderURL("vae-\(label)")
            try model.save(folder: folder, variant: variant, maximumShardBytes: shard)
            let reloaded = try AutoencoderKL.load(folder: folder, variant: variant)
            XCTAssertEqual(reloaded.configuration, configuration, label)
            XCTAssertEqual(reloaded.loadReport, StateDictReport(), label)
            XCTAssertEqual(reloaded.tileLatentSize, 12, label)
            for ((name, a), (_, b)) in zip(model.namedParameters(), reloaded.namedParameters()) {
                let expected = variant == nil ? a.toArray() : a.converted(to: .float16).converted(to: .float32).toArray()
                XCTAssertEqual(b.toArray(), expected, "\(label) \(name)")
            }
            if shard != nil {
                let files = try FileManager.default.contentsOfDirectory(atPath: folder.path)
                XCTAssertTrue(files.contains("diffusion_pytorch_model.safetensors.index.json"), "\(files)")
                XCTAssertGreaterThan(files.filter { $0.hasSuffix(".safetensors") }.count, 1, "\(files)")
            }
        }
        let tiny = try AutoencoderTiny(configuration: AutoencoderTinyConfiguration())
        let folder = try temporaryFolderURL("vae-tiny")
        try tiny.save(folder: folder)
        let reloaded = try AutoencoderTiny.load(folder: folder)
        XCTAssertEqual(reloaded.configuration, tiny.configuration)
        XCTAssertEqual(reloaded.parameters().map { $0.toArray() }, tiny.parameters().map { $0.toArray() })
    }

    /// The real Stable Diffusion VAE's names and size (diffusers: 83,653,863 parameters).
    func testStableDiffusionConfiguration() throws {
        let model = try AutoencoderKL(configuration: .stableDiffusion)
        XCTAssertEqual(model.parameterCount, 83_653_863)
        let names = Set(model.namedParameters().map(\.name))
        for name in ["encoder.down_blocks.0.downsamplers.0.conv.weight", "encoder.mid_block.attentions.0.group_norm.weight",
                     "decoder.up_blocks.3.resnets.0.conv_shortcut.weight", "decoder.up_blocks.0.upsamplers.0.conv.weight",
                     "quant_conv.weight", "post_quant_conv.bias", "encoder.conv_out.weight", "decoder.mid_block.attentions.0.to_out.0.weight"] {
            XCTAssertTrue(names.contains(name), name)
        }
        XCTAssertEqual(model.tileSampleSize, 512)
        XCTAssertEqual(model.tileLatentSize, 64)
    }

    func testConfigurationErrorsNameTheKey() throws {
        XCTAssertThrowsError(try AutoencoderKLConfiguration(jsonText: #"{"latent_channels": 4, "norm_type": "spatial"}"#)) { error in
            XCTAssertEqual(error as? AutoencoderConfigurationError, .unsupportedKey(model: "AutoencoderKL", key: "norm_type"))
        }
        XCTAssertThrowsError(try AutoencoderKLConfiguration(jsonText: #"{"down_block_types": ["AttnDownEncoderBlock2D"]}"#)) { error in
            guard case .unsupportedValue(_, let key, let value, _)? = error as? AutoencoderConfigurationError else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "down_block_types")
            XCTAssertEqual(value, "AttnDownEncoderBlock2D")
        }
        XCTAssertThrowsError(try AutoencoderKLConfiguration(jsonText: #"{"use_quant_conv": 1}"#)) { error in
            guard case .wrongType(_, let key, _, _)? = error as? AutoencoderConfigurationError else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "use_quant_conv")
        }
        XCTAssertThrowsError(try AutoencoderKLConfiguration(jsonText: #"{"_class_name": "AutoencoderTiny"}"#)) { error in
            XCTAssertEqual(error as? AutoencoderConfigurationError, .wrongClassName(model: "AutoencoderKL", found: "AutoencoderTiny"))
        }
        var configuration = AutoencoderKLConfiguration()
        configuration.blockOutChannels = [48]
        XCTAssertThrowsError(try AutoencoderKL(configuration: configuration)) { error in
            guard case .invalid(_, let key, _)? = error as? AutoencoderConfigurationError else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "norm_num_groups")
        }
        XCTAssertThrowsError(try AutoencoderTinyConfiguration(jsonText: #"{"encoder_block_out_channels": [32, 64], "num_encoder_blocks": [1, 1]}"#).validate()) { error in
            guard case .invalid(_, let key, _)? = error as? AutoencoderConfigurationError else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "encoder_block_out_channels")
        }
        XCTAssertThrowsError(try AutoencoderTinyConfiguration(jsonText: #"{"upsample_fn": "bilinear"}"#)) { error in
            guard case .unsupportedValue(_, let key, _, _)? = error as? AutoencoderConfigurationError else { return XCTFail("\(error)") }
            XCTAssertEqual(key, "upsample_fn")
        }
    }

    /// Missing, unexpected and mis-shaped weights are all reported by name.
    func testMismatchedWeightsAreReportedByName() throws {
        let folder = try temporaryFolderURL("vae-report")
        let source = Self.fixtures.appendingPathComponent("folder-kl")
        try FileManager.default.copyItem(at: source.appendingPathComponent("config.json"), to: folder.appendingPathComponent("config.json"))
        var tensors = try Safetensors.load(path: source.appendingPathComponent("diffusion_pytorch_model.safetensors").path)
        tensors.removeValue(forKey: "quant_conv.bias")
        tensors["encoder.mid_block.attentions.0.query.weight"] = Tensor.zeros([16, 16])
        tensors["decoder.conv_in.weight"] = Tensor.zeros([16, 2, 3, 3])
        try Safetensors.save(tensors, to: folder.appendingPathComponent("diffusion_pytorch_model.safetensors").path, metadata: ["format": "pt"])
        XCTAssertThrowsError(try AutoencoderKL.load(folder: folder)) { error in
            guard let report = error as? StateDictReport else { return XCTFail("\(error)") }
            XCTAssertEqual(report.missing, ["quant_conv.bias"])
            XCTAssertEqual(report.unexpected, ["encoder.mid_block.attentions.0.query.weight"])
            XCTAssertEqual(report.mismatched, [.init(name: "decoder.conv_in.weight", expected: [16, 4, 3, 3], found: [16, 2, 3, 3])])
        }
        let lenient = try AutoencoderKL.load(folder: folder, strict: false)
        XCTAssertEqual(lenient.loadReport?.missing, ["quant_conv.bias"])
    }
}

extension AutoencoderFolderTests {
    /// Files from before diffusers 0.14 name the mid-block attentions `query`, `key`,
    /// `value`, `proj_attn` (some as 1×1 convolutions); they load as diffusers loads them.
    func testDeprecatedAttentionNamesLoad() throws {
        let folder = try temporaryFolderURL("vae-deprecated")
        let source = Self.fixtures.appendingPathComponent("folder-kl")
        try FileManager.default.copyItem(at: source.appendingPathComponent("config.json"), to: folder.appendingPathComponent("config.json"))
        let tensors = try Safetensors.load(path: source.appendingPathComponent("diffusion_pytorch_model.safetensors").path)
        var renamed: [String: Tensor] = [:]
        for (name, tensor) in tensors {
            var old = name
            for (current, previous) in [(".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")] {
                old = old.replacingOccurrences(of: current, with: previous)
            }
            renamed[old] = name.hasSuffix("to_q.weight") ? tensor.reshaped(tensor.shape + [1, 1]) : tensor
        }
        XCTAssertNotNil(renamed["encoder.mid_block.attentions.0.proj_attn.weight"])
        try Safetensors.save(renamed, to: folder.appendingPathComponent("diffusion_pytorch_model.safetensors").path, metadata: ["format": "pt"])
        let model = try AutoencoderKL.load(folder: folder)
        XCTAssertEqual(model.loadReport, StateDictReport())
        let reference = try AutoencoderKL.load(folder: source)
        XCTAssertEqual(model.parameters().map { $0.toArray() }, reference.parameters().map { $0.toArray() })
    }
}

extension AutoencoderFolderTests {
    /// Writes folders for `Scripts/make-vae-goldens --verify-diffuse-folder`: `kl/` (a
    /// random AutoencoderKL with shift factor, float32 and fp16 variant), `kl-sharded/`
    /// (the same, sharded) and `tiny/` (a random AutoencoderTiny), each with
    /// `diffuse_check.safetensors` holding an input and Diffuse's outputs. Set
    /// `DIFFUSE_VAE_EXPORT` to keep them.
    func testWriteFoldersForPythonVerification() throws {
        let environment = ProcessInfo.processInfo.environment["DIFFUSE_VAE_EXPORT"]
        let root = try environment.map { URL(fileURLWithPath: $0) } ?? temporaryFolderURL("vae-export")
        try? FileManager.default.removeItem(at: root)
        Initialization.seed(2025)
        var configuration = AutoencoderKLConfiguration()
        configuration.blockOutChannels = [8, 16]
        configuration.downBlockTypes = [.downEncoderBlock, .downEncoderBlock]
        configuration.upBlockTypes = [.upDecoderBlock, .upDecoderBlock]
        configuration.normGroupCount = 4
        configuration.shiftFactor = 0.0609
        configuration.scalingFactor = 1.5305
        let kl = try AutoencoderKL(configuration: configuration)
        var tinyConfiguration = AutoencoderTinyConfiguration()
        tinyConfiguration.encoderBlockOutChannels = [8, 8]
        tinyConfiguration.decoderBlockOutChannels = [8, 8]
        tinyConfiguration.encoderBlockCounts = [1, 1]
        tinyConfiguration.decoderBlockCounts = [1, 1]
        let tiny = try AutoencoderTiny(configuration: tinyConfiguration)
        // Non-trivial norm parameters, so a transposed or dropped scale would show.
        for (name, parameter) in kl.namedParameters() where name.contains("norm") {
            var generator = RandomGenerator(seed: UInt64(name.utf8.count))
            parameter.copyValues(from: noGrad { parameter + Tensor.randn(parameter.shape, generator: &generator) * 0.1 })
        }
        var generator = RandomGenerator(seed: 9)
        let image = Tensor.randn([2, 3, 16, 16], generator: &generator)
        try kl.save(folder: root.appendingPathComponent("kl"))
        try kl.save(folder: root.appendingPathComponent("kl"), variant: "fp16")
        try kl.save(folder: root.appendingPathComponent("kl-sharded"), maximumShardBytes: 60_000)
        let half = try AutoencoderKL.load(folder: root.appendingPathComponent("kl"), variant: "fp16")
        for (name, model) in [("kl", kl), ("kl-sharded", kl)] {
            let moments = noGrad { model.encodeMoments(image) }
            let decoded = noGrad { model.decode(moments.narrowed(axis: 1, start: 0, length: 4)) }
            var tensors = ["image": image, "moments": moments, "decoded": decoded]
            if name == "kl" {
                tensors["moments_fp16_weights"] = noGrad { half.encodeMoments(image) }
            }
            try Safetensors.save(tensors, to: root.appendingPathComponent(name).appendingPathComponent("diffuse_check.safetensors").path)
        }
        try tiny.save(folder: root.appendingPathComponent("tiny"))
        let latents = noGrad { tiny.encode(image) }
        try Safetensors.save(["image": image, "latents": latents, "decoded": noGrad { tiny.decode(latents) }],
                             to: root.appendingPathComponent("tiny").appendingPathComponent("diffuse_check.safetensors").path)
        let reloaded = try AutoencoderKL.load(folder: root.appendingPathComponent("kl-sharded"))
        XCTAssertEqual(noGrad { reloaded.encodeMoments(image) }.toArray(), noGrad { kl.encodeMoments(image) }.toArray())
        if let environment { print("wrote Diffuse VAE folders to \(environment)") }
    }
}
