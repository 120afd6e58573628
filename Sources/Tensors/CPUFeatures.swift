import Foundation

/// What the processor this process runs on can do, read once at start from
/// `/proc/cpuinfo`'s `flags` (Linux): the basis of the run-time kernel choice.
public enum CPUFeatures {
    /// The `flags` of the first processor.
    public static let flags: Set<String> = {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return [] }
        for line in text.split(separator: "\n") where line.hasPrefix("flags") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
        }
        return []
    }()

    /// The model name of the first processor (`AMD EPYC`, …).
    public static let modelName: String = {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown" }
        for line in text.split(separator: "\n") where line.hasPrefix("model name") {
            if let colon = line.firstIndex(of: ":") { return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces) }
        }
        return "unknown"
    }()

    public static var hasAVX2: Bool { flags.contains("avx2") && flags.contains("fma") }
    public static var hasAVX512: Bool { flags.contains("avx512f") && flags.contains("avx512bw") && flags.contains("avx512vl") }
    /// Everything `x86-64-v4` (the AVX-512 kernels' build target) assumes: F, BW, CD, DQ, VL.
    public static var hasX86V4: Bool { hasAVX512 && flags.contains("avx512cd") && flags.contains("avx512dq") }
    /// `VDPBF16PS`: bfloat16 dot products with float32 accumulation.
    public static var hasAVX512BF16: Bool { hasAVX512 && flags.contains("avx512_bf16") }

    /// The vector extensions found, for `diffuse info`.
    public static var summary: String {
        var found: [String] = []
        if hasAVX2 { found.append("AVX2+FMA") }
        if hasAVX512 { found.append("AVX-512 (F, BW, VL\(flags.contains("avx512_vnni") ? ", VNNI" : ""))") }
        if hasAVX512BF16 { found.append("AVX512-BF16") }
        return found.isEmpty ? "no AVX2" : found.joined(separator: ", ")
    }
}

/// The instruction set Diffuse's own kernels run with, chosen once at start from the CPU:
/// AVX-512 where the CPU has it (the `TensorsAVX512` kernels, built for `x86-64-v4`), AVX2
/// otherwise. `DIFFUSE_ISA=avx2` forces the AVX2 kernels on any CPU.
public enum KernelSet: String, Sendable {
    case avx2
    case avx512

    /// What runs (tests may switch it, to compare both on one machine).
    public nonisolated(unsafe) static var current: KernelSet = best

    /// The best set this CPU supports, unless the environment forces AVX2.
    public static let best: KernelSet = {
        if ProcessInfo.processInfo.environment["DIFFUSE_ISA"]?.lowercased() == "avx2" { return .avx2 }
        return CPUFeatures.hasX86V4 ? .avx512 : .avx2
    }()

    /// Whether this CPU can run `set`.
    public static func isSupported(_ set: KernelSet) -> Bool {
        set == .avx2 || CPUFeatures.hasX86V4
    }

    /// A line for `diffuse info`.
    public static var description: String {
        switch current {
        case .avx512: return "AVX-512 (x86-64-v4 micro-kernels; DIFFUSE_ISA=avx2 forces AVX2)"
        case .avx2: return CPUFeatures.hasX86V4 ? "AVX2 (forced by DIFFUSE_ISA=avx2; this CPU has AVX-512)" : "AVX2 (this CPU has no AVX-512)"
        }
    }
}
