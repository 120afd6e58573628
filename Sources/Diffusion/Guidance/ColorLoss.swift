import Foundation
import Tensors

/// The colour loss of the notes: the mean absolute distance of an image's
/// pixels to a target RGB colour.
///
/// ```python
/// def color_loss(images, target_color=(0.1, 0.9, 0.5)):
///     target = torch.tensor(target_color).to(images.device) * 2 - 1
///     target = target[None, :, None, None]
///     return torch.abs(images - target).mean()
/// ```
///
/// Here the mean is taken per image (`[N]`), as every ``GuidanceLoss`` does.
public struct ColorLoss: GuidanceLoss {
    /// The target colour, each channel in [0, 1].
    public let red: Float, green: Float, blue: Float

    /// `colour loss`, for logs.
    public var name: String { "colour loss" }

    /// A target colour with channels in [0, 1].
    public init(red: Float, green: Float, blue: Float) {
        self.red = red
        self.green = green
        self.blue = blue
    }

    /// `#RRGGBB` (or `RRGGBB`) in hexadecimal.
    public init(hex: String) throws {
        var digits = hex.trimmingCharacters(in: .whitespaces)
        if digits.hasPrefix("#") { digits.removeFirst() }
        guard digits.count == 6, let value = UInt32(digits, radix: 16) else {
            throw GuidanceError("colour \"\(hex)\" is not #RRGGBB (six hexadecimal digits, e.g. #1AE680)")
        }
        self.init(red: Float((value >> 16) & 0xFF) / 255, green: Float((value >> 8) & 0xFF) / 255, blue: Float(value & 0xFF) / 255)
    }

    /// `#RRGGBB` of the target.
    public var hex: String {
        String(format: "#%02X%02X%02X", Int((red * 255).rounded()), Int((green * 255).rounded()), Int((blue * 255).rounded()))
    }

    /// The target in the model's range [-1, 1], shaped `[1, 3, 1, 1]`.
    public var target: Tensor { Tensor([red * 2 - 1, green * 2 - 1, blue * 2 - 1], shape: [1, 3, 1, 1]) }

    /// Mean |x0 − target| per image; x0 must have 3 channels.
    public func callAsFunction(_ predictedOriginal: Tensor) -> Tensor {
        precondition(predictedOriginal.rank == 4 && predictedOriginal.shape[1] == 3,
                     "ColorLoss: images must be [N, 3, H, W] (RGB), got \(predictedOriginal.shape)")
        return (predictedOriginal - target).abs().mean(axes: [1, 2, 3])
    }

    /// The mean per-image distance of finished samples (`[N, 3, H, W]`, in
    /// [-1, 1], clamped there first) to the target, in [0, 1] pixel units
    /// (half the loss, whose range is [-1, 1]): the measure of the guidance benchmark.
    public func meanDistance(_ samples: Tensor) -> Float {
        noGrad { (samples.clamped(min: -1, max: 1) - target).abs().mean().item / 2 }
    }
}
