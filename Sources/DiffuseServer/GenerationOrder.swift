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

    /// The parameters as one line, A1111's `infotext` style.
    public var parameterLine: String {
        parameters.map { "\($0.key): \($0.value)" }.joined(separator: ", ")
    }
}
