import Foundation
import NN

/// The configuration of an `AutoencoderKL`: every argument of diffusers'
/// `AutoencoderKL.__init__`, read from and written to `config.json` under
/// diffusers' keys (`block_out_channels`, `latent_channels`, `scaling_factor`, …).
///
/// Defaults are diffusers' defaults (a one-level 64-channel model); the real
/// Stable Diffusion 1.x / 2.x VAE is `stableDiffusion`. Reading is strict: a
/// key Diffuse does not know, a value of the wrong type, or a choice Diffuse
/// does not implement is an `AutoencoderConfigurationError` naming the key.
public struct AutoencoderKLConfiguration: Equatable, Sendable {
    /// Entries of `down_block_types`.
    public enum DownBlockType: String, Sendable, CaseIterable {
        case downEncoderBlock = "DownEncoderBlock2D"
    }

    /// Entries of `up_block_types`.
    public enum UpBlockType: String, Sendable, CaseIterable {
        case upDecoderBlock = "UpDecoderBlock2D"
    }

    /// `sample_size`: an integer, or `[height, width]` (diffusers tiles with the first).
    public enum SampleSize: Equatable, Sendable {
        case square(Int)
        case rectangle(height: Int, width: Int)

        /// The side diffusers' tiling uses (`sample_size[0]` for a list).
        public var tileSide: Int {
            switch self {
            case .square(let side): return side
            case .rectangle(let height, _): return height
            }
        }
    }

    /// `in_channels`: channels of the images.
    public var inChannels = 3
    /// `out_channels`: channels of the decoded images.
    public var outChannels = 3
    /// `down_block_types`.
    public var downBlockTypes: [DownBlockType] = [.downEncoderBlock]
    /// `up_block_types`.
    public var upBlockTypes: [UpBlockType] = [.upDecoderBlock]
    /// `block_out_channels`.
    public var blockOutChannels = [64]
    /// `layers_per_block`: resnets per encoder block (decoder blocks have one more).
    public var layersPerBlock = 1
    /// `act_fn`: the resnets' activation (the output activations are always SiLU, as in diffusers).
    public var activationFunction = UNet2DConfiguration.ActivationFunction.silu
    /// `latent_channels`.
    public var latentChannels = 4
    /// `norm_num_groups`.
    public var normGroupCount = 32
    /// `sample_size`: the tile size of tiled encoding.
    public var sampleSize = SampleSize.square(32)
    /// `scaling_factor`: latents are multiplied by it before the diffusion model
    /// (`(z − shift_factor) · scaling_factor`) and divided by it before decoding.
    public var scalingFactor: Double = 0.18215
    /// `shift_factor` (nil: none).
    public var shiftFactor: Double? = nil
    /// `latents_mean` (nil: none); kept for pipelines that normalise per channel.
    public var latentsMean: [Double]? = nil
    /// `latents_std` (nil: none).
    public var latentsStandardDeviation: [Double]? = nil
    /// `force_upcast`: pipelines run this VAE in float32 (Diffuse always computes in float32).
    public var forceUpcast = true
    /// `use_quant_conv`: the 1×1 `quant_conv` after the encoder.
    public var useQuantConvolution = true
    /// `use_post_quant_conv`: the 1×1 `post_quant_conv` before the decoder.
    public var usePostQuantConvolution = true
    /// `mid_block_add_attention`: the single-head attention in both middle blocks.
    public var midBlockAddAttention = true
    /// `_name_or_path`, kept when read so it is written back.
    public var nameOrPath: String? = nil

    /// diffusers' defaults.
    public init() {}

    /// diffusers' class name.
    public static let className = "AutoencoderKL"

    /// Stable Diffusion 1.x's and 2.x's VAE (83.7 M parameters): four levels of
    /// [128, 256, 512, 512] channels, two resnets per block, 4 latent channels,
    /// `scaling_factor` 0.18215. (2.x's folders say `sample_size` 768.)
    public static var stableDiffusion: AutoencoderKLConfiguration {
        var configuration = AutoencoderKLConfiguration()
        configuration.downBlockTypes = Array(repeating: .downEncoderBlock, count: 4)
        configuration.upBlockTypes = Array(repeating: .upDecoderBlock, count: 4)
        configuration.blockOutChannels = [128, 256, 512, 512]
        configuration.layersPerBlock = 2
        configuration.sampleSize = .square(512)
        return configuration
    }

    /// How many times the encoder halves the resolution.
    public var downsamplingFactor: Int { 1 << max(blockOutChannels.count - 1, 0) }

    /// Checks that the configuration builds a model, naming the key at fault.
    public func validate() throws {
        func require(_ condition: Bool, _ key: String, _ reason: @autoclosure () -> String) throws {
            if !condition { throw AutoencoderConfigurationError.invalid(model: Self.className, key: key, reason: reason()) }
        }
        try require(!blockOutChannels.isEmpty && blockOutChannels.allSatisfy { $0 > 0 }, "block_out_channels",
                    "must be a non-empty list of positive sizes, got \(blockOutChannels)")
        try require(downBlockTypes.count == blockOutChannels.count, "down_block_types",
                    "has \(downBlockTypes.count) entries but block_out_channels has \(blockOutChannels.count)")
        try require(upBlockTypes.count == blockOutChannels.count, "up_block_types",
                    "has \(upBlockTypes.count) entries but block_out_channels has \(blockOutChannels.count)")
        try require(inChannels > 0, "in_channels", "must be positive, got \(inChannels)")
        try require(outChannels > 0, "out_channels", "must be positive, got \(outChannels)")
        try require(latentChannels > 0, "latent_channels", "must be positive, got \(latentChannels)")
        try require(layersPerBlock > 0, "layers_per_block", "must be positive, got \(layersPerBlock)")
        try require(normGroupCount > 0, "norm_num_groups", "must be positive, got \(normGroupCount)")
        for channels in blockOutChannels where channels % normGroupCount != 0 {
            try require(false, "norm_num_groups", "\(normGroupCount) groups do not divide a group norm of \(channels) channels")
        }
        try require(scalingFactor != 0, "scaling_factor", "must not be zero")
        if let mean = latentsMean {
            try require(mean.count == latentChannels, "latents_mean", "has \(mean.count) entries for \(latentChannels) latent channels")
        }
        if let deviation = latentsStandardDeviation {
            try require(deviation.count == latentChannels, "latents_std",
                        "has \(deviation.count) entries for \(latentChannels) latent channels")
        }
        switch sampleSize {
        case .square(let side): try require(side > 0, "sample_size", "must be positive, got \(side)")
        case .rectangle(let height, let width): try require(height > 0 && width > 0, "sample_size", "must be positive, got [\(height), \(width)]")
        }
    }
}
