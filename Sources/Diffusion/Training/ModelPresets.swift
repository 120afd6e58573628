import Foundation

/// Named UNet2DModel configurations for `model:` in `train.yaml`.
///
/// - `course-mnist`: the Hugging Face diffusion course's MNIST UNet (unit 1):
///   block_out_channels (32, 64, 64), two layers per block, attention in the
///   two lower resolutions; 1.7 M parameters at one channel.
/// - `course-butterflies`: the course's `TrainConfig` UNet for 128×128
///   butterflies: (128, 128, 256, 256, 512, 512), attention at the fifth level.
/// - `small`: a fast UNet for CPU demos (`make demo`): (16, 32, 64), one layer
///   per block, attention only in the middle block; 0.63 M parameters.
/// - `tiny`: a test-sized UNet: (8, 16), one layer per block, no attention.
///
/// Every preset takes its `sample_size` from the image size and its input and
/// output channels from the data; a class-conditional run adds `num_class_embeds`.
public enum ModelPresets {
    /// The preset used when `model` is not given.
    public static let defaultName = "course-mnist"

    /// The preset names.
    public static let names = ["course-mnist", "course-butterflies", "small", "tiny"]

    /// The configuration of preset `name` (before image size, channels and classes are filled in).
    public static func configuration(named name: String) throws -> UNet2DConfiguration {
        var configuration = UNet2DConfiguration()
        configuration.layersPerBlock = 2
        switch name {
        case "course-mnist":
            configuration.blockOutChannels = [32, 64, 64]
            configuration.downBlockTypes = [.downBlock, .attentionDownBlock, .attentionDownBlock]
            configuration.upBlockTypes = [.attentionUpBlock, .attentionUpBlock, .upBlock]
        case "course-butterflies":
            configuration.blockOutChannels = [128, 128, 256, 256, 512, 512]
            configuration.downBlockTypes = [.downBlock, .downBlock, .downBlock, .downBlock, .attentionDownBlock, .downBlock]
            configuration.upBlockTypes = [.upBlock, .attentionUpBlock, .upBlock, .upBlock, .upBlock, .upBlock]
        case "small":
            configuration.blockOutChannels = [16, 32, 64]
            configuration.layersPerBlock = 1
            configuration.downBlockTypes = [.downBlock, .downBlock, .downBlock]
            configuration.upBlockTypes = [.upBlock, .upBlock, .upBlock]
            configuration.normGroupCount = 8
        case "tiny":
            configuration.blockOutChannels = [8, 16]
            configuration.layersPerBlock = 1
            configuration.downBlockTypes = [.downBlock, .downBlock]
            configuration.upBlockTypes = [.upBlock, .upBlock]
            configuration.normGroupCount = 4
            configuration.addAttention = false
        default:
            throw TrainingConfigurationError("unknown model preset \"\(name)\"; presets: \(names.joined(separator: ", "))")
        }
        return configuration
    }

    /// The UNet configuration a training run builds: the preset or the given
    /// keys, with `sample_size`, `in_channels` and `out_channels` filled in
    /// from the data where the configuration does not set them (always, for a
    /// bare preset), and `num_class_embeds` = `classCount` + 1 for a
    /// class-conditional run (the last index is the unconditional "null" class).
    public static func resolve(_ choice: ModelChoice, imageSize: Int, channels: Int, classCount: Int?) throws -> UNet2DConfiguration {
        var configuration: UNet2DConfiguration
        var given: Set<String> = []
        switch choice {
        case .preset(let name):
            configuration = try Self.configuration(named: name)
        case .configuration(let base, let keys):
            var members = try base.map { try Self.configuration(named: $0).jsonObject } ?? [:]
            if base != nil {
                for key in ["sample_size", "in_channels", "out_channels", "num_class_embeds"] { members.removeValue(forKey: key) }
            }
            for (key, value) in keys { members[key] = value }
            given = Set(keys.keys)
            do {
                configuration = try UNet2DConfiguration(jsonObject: members)
            } catch let error as UNet2DConfigurationError {
                throw TrainingConfigurationError("model: \(error)")
            }
        }
        if !given.contains("sample_size") { configuration.sampleSize = .square(imageSize) }
        if !given.contains("in_channels") { configuration.inChannels = channels }
        if !given.contains("out_channels") { configuration.outChannels = channels }
        if let classCount {
            if let count = configuration.classEmbeddingCount, count != classCount + 1 {
                throw TrainingConfigurationError(
                    "model: num_class_embeds is \(count) but a class-conditional run on \(classCount) classes needs \(classCount + 1) (the classes and one unconditional class)")
            }
            if configuration.classEmbeddingType != nil {
                throw TrainingConfigurationError("model: class_conditional training uses num_class_embeds; remove class_embed_type")
            }
            configuration.classEmbeddingCount = classCount + 1
        }
        return configuration
    }
}
