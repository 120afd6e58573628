import Diffusion

/// One generation, whichever API asked for it: the same request types the command line builds.
public struct GenerationOrder: Sendable {
    /// What runs on the model's worker.
    public enum Work: Sendable {
        /// `diffuse sample` on a pixel model (the request's `output` is nil: images stay in memory).
        case pixel(SampleRequest)
        /// `diffuse generate` on a Stable Diffusion model, with an init image for image-to-image.
        case text(StableDiffusionRequest, initImage: PixelImage?, mask: PixelImage?)
    }

    public var work: Work
    /// Send x_t / x0 previews every this many steps (0: none).
    public var previewEvery: Int
    /// The seed used (after `-1`, random, was settled).
    public var seed: UInt64
    /// The request's parameters as text, written into the result PNGs and shown in `info`.
    public var parameters: [(key: String, value: String)]
    /// Image i is made alone from seed + i (the AUTOMATIC1111 web UI's `batch_size` × `n_iter`), instead of all
    /// images from one seed (`diffuse generate --count`). Text-to-image only.
    public var seedPerImage = false

    public init(work: Work, previewEvery: Int, seed: UInt64, parameters: [(key: String, value: String)]) {
        self.work = work
        self.previewEvery = previewEvery
        self.seed = seed
        self.parameters = parameters
    }

    /// Steps the run will take (image-to-image may take fewer).
    public var steps: Int {
        switch work {
        case .pixel(let request): return request.steps ?? 50
        case .text(let request, _, _): return request.steps
        }
    }

    /// Images the run makes.
    public var count: Int {
        switch work {
        case .pixel(let request): return request.count ?? 1
        case .text(let request, _, _): return request.count
        }
    }

    /// The seed of each image: seed, seed + 1, … with ``seedPerImage``, else the one seed for all.
    public var allSeeds: [UInt64] {
        seedPerImage ? (0..<count).map { seed &+ UInt64($0) } : Array(repeating: seed, count: count)
    }

    /// The generations the job runs, in order: one per image with ``seedPerImage``, else the one request.
    var members: [Work] {
        guard seedPerImage, case .text(var request, let initImage, let mask) = work else { return [work] }
        let seeds = allSeeds
        request.count = 1
        return seeds.map { seed in
            request.seed = seed
            return .text(request, initImage: initImage, mask: mask)
        }
    }

    /// The parameters as one line, A1111's `infotext` style.
    public var parameterLine: String {
        parameters.map { "\($0.key): \($0.value)" }.joined(separator: ", ")
    }

    /// The parameters of image `index` (0-based) as one line: its own seed (``allSeeds``).
    public func parameterLine(image index: Int) -> String {
        let seeds = allSeeds
        let seed = index < seeds.count ? seeds[index] : seed
        return parameters.map { "\($0.key): \($0.key == "Seed" ? String(seed) : $0.value)" }.joined(separator: ", ")
    }
}
