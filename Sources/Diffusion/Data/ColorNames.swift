import Foundation

/// The colours the captioned tinted dataset paints with, each with a fixed
/// sRGB value chosen so that every pair stays distinguishable at 28×28
/// (and in a caption: one word each).
public enum NamedColor: String, CaseIterable, Sendable, Codable {
    case red, orange, yellow, green, blue, purple, pink, brown, black, white, grey

    /// The colour's channels in [0, 1] (red, green, blue).
    public var rgb: [Float] {
        let bytes: [Float]
        switch self {
        case .red: bytes = [220, 30, 30]
        case .orange: bytes = [255, 140, 0]
        case .yellow: bytes = [250, 220, 30]
        case .green: bytes = [30, 160, 50]
        case .blue: bytes = [30, 70, 220]
        case .purple: bytes = [130, 40, 170]
        case .pink: bytes = [255, 120, 190]
        case .brown: bytes = [120, 70, 30]
        case .black: bytes = [15, 15, 15]
        case .white: bytes = [245, 245, 245]
        case .grey: bytes = [128, 128, 128]
        }
        return bytes.map { $0 / 255 }
    }

    /// The word in captions (the raw value).
    public var name: String { rawValue }

    /// The named colour nearest to `rgb` (channels in [0, 1]), by Euclidean distance.
    public static func nearest(to rgb: [Float]) -> NamedColor {
        allCases.min { first, second in
            distance(first.rgb, rgb) < distance(second.rgb, rgb)
        }!
    }

    private static func distance(_ first: [Float], _ second: [Float]) -> Float {
        zip(first, second).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }
    }
}

/// English's indefinite article for a phrase ("an orange bag", "a red bag").
enum IndefiniteArticle {
    static func before(_ phrase: String) -> String {
        guard let first = phrase.lowercased().first else { return "a" }
        return "aeiou".contains(first) ? "an" : "a"
    }

    /// `phrase` with its article in front.
    static func with(_ phrase: String) -> String { "\(before(phrase)) \(phrase)" }
}
