import Foundation
import Tensors

/// CLIP's pixel normalisation (openai's mean and standard deviation, as
/// transformers' `CLIPImageProcessor` applies them): an image in [-1, 1] is
/// taken to [0, 1], then each channel c becomes (x − mean_c) / std_c.
public struct CLIPImageNormalization: ImageTransform, Sendable {
    /// openai CLIP's `image_mean` and `image_std`.
    public static let meanValues: [Double] = [0.48145466, 0.4578275, 0.40821073]
    public static let standardDeviationValues: [Double] = [0.26862954, 0.26130258, 0.27577711]
    public static var mean: [Float] { meanValues.map { Float($0) } }
    public static var standardDeviation: [Float] { standardDeviationValues.map { Float($0) } }

    public init() {}

    public func apply(_ image: Tensor, generator: inout RandomGenerator) -> Tensor {
        Self.normalize(image)
    }

    /// `[3, H, W]` or `[B, 3, H, W]` in [-1, 1] → CLIP's `pixel_values`.
    public static func normalize(_ image: Tensor) -> Tensor {
        let channelAxis = image.rank - 3
        precondition(channelAxis >= 0 && image.shape[channelAxis] == 3, "CLIPImageNormalization: expected 3 channels, got \(image.shape)")
        var shape = [Int](repeating: 1, count: image.rank)
        shape[channelAxis] = 3
        let scale = Tensor(standardDeviation.map { 0.5 / $0 }, shape: shape)
        let offset = Tensor(zip(mean, standardDeviation).map { (0.5 - $0) / $1 }, shape: shape)
        return image * scale + offset
    }

    /// The transform a training image goes through: 3 channels, the shorter
    /// side resized to `size`, a centre crop, CLIP's normalisation.
    public static func transform(size: Int) -> ComposedTransform {
        ComposedTransform([ConvertChannels(3), Resize(shorterSide: size), CenterCrop(size), CLIPImageNormalization()])
    }

    /// transformers' `preprocessor_config.json` for a `CLIPImageProcessor` of
    /// `size`×`size` images (resize the shorter side, centre-crop, normalise).
    public static func preprocessorConfiguration(size: Int) -> JSONValue {
        .object([
            "crop_size": .object(["height": .int(size), "width": .int(size)]),
            "do_center_crop": .bool(true), "do_convert_rgb": .bool(true), "do_normalize": .bool(true),
            "do_rescale": .bool(true), "do_resize": .bool(true),
            "image_mean": .array(meanValues.map { .double($0) }),
            "image_processor_type": .string("CLIPImageProcessor"),
            "image_std": .array(standardDeviationValues.map { .double($0) }),
            "resample": .int(3), "rescale_factor": .double(1.0 / 255),
            "size": .object(["shortest_edge": .int(size)]),
        ])
    }

    /// Writes `preprocessor_config.json` into `folder`.
    public static func savePreprocessorConfiguration(size: Int, in folder: URL) throws {
        let text = JSONText.write(preprocessorConfiguration(size: size), indent: 2) + "\n"
        try text.write(to: folder.appendingPathComponent("preprocessor_config.json"), atomically: true, encoding: .utf8)
    }
}
