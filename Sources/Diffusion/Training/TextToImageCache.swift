import Foundation
import NN
import Tensors

/// The frozen VAE's posterior of every training image, computed once: its mean and
/// standard deviation `[count, latentChannels, h, w]` (and those of the horizontally
/// flipped image with `random_flip`). A training step samples it afresh,
/// `mean + std · ε` with the trainer's generator, as `latent_dist.sample()` does in
/// diffusers' scripts, or takes the mean.
public final class TextToImageLatentCache {
    /// Posterior means and standard deviations, `[count, c, h, w]`.
    public let mean: Tensor, standardDeviation: Tensor
    /// The same for the flipped images (nil without `random_flip`).
    public let flippedMean: Tensor?, flippedStandardDeviation: Tensor?
    /// Examples cached.
    public var count: Int { mean.shape[0] }

    public init(mean: Tensor, standardDeviation: Tensor, flippedMean: Tensor? = nil, flippedStandardDeviation: Tensor? = nil) {
        self.mean = mean
        self.standardDeviation = standardDeviation
        self.flippedMean = flippedMean
        self.flippedStandardDeviation = flippedStandardDeviation
    }

    /// Encodes every image of `dataset` (through `transform`, then flipped too when `flips`) with `vae`, `chunk` at a time;
    /// returns the cache and every example's caption.
    public static func encode(_ dataset: Dataset, vae: AutoencoderKL, transform: ImageTransform?, flips: Bool,
                              chunk: Int = 64) throws -> (cache: TextToImageLatentCache, captions: [String?]) {
        var captions: [String?] = []
        var means: [Tensor] = [], deviations: [Tensor] = [], flippedMeans: [Tensor] = [], flippedDeviations: [Tensor] = []
        var unused = RandomGenerator(seed: 0)
        var start = 0
        while start < dataset.count {
            let end = Swift.min(dataset.count, start + chunk)
            var images: [Tensor] = []
            for index in start..<end {
                let example = try dataset.example(at: index)
                captions.append(example.caption)
                images.append(transform.map { $0.apply(example.image, generator: &unused) } ?? example.image)
            }
            let batch = Tensor.stack(images, axis: 0)
            noGrad {
                let posterior = vae.encode(batch)
                means.append(posterior.mean.contiguous())
                deviations.append(posterior.standardDeviation.contiguous())
                if flips {
                    let flipped = Tensor.stack(images.map { HorizontalFlip().apply($0, generator: &unused) }, axis: 0)
                    let other = vae.encode(flipped)
                    flippedMeans.append(other.mean.contiguous())
                    flippedDeviations.append(other.standardDeviation.contiguous())
                }
            }
            start = end
        }
        let cache = TextToImageLatentCache(
            mean: Tensor.concatenate(means, axis: 0), standardDeviation: Tensor.concatenate(deviations, axis: 0),
            flippedMean: flips ? Tensor.concatenate(flippedMeans, axis: 0) : nil,
            flippedStandardDeviation: flips ? Tensor.concatenate(flippedDeviations, axis: 0) : nil)
        return (cache, captions)
    }

    /// The posterior means and deviations of examples `indices`, the flipped image's where `flipped` says.
    public func posterior(_ indices: [Int], flipped: [Bool]) -> (mean: Tensor, standardDeviation: Tensor) {
        noGrad {
            guard let flippedMean, let flippedStandardDeviation, flipped.contains(true) else {
                return (mean.indexSelect(axis: 0, indices: indices), standardDeviation.indexSelect(axis: 0, indices: indices))
            }
            let rows = zip(indices, flipped).map { index, flip in
                flip ? (flippedMean.narrowed(axis: 0, start: index, length: 1), flippedStandardDeviation.narrowed(axis: 0, start: index, length: 1))
                     : (mean.narrowed(axis: 0, start: index, length: 1), standardDeviation.narrowed(axis: 0, start: index, length: 1))
            }
            return (Tensor.concatenate(rows.map(\.0), axis: 0), Tensor.concatenate(rows.map(\.1), axis: 0))
        }
    }
}

/// The frozen text encoder's output for every distinct caption (and the empty prompt),
/// computed once as diffusers' scripts compute `encoder_hidden_states`: the caption padded to
/// `model_max_length` (truncated) and the last hidden state, without an attention mask.
public final class TextToImagePromptCache {
    /// Caption → row of ``embeddings``.
    public let rows: [String: Int]
    /// `[captions, tokens, width]`.
    public let embeddings: Tensor

    /// Encodes `captions` (deduplicated; the empty prompt is always included) with `pipeline`'s text encoder, `chunk` at a time.
    public init(captions: [String], pipeline: StableDiffusionPipeline, chunk: Int = 64) throws {
        var unique: [String] = [""]
        var rows: [String: Int] = ["": 0]
        for caption in captions where rows[caption] == nil {
            rows[caption] = unique.count
            unique.append(caption)
        }
        var parts: [Tensor] = []
        var start = 0
        while start < unique.count {
            let end = Swift.min(unique.count, start + chunk)
            let encoded = try pipeline.encodePrompt(Array(unique[start..<end]), classifierFreeGuidance: false)
            parts.append(noGrad { encoded.prompt.contiguous() })
            start = end
        }
        self.rows = rows
        embeddings = Tensor.concatenate(parts, axis: 0)
    }

    /// The embeddings of `captions` (each must have been cached), `[count, tokens, width]`.
    public func embeddings(for captions: [String]) throws -> Tensor {
        let indices = try captions.map { caption -> Int in
            guard let row = rows[caption] else { throw TrainingError.data("the caption \"\(caption)\" was not cached") }
            return row
        }
        return noGrad { embeddings.indexSelect(axis: 0, indices: indices) }
    }
}
