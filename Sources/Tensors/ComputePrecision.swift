import Foundation

/// The arithmetic of matrix products outside training.
public enum ComputePrecision: String, Sendable, CaseIterable {
    /// float32 everywhere (the default, and always while a graph is recorded).
    case float32
    /// Inference `linear` products and convolutions on bfloat16 inputs with float32
    /// accumulation (oneDNN's AVX512-BF16 kernels, `VDPBF16PS`; convolutions where they
    /// measure faster than the float32 Winograd kernels): about twice the float32 rate,
    /// at bfloat16's 8-bit mantissa (relative error of a product ~ 2⁻⁸ per input).
    /// Only where the CPU has AVX512-BF16; elsewhere requests fall back to float32.
    case bfloat16
}

/// The process-wide choice of ``ComputePrecision``: `DIFFUSE_COMPUTE=bf16` at start,
/// or `ComputeMode.precision = .bfloat16` in code. Gradients are never taken through
/// the bfloat16 path: an op that records a graph runs in float32.
public enum ComputeMode {
    /// What was asked for.
    public nonisolated(unsafe) static var requested: ComputePrecision = {
        switch ProcessInfo.processInfo.environment["DIFFUSE_COMPUTE"]?.lowercased() {
        case "bf16", "bfloat16": return .bfloat16
        default: return .float32
        }
    }() {
        didSet { invalidateWeightCopies() }
    }

    /// What runs: bfloat16 only where the CPU has bfloat16 dot products.
    public static var precision: ComputePrecision {
        get { requested == .bfloat16 && CPUFeatures.hasAVX512BF16 && BFloat16Linear.isAvailable ? .bfloat16 : .float32 }
        set { requested = newValue }
    }

    /// Tells the bfloat16 path that parameters were changed in place (optimizers
    /// call it after a step; `copyValues` does it itself), so it re-rounds them.
    public static func weightsChanged() {
        if requested == .bfloat16 { invalidateWeightCopies() }
    }

    /// Frees the bfloat16 paths' copies of weights now; they are made again when next used. The
    /// Stable Diffusion pipeline calls it after the denoising loop, so that the VAE decode's
    /// activations do not come on top of the UNet's convolution weights in oneDNN's layout (1.1 GB
    /// for Stable Diffusion 1.5), at the cost of making them again for the next image.
    public static func releaseWeightCopies() {
        if requested == .bfloat16 { invalidateWeightCopies() }
    }

    /// Drops the bfloat16 paths' copies of weights.
    private static func invalidateWeightCopies() {
        BFloat16Linear.invalidateWeights()
        BFloat16Convolution.invalidateWeights()
    }

    /// A line for `diffuse info`.
    public static var description: String {
        switch (requested, precision) {
        case (.bfloat16, .bfloat16): return "bfloat16 inference products and convolutions (oneDNN, AVX512-BF16)"
        case (.bfloat16, _): return "float32 (bfloat16 was asked for, but this CPU has no AVX512-BF16)"
        default: return "float32 (DIFFUSE_COMPUTE=bf16: bfloat16 inference products where the CPU has AVX512-BF16)"
        }
    }
}
