import Foundation
import NN
import Tensors

/// A timestep-conditioned image classifier for classifier guidance: the down
/// half of a `UNet2DModel` (`conv_in`, the sinusoidal `time_proj` and
/// `time_embedding`, `DownBlock2D`s, a resnet middle block) followed by a
/// group norm, SiLU, global average pooling and a linear head, as the
/// "encoder UNet" classifier of Dhariwal & Nichol (2021).
///
/// Parameter names follow PyTorch (`down_blocks.0.resnets.0.conv1.weight`,
/// `head.weight`); a folder holds `config.json` and `model.safetensors`.
///
/// ```swift
/// let classifier = try NoiseAwareClassifier.load(folder: URL(fileURLWithPath: "output/classifier"))
/// let logits = noGrad { classifier(noisyImages, timesteps: [500]) }   // [N, classes]
/// ```
public final class NoiseAwareClassifier: Module {
    /// `conv_in`: image channels to the first block's.
    public let convIn: Conv2d
    /// `time_proj` and `time_embedding`: the sinusoidal timestep features and their MLP.
    public let timeProjection: Timesteps
    public let timeEmbedding: TimestepEmbedding
    /// `down_blocks`: diffusers `DownBlock2D`s (each but the last halves the resolution).
    public let downBlocks: [UNetDownBlock]
    /// `mid_block`: two resnets without attention (nil with `add_mid_block` false).
    public let midBlock: UNetMidBlock2D?
    /// `conv_norm_out`: the group norm before SiLU and pooling.
    public let convNormOut: GroupNorm
    /// `head`: pooled features to one logit per class.
    public let head: Linear

    public override class var stateDictKeys: [String: String] {
        ["convIn": "conv_in", "timeProjection": "time_proj", "timeEmbedding": "time_embedding", "downBlocks": "down_blocks",
         "midBlock": "mid_block", "convNormOut": "conv_norm_out", "head": "head"]
    }

    /// The configuration the model was built from.
    public let configuration: NoiseAwareClassifierConfiguration

    /// The weights file name of a classifier folder.
    public static let weightsName = "model.safetensors"

    /// A randomly initialised classifier (weights from `Initialization`).
    public init(configuration: NoiseAwareClassifierConfiguration) throws {
        try configuration.validate()
        self.configuration = configuration
        let channels = configuration.blockOutChannels
        let timeDimension = channels[0] * 4
        convIn = Conv2d(configuration.inChannels, channels[0], kernelSize: 3, padding: 1)
        timeProjection = Timesteps(channels: channels[0], flipSinToCos: configuration.flipSinToCos,
                                   downscaleFrequencyShift: Float(configuration.frequencyShift))
        timeEmbedding = TimestepEmbedding(inputChannels: channels[0], embeddingDimension: timeDimension)
        let settings = ResnetSettings(timeEmbeddingChannels: timeDimension, groups: configuration.normGroupCount,
                                      epsilon: Float(configuration.normEpsilon))
        var blocks: [UNetDownBlock] = []
        var output = channels[0]
        for index in channels.indices {
            let input = output
            output = channels[index]
            blocks.append(UNetDownBlock(type: .downBlock, layers: configuration.layersPerBlock, inChannels: input, outChannels: output,
                                        settings: settings, attentionHeadDimension: output,
                                        downsampling: index == channels.count - 1 ? nil : .conv, downsamplePadding: 1))
        }
        downBlocks = blocks
        let last = channels[channels.count - 1]
        midBlock = configuration.addMidBlock
            ? UNetMidBlock2D(channels: last, settings: settings, attentionHeadDimension: last, attentionGroups: nil, addAttention: false)
            : nil
        convNormOut = GroupNorm(groupCount: configuration.normGroupCount, channels: last, epsilon: Float(configuration.normEpsilon))
        head = Linear(last, configuration.classCount)
        super.init()
    }

    /// The logits `[batch, classes]` for `sample` `[batch, C, H, W]` (in [-1, 1],
    /// noised to `timesteps`: one per example, or one for all).
    public func callAsFunction(_ sample: Tensor, timesteps given: [Float]) -> Tensor {
        guard sample.rank == 4, sample.shape[1] == configuration.inChannels else {
            fatalError("NoiseAwareClassifier: sample must be [batch, \(configuration.inChannels), height, width], got \(sample.shape)")
        }
        let batch = sample.shape[0]
        let timesteps = given.count == 1 ? Array(repeating: given[0], count: batch) : given
        precondition(timesteps.count == batch, "NoiseAwareClassifier: \(given.count) timesteps for a batch of \(batch)")
        let embedding = timeEmbedding(timeProjection(timesteps))
        var hidden = convIn(sample)
        var residuals: [Tensor] = []
        for block in downBlocks {
            hidden = block(hidden, timeEmbedding: embedding, residuals: &residuals)
            residuals.removeAll()
        }
        if let midBlock { hidden = midBlock(hidden, timeEmbedding: embedding) }
        hidden = hidden.groupNormSiLU(groupCount: convNormOut.groupCount, weight: convNormOut.weight, bias: convNormOut.bias,
                                      epsilon: convNormOut.epsilon)
        return head(hidden.mean(axes: [2, 3]))
    }

    /// As `callAsFunction(_:timesteps:)` with one timestep for the whole batch.
    public func callAsFunction(_ sample: Tensor, timestep: Float) -> Tensor { self(sample, timesteps: [timestep]) }

    /// The predicted class of each image (clean images: timestep 0).
    public func predict(_ images: Tensor, timestep: Float = 0, batchSize: Int = 100) -> [Int] {
        var labels: [Int] = []
        var start = 0
        while start < images.shape[0] {
            let length = Swift.min(batchSize, images.shape[0] - start)
            let logits = noGrad { self(images.narrowed(axis: 0, start: start, length: length).contiguous(), timestep: timestep) }
            labels += logits.argmax(axis: 1).toArray().map { Int($0) }
            start += length
        }
        return labels
    }

    // MARK: Folder

    /// Writes `config.json` and `model.safetensors` into `folder`.
    public func save(folder: URL) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(configuration).write(to: folder.appendingPathComponent(ModelFolder.configurationName), options: .atomic)
        try saveSafetensors(path: folder.appendingPathComponent(Self.weightsName).path)
    }

    /// Reads a folder written by `save(folder:)` (strictly: every parameter must match).
    public static func load(folder: URL) throws -> NoiseAwareClassifier {
        let configurationURL = folder.appendingPathComponent(ModelFolder.configurationName)
        guard FileManager.default.fileExists(atPath: configurationURL.path) else {
            throw ModelFolderError.missingFile(path: configurationURL.path,
                                               hint: "a classifier folder (from `diffuse train-classifier`) holds config.json and \(weightsName)")
        }
        let configuration: NoiseAwareClassifierConfiguration
        do {
            configuration = try JSONDecoder().decode(NoiseAwareClassifierConfiguration.self, from: Data(contentsOf: configurationURL))
        } catch let error as DecodingError {
            throw GuidanceError("\(configurationURL.path) is not a NoiseAwareClassifier configuration: \(error)")
        }
        let model = try NoiseAwareClassifier(configuration: configuration)
        let weights = folder.appendingPathComponent(weightsName).path
        guard FileManager.default.fileExists(atPath: weights) else {
            throw ModelFolderError.missingFile(path: weights, hint: "the classifier's weights")
        }
        _ = try model.loadSafetensors(path: weights, strict: true)
        model.eval()
        return model
    }
}
