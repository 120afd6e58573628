import Foundation
import Tensors

extension CaptionedTintedEvaluation {
    /// What the judges score on images a perfect model could draw: real test images of
    /// captioned tinted Fashion-MNIST (at the generation size), and the same images after a
    /// trip through the VAE (the best a latent model with this VAE can do). A sample score
    /// reads against these, not against 100%: the item judge is a grey Fashion-MNIST
    /// classifier that sees the colours undone by ``greyLevels(_:colors:side:)``.
    public struct Reference: Sendable {
        /// The judges on the real test images, and on their VAE reconstructions (posterior mean, decoded).
        public var testImages = Score(), reconstructions = Score()
    }

    /// Judges the first `count` test images of captioned tinted Fashion-MNIST (resized to
    /// `resolution` as the trainer does) and their reconstructions by `vae`.
    public static func reference(classifier: NoiseAwareClassifier, vae: AutoencoderKL, resolution: Int, count: Int) throws -> Reference {
        try reference(classifier: classifier, vae: vae, resolution: resolution,
                      dataset: CaptionedTintedDataset.fashionMNIST(training: false, limit: count))
    }

    /// Judges every image of `dataset` (resized to `resolution`) and its reconstruction by `vae`.
    public static func reference(classifier: NoiseAwareClassifier, vae: AutoencoderKL, resolution: Int,
                                 dataset: CaptionedTintedDataset, batchSize: Int = 100) throws -> Reference {
        let transform = ImageTransforms.standard(size: resolution, channels: 3)
        var generator = RandomGenerator(seed: 0)
        var reference = Reference()
        var start = 0
        while start < dataset.count {
            let indices = start..<Swift.min(dataset.count, start + batchSize)
            var prompts: [Prompt] = []
            var pixels: [Float] = []
            for index in indices {
                let example = try dataset.example(at: index)
                let description = try dataset.description(of: index)
                prompts.append(Prompt(label: description.label, foreground: description.foreground,
                                      background: description.background, heldOut: false))
                pixels += transform.apply(example.image, generator: &generator).toArray()
            }
            let images = Tensor(pixels, shape: [indices.count, 3, resolution, resolution])
            let reconstructed = noGrad { vae.decode(vae.encode(images).mean).clamped(min: -1, max: 1) }
            for (verdict, prompt) in zip(judge(images, classifier: classifier), prompts) { reference.testImages.add(verdict, for: prompt) }
            for (verdict, prompt) in zip(judge(reconstructed, classifier: classifier), prompts) {
                reference.reconstructions.add(verdict, for: prompt)
            }
            start = indices.upperBound
        }
        return reference
    }

    /// The table rows of a reference (same columns as ``table(_:)``).
    public static func tableRows(_ reference: Reference) -> [String] {
        [tableRow("–", "real test images", reference.testImages), tableRow("–", "VAE reconstructions", reference.reconstructions)]
    }

    /// The reference as JSON values.
    static func jsonObject(_ reference: Reference) -> [String: Any] {
        ["test_images": jsonScore(reference.testImages), "vae_reconstructions": jsonScore(reference.reconstructions)]
    }
}
