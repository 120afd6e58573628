import Diffusion
import Foundation
import Tensors

/// Runs jobs on their model's worker thread through the library's own runs (``SampleRun`` and
/// ``StableDiffusionRun``, as `diffuse sample` and `diffuse generate`): one job alone, or several compatible
/// jobs as one batched run (``JobBatch``). It ends every job it is given.
enum JobRunner {
    struct Outcome {
        var state: JobState
        var images: [[UInt8]]
        var error: String?
    }

    /// Runs `jobs` (started, of one model): one job alone; several, or one of several images with a seed each, as one
    /// batched run when ``maximumBatch` allows and they share a ``JobBatchKey``.
    static func run(_ jobs: [Job], maximumBatch: Int, metrics: ServerMetrics) {
        guard let first = jobs.first else { return }
        if maximumBatch > 1, jobs.reduce(0, { $0 + $1.order.count }) <= maximumBatch, let key = JobBatchKey.of(first.order, model: first.model),
           jobs.count > 1 || first.order.members.count > 1,
           jobs.allSatisfy({ JobBatchKey.of($0.order, model: $0.model) == key }) {
            JobBatch.run(jobs, metrics: metrics)
            return
        }
        for job in jobs {
            let outcome = run(job, metrics: metrics)
            job.finish(outcome.state, images: outcome.images, error: outcome.error)
        }
    }

    /// Runs one job alone: its generations (one, or one per image with ``GenerationOrder/seedPerImage``) one after another.
    static func run(_ job: Job, metrics: ServerMetrics) -> Outcome {
        let start = Date()
        var lastStep = start
        let order = job.order
        let members = order.members
        var report: SamplingGuidance.Report?
        var stepsBefore = 0
        /// Publishes one step; throws to stop a cancelled job.
        func stepped(index: Int, count: Int, timestep: Float, previews: () -> (String?, String?)) throws {
            let now = Date()
            metrics.stepsDone(1, seconds: now.timeIntervalSince(lastStep))
            lastStep = now
            let due = order.previewEvery > 0 && ((index + 1) % order.previewEvery == 0 || index + 1 == count)
            let (sample, predicted) = due ? previews() : (nil, nil)
            let guidance = report?.index == index ? report : nil
            let done = stepsBefore + index + 1
            job.record(StepProgress(step: done, steps: count * members.count, timestep: timestep, sample: sample, predictedOriginal: predicted,
                                    stepsPerSecond: Double(done) / Swift.max(now.timeIntervalSince(start), 1e-9),
                                    guidanceLoss: guidance?.loss.map(Double.init), logProbability: guidance?.logProbability.map(Double.init)))
            if job.isCancelRequested { throw Job.Cancelled() }
        }
        do {
            var pictures: [PixelImage] = []
            for member in members {
                var memberSteps = 0
                switch (member, job.model.pipeline) {
                case (.pixel(let request), .pixel(let pipeline)):
                    let outcome = try SampleRun.run(request, pipeline: pipeline, onGuidance: { latest in
                        report = latest
                        // A log line every tenth step (the loss of every step is in its step event).
                        if latest.index % 10 == 0 || latest.index == latest.count - 1 { job.publish(.log(latest.line(lossName: "guidance loss"))) }
                    }) { state in
                        memberSteps = state.count
                        try stepped(index: state.index, count: state.count, timestep: state.timestep) {
                            (PreviewImages.pixel(state.sample), PreviewImages.pixel(state.predictedOriginal))
                        }
                    }
                    pictures += outcome.images
                case (.text(let request, let initImage, let mask), .stableDiffusion(let pipeline)):
                    let outcome = try ServedLoRAs.withLoRAs(request, pipeline: pipeline, log: { job.publish(.log($0)) }) {
                        try StableDiffusionRun.generate(request, pipeline: pipeline, initImage: initImage, mask: mask,
                                                        log: { job.publish(.log($0)) }) { step in
                            memberSteps = step.count
                            try stepped(index: step.index, count: step.count, timestep: step.timestep) {
                                (PreviewImages.latent(step.latents), PreviewImages.latent(step.predictedOriginal))
                            }
                        }
                    }
                    pictures += outcome.images
                default:
                    return Outcome(state: .failed, images: [], error: "the model \(job.model.name) cannot run this request")
                }
                stepsBefore += memberSteps
            }
            return Outcome(state: .succeeded, images: try pngFiles(pictures, order: order), error: nil)
        } catch is Job.Cancelled {
            return Outcome(state: .cancelled, images: [], error: nil)
        } catch {
            return Outcome(state: .failed, images: [], error: "\(error)")
        }
    }

    /// The PNG files of a job's images, each with its own parameters (its seed) in a `parameters` text chunk.
    static func pngFiles(_ pictures: [PixelImage], order: GenerationOrder) throws -> [[UInt8]] {
        try pictures.enumerated().map { index, picture in
            try PNG.encode(picture, text: [(key: "parameters", value: order.parameterLine(image: index)), (key: "Software", value: "Diffuse")])
        }
    }
}
