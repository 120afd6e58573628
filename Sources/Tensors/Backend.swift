import Foundation

/// Where tensors live and kernels run. Models only use `Tensor`'s ops; every op
/// reaches its kernel through this seam, so another device can be added
/// without touching them. Only the CPU exists today.
public enum Device: String, Sendable {
    case cpu
}

/// A description of the compute backend, for `diffuse info`.
public enum Backend {
    /// The active device.
    public static let device: Device = .cpu

    /// BLAS library and its configuration.
    public static var blas: String { Gemm.backendDescription }

    /// SIMD features this build was compiled for.
    public static var simdFeatures: String {
        var features: [String] = []
        #if arch(x86_64)
        features.append("x86_64")
        #endif
        #if arch(arm64)
        features.append("arm64 NEON")
        #endif
        // The kernel targets are compiled with -target-cpu haswell (AVX2, FMA, F16C).
        features.append("AVX2+FMA (haswell target)")
        features.append("SIMD8<Float> vector kernels")
        return features.joined(separator: ", ")
    }
}
