import Foundation
import NN
import Tensors

/// What must be the same for text-to-image requests to share one batched sampling run
/// (``StableDiffusionRun/generateBatch(_:pipeline:log:onStep:)``): everything but the prompt, the negative
/// prompt, the seed and the count.
public struct StableDiffusionBatchKey: Hashable, Sendable {
    public let steps: Int
    public let scheduler: SchedulerKind?
    public let eta: Double
    public let guidanceScale: Double
    public let guidanceRescale: Double
    public let clipSkip: Int?
    public let height: Int
    public let width: Int
    public let karras: Bool
}

/// One step of a batched generation: the whole batch's tensors and where each request's rows are.
public struct StableDiffusionBatchStep {
    /// 0-based step number.
    public let index: Int
    /// Steps in the generation.
    public let count: Int
    /// The timestep the UNet was evaluated at.
    public let timestep: Float
    /// The latents after this step, `[all images, channels, h, w]`.
    public let latents: Tensor
    /// The scheduler's prediction of the clean latents.
    public let predictedOriginal: Tensor
    /// The rows of each request, in the order the requests were given.
    public let rows: [Range<Int>]
}

extension StableDiffusionRun {
    /// The key of a request that can share a batched run, or nil when it runs alone: image-to-image, inpainting,
    /// given latents, CLIP guidance, LoRAs and traces run alone.
    public static func batchKey(_ request: StableDiffusionRequest, pipeline: StableDiffusionPipeline) -> StableDiffusionBatchKey? {
        guard request.initImage == nil, request.mask == nil, request.initLatents == nil, request.clipGuidance == nil,
              request.loras.isEmpty, !request.trace, !pipeline.hasInpaintingUNet else { return nil }
        guard let inputs = try? check(request) else { return nil }
        return StableDiffusionBatchKey(steps: request.steps, scheduler: inputs.kind, eta: request.eta, guidanceScale: request.guidanceScale,
                                       guidanceRescale: request.guidanceRescale, clipSkip: request.clipSkip,
                                       height: request.height ?? pipeline.defaultSize.height, width: request.width ?? pipeline.defaultSize.width,
                                       karras: request.karras)
    }

    /// Generates several text-to-image requests with one UNet call per step, each request's images as
    /// ``generate(_:pipeline:initImage:mask:log:onStep:)`` makes them alone: each request's starting latents come
    /// from its own seed, and a stochastic scheduler's noise for its rows from its own generator, drawn in the
    /// order the lone run draws it. The requests must have equal ``batchKey(_:pipeline:)``s.
    ///
    /// The lone run's text-to-image branch of ``StableDiffusionPipeline/generate(_:generator:onStep:)``, with the
    /// prompt embeddings of each request (encoded alone, as its lone run does) stacked along the batch.
    /// - Parameter onStep: every step with each request's rows; throw to stop the whole run.
    public static func generateBatch(_ requests: [StableDiffusionRequest], pipeline: StableDiffusionPipeline,
                                     log: ((Int, String) -> Void)? = nil,
                                     onStep: ((StableDiffusionBatchStep) throws -> Void)? = nil) throws -> [StableDiffusionImages] {
        let start = Date()
        guard let first = requests.first else { return [] }
        guard let key = batchKey(first, pipeline: pipeline) else {
            throw StableDiffusionError("this request cannot be batched (image-to-image, given latents, CLIP guidance, LoRAs or a trace)")
        }
        for request in requests.dropFirst() where batchKey(request, pipeline: pipeline) != key {
            throw StableDiffusionError("requests of one batch must agree on everything but prompts, seeds and counts")
        }
        for request in requests { _ = try check(request) }
        var parameters = try self.parameters(for: first, pipeline: pipeline)
        parameters.imagesPerPrompt = 1
        let plan = try pipeline.check(parameters)
        let unet = pipeline.unet
        let guidance = key.guidanceScale > 1 && unet.configuration.timeConditionProjectionDimension == nil
        let embeddings = try requests.map { request in
            try pipeline.encodePrompt([request.prompt], negativePrompts: request.negativePrompt.map { [$0] }, imagesPerPrompt: request.count,
                                      classifierFreeGuidance: guidance, clipSkip: request.clipSkip)
        }
        for (position, embedding) in embeddings.enumerated() { embedding.warnings.forEach { log?(position, "warning: " + $0) } }
        let context = noGrad {
            Tensor.concatenate((guidance ? embeddings.map { $0.negative! } : []) + embeddings.map(\.prompt), axis: 0)
        }
        let scheduler = try pipeline.makeScheduler(key.scheduler, karras: key.karras)
        if let ddim = scheduler as? DDIMScheduler { ddim.eta = Float(key.eta) }
        let timesteps = try StableDiffusionPipeline.timesteps(scheduler: scheduler, parameters: parameters)
        // A second scheduler stepped on one image's zeros tells which steps draw noise (and that they draw one tensor).
        let probe = try pipeline.makeScheduler(key.scheduler, karras: key.karras)
        if let ddim = probe as? DDIMScheduler { ddim.eta = Float(key.eta) }
        _ = try StableDiffusionPipeline.timesteps(scheduler: probe, parameters: parameters)
        let imageShape = [pipeline.vae.configuration.latentChannels, plan.height / pipeline.vaeScaleFactor, plan.width / pipeline.vaeScaleFactor]
        let probeZeros = Tensor.zeros([1] + imageShape)

        var generators = requests.map { RandomGenerator(seed: $0.seed) }
        var rows: [Range<Int>] = []
        for request in requests { rows.append((rows.last?.upperBound ?? 0)..<((rows.last?.upperBound ?? 0) + request.count)) }
        let batch = rows.last!.upperBound
        let noise = (0..<requests.count).map { Tensor.randn([requests[$0].count] + imageShape, generator: &generators[$0]) }
        var latents = noGrad { Tensor.concatenate(noise, axis: 0) * scheduler.initNoiseSigma }
        let timestepCondition = unet.configuration.timeConditionProjectionDimension.map {
            StableDiffusionPipeline.guidanceScaleEmbedding(Float(key.guidanceScale - 1), dimension: $0, batch: batch)
        }
        let rescale = guidance ? Float(key.guidanceRescale) : 0
        let scale = Float(key.guidanceScale)
        for (index, timestep) in timesteps.enumerated() {
            let prediction = pipeline.guidedNoisePrediction(latents, timestep: timestep, scheduler: scheduler, context: context,
                                                            timestepCondition: timestepCondition, guidance: guidance, scale: scale, rescale: rescale)
            let stepNoise = try BatchedStepNoise.draw(probe: probe, zeros: probeZeros, timestep: timestep, shapes: requests.map { [$0.count] + imageShape },
                                                      generators: &generators)
            var unused = RandomGenerator(seed: 0)
            let result = noGrad { scheduler.step(prediction, timestep: timestep, sample: latents, noise: stepNoise, generator: &unused) }
            latents = result.prevSample
            try onStep?(StableDiffusionBatchStep(index: index, count: timesteps.count, timestep: timestep, latents: latents,
                                                 predictedOriginal: result.predOriginalSample, rows: rows))
        }
        let pictures = StableDiffusionImageProcessor.pixelImages(pipeline.decodeAfterDenoising(latents))
        let schedulerName = type(of: scheduler).className
        let seconds = Date().timeIntervalSince(start)
        return zip(rows, embeddings).map { range, embedding in
            StableDiffusionImages(images: Array(pictures[range]), schedulerName: schedulerName, steps: timesteps.count, seconds: seconds,
                                  warnings: embedding.warnings)
        }
    }
}
