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
