import Foundation

extension CLIPTraining {
    /// The tokenizer `diffuse train-clip` trains with.
    /// Fallback until `CLIPTokenizer` lands: a word tokenizer over the built-in dataset's words.
    public static func defaultTokenizer() throws -> CaptionTokenizing {
        let words = ["a", "an", "photo", "of", "on", "background"] + CaptionedTintedDataset.itemNames.flatMap { $0.split(separator: " ").map(String.init) }
            + NamedColor.allCases.map(\.name)
        return WordTokenizer(words: words)
    }
}
