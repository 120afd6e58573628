import Diffusion
import Foundation
import Tensors

/// Runs a job on its model's worker thread through the library's own runs
/// (``SampleRun`` and ``StableDiffusionRun``, as `diffuse sample` and `diffuse generate`).
enum JobRunner {
    struct Outcome {
        var state: JobState
        var images: [[UInt8]]
        var error: String?
    }

    static func run(_ job: Job, metrics: ServerMetrics) -> Outcome {
        let start = Date()
        var lastStep = start
        let order = job.order
        var report: SamplingGuidance.Report?
        /// Publishes one step; throws to stop a cancelled job.
        func stepped(index: Int, count: Int, timestep: Float, previews: () -> (String?, String?)) throws {
            let now = Date()
            metrics.stepsDone(1, seconds: now.timeIntervalSince(lastStep))
            lastStep = now
            let due = order.previewEvery > 0 && ((index + 1) % order.previewEvery == 0 || index + 1 == count)
            let (sample, predicted) = due ? previews() : (nil, nil)
            let guidance = report?.index == index ? report : nil
            job.record(StepProgress(step: index + 1, steps: count, timestep: timestep, sample: sample, predictedOriginal: predicted,
                                    stepsPerSecond: Double(index + 1) / Swift.max(now.timeIntervalSince(start), 1e-9),
                                    guidanceLoss: guidance?.loss.map(Double.init), logProbability: guidance?.logProbability.map(Double.init)))
            if job.isCancelRequested { throw Job.Cancelled() }
        }
        do {
            let pictures: [PixelImage]
            switch (order.work, job.model.pipeline) {
            case (.pixel(let request), .pixel(let pipeline)):
                let outcome = try SampleRun.run(request, pipeline: pipeline, onGuidance: { latest in
                    report = latest
                    // A log line every tenth step (the loss of every step is in its step event).
                    if latest.index % 10 == 0 || latest.index == latest.count - 1 { job.publish(.log(latest.line(lossName: "guidance loss"))) }
                }) { state in
                    try stepped(index: state.index, count: state.count, timestep: state.timestep) {
                        (PreviewImages.pixel(state.sample), PreviewImages.pixel(state.predictedOriginal))
                    }
                }
                pictures = outcome.images
            case (.text(let request, let initImage, let mask), .stableDiffusion(let pipeline)):
                let outcome = try StableDiffusionRun.generate(request, pipeline: pipeline, initImage: initImage, mask: mask,
                                                              log: { job.publish(.log($0)) }) { step in
                    try stepped(index: step.index, count: step.count, timestep: step.timestep) {
                        (PreviewImages.latent(step.latents), PreviewImages.latent(step.predictedOriginal))
                    }
                }
                pictures = outcome.images
            default:
                return Outcome(state: .failed, images: [], error: "the model \(job.model.name) cannot run this request")
            }
            let text = [(key: "parameters", value: order.parameterLine), (key: "Software", value: "Diffuse")]
            let files = try pictures.map { try PNG.encode($0, text: text) }
            return Outcome(state: .succeeded, images: files, error: nil)
        } catch is Job.Cancelled {
            return Outcome(state: .cancelled, images: [], error: nil)
        } catch {
            return Outcome(state: .failed, images: [], error: "\(error)")
        }
    }
}
