import Foundation
import NN
import Tensors

/// What must be the same for pixel sampling requests to share one batched run
/// (``SampleRun/runBatch(_:pipeline:onStep:)``): everything but the seed, the count and the class labels.
public struct SampleBatchKey: Hashable, Sendable {
    public let scheduler: SchedulerKind?
    public let steps: Int?
    public let eta: Double?
    public let guidanceScale: Double
    /// Whether the requests give class labels (a class-conditional model samples the others from the null class).
    public let hasClasses: Bool
}

/// One step of a batched sampling run: the whole batch's tensors and where each request's rows are.
public struct SampleBatchStep {
    /// 0-based step number.
    public let index: Int
    /// Steps in the run.
    public let count: Int
    /// The timestep the model was evaluated at.
    public let timestep: Float
    /// x_t before the step, `[all images, C, H, W]`.
    public let sample: Tensor
    /// The scheduler's prediction of x0.
    public let predictedOriginal: Tensor
    /// The rows of each request, in the order the requests were given.
    public let rows: [Range<Int>]
}

extension SampleRun {
    /// The key of a request that can share a batched run, or nil when it runs alone: loss guidance, classifier
    /// guidance, given noise, traces and saved tensors run alone.
    public static func batchKey(_ request: SampleRequest) -> SampleBatchKey? {
        guard request.guides.isEmpty, request.classifier == nil, request.initNoise == nil, request.traceEvery == nil,
              request.saveTensor == nil, request.output == nil else { return nil }
        var kind: SchedulerKind?
        if let name = request.scheduler {
            guard let named = SchedulerNames.kind(name) else { return nil }
            kind = named
        }
        return SampleBatchKey(scheduler: kind, steps: request.steps, eta: request.eta, guidanceScale: request.guidanceScale,
                              hasClasses: request.classes != nil)
    }

    /// Samples several requests with one model call per step, each request's images as
    /// ``run(_:pipeline:started:progressOutput:log:onGuidance:onStep:)`` makes them alone: each request's starting
    /// noise comes from its own seed, and a stochastic scheduler's noise for its rows from its own generator, drawn
    /// in the order the lone run draws it. The requests must have equal ``batchKey(_:)``s.
    /// - Parameter onStep: every step with each request's rows; throw to stop the whole run.
    /// - Returns: each request's images, in order.
    public static func runBatch(_ requests: [SampleRequest], pipeline: DDPMPipeline,
                                onStep: ((SampleBatchStep) throws -> Void)? = nil) throws -> [[PixelImage]] {
        guard let first = requests.first else { return [] }
        guard let key = batchKey(first) else {
            throw GuidedSampler.RequestError("this request cannot be batched (guidance, given noise, a trace or files to write)")
        }
        for request in requests.dropFirst() where batchKey(request) != key {
            throw GuidedSampler.RequestError("requests of one batch must agree on everything but seeds, counts and classes")
        }
        pipeline.unet.eval()
        func makeScheduler() throws -> any Scheduler {
            // As the lone run: a fresh scheduler of the folder's class, or of the one asked for, from the folder's configuration.
            let scheduler = try Schedulers.make(key.scheduler ?? SchedulerNames.kind(type(of: pipeline.scheduler).className),
                                                configuration: pipeline.scheduler.configuration)
            if let eta = key.eta {
                guard let ddim = scheduler as? DDIMScheduler else {
                    throw GuidedSampler.RequestError("--eta applies to DDIMScheduler only; this run uses \(type(of: scheduler).className)")
                }
                ddim.eta = Float(eta)
            }
            return scheduler
        }
        let scheduler = try makeScheduler()
        let probe = try makeScheduler()
        let steps = key.steps ?? (scheduler is DDPMScheduler ? scheduler.trainTimesteps : 50)
        let classNames = PipelineClasses.load(from: first.pipeline)?.names ?? []

        var labels: [Int]? = key.hasClasses ? [] : nil
        var counts: [Int] = []
        for request in requests {
            // The lone run's count and labels: a class list repeated in turn when the count is a multiple of it.
            var given = try request.classes.map { try parseClasses($0, names: classNames) }
            let count = request.count ?? (given.map { $0.count > 1 ? $0.count : nil } ?? nil) ?? 16
            guard count >= 1 else { throw GuidedSampler.RequestError("--count must be at least 1") }
            if let list = given, list.count != count, count % list.count == 0 {
                given = list.flatMap { Array(repeating: $0, count: count / list.count) }
            }
            if let given {
                guard given.count == count else {
                    throw GuidedSampler.RequestError("\(given.count) class labels for \(count) samples; give one label, or one per sample")
                }
                labels! += given
            }
            counts.append(count)
        }
        try GuidedSampler.checkLabels(labels, unet: pipeline.unet)
        var rows: [Range<Int>] = []
        for count in counts { rows.append((rows.last?.upperBound ?? 0)..<((rows.last?.upperBound ?? 0) + count)) }
        let imageShape = Array(try GuidedSampler.sampleShape(unet: pipeline.unet, count: 1).dropFirst())
        var generators = requests.map { RandomGenerator(seed: $0.seed) }
        let noise = (0..<requests.count).map { Tensor.randn([counts[$0]] + imageShape, generator: &generators[$0]) }

        try scheduler.setTimesteps(steps)
        try probe.setTimesteps(steps)
        let probeZeros = Tensor.zeros([1] + imageShape)
        let timesteps = scheduler.timesteps
        let scale = Float(key.guidanceScale)
        var sample = noGrad { Tensor.concatenate(noise, axis: 0) * scheduler.initNoiseSigma }
        for (index, timestep) in timesteps.enumerated() {
            let output = noGrad {
                GuidedSampler.conditionedOutput(unet: pipeline.unet, sample: scheduler.scaleModelInput(sample, timestep: timestep),
                                                timestep: timestep, labels: labels, guidanceScale: scale)
            }
            let stepNoise = try BatchedStepNoise.draw(probe: probe, zeros: probeZeros, timestep: timestep, shapes: counts.map { [$0] + imageShape },
                                                      generators: &generators)
            var unused = RandomGenerator(seed: 0)
            let result = noGrad { scheduler.step(output, timestep: timestep, sample: sample, noise: stepNoise, generator: &unused) }
            try onStep?(SampleBatchStep(index: index, count: timesteps.count, timestep: timestep, sample: sample,
                                        predictedOriginal: result.predOriginalSample, rows: rows))
            sample = result.prevSample
        }
        return rows.map { range in range.map { PixelImage(tensor: sample.narrowed(axis: 0, start: $0, length: 1).contiguous()) } }
    }
}
