import Diffusion
import Foundation
import Tensors

/// Several started jobs of one model sampled in one batched run (``SampleRun/runBatch(_:pipeline:onStep:)`` or
/// ``StableDiffusionRun/generateBatch(_:pipeline:log:onStep:)``): each gets the images it would get alone, its own
/// step events and previews (of its own images); a cancelled job ends at the next step while the others go on
/// (its rows are computed to the end of the run, unless every job of the run is cancelled, which stops it).
enum JobBatch {
    static func run(_ jobs: [Job], metrics: ServerMetrics) {
        let start = Date()
        var lastStep = start
        var live = Array(repeating: true, count: jobs.count)
        var members: [GenerationOrder.Work] = []
        var owner: [Int] = []
        for (index, job) in jobs.enumerated() {
            for member in job.order.members {
                members.append(member)
                owner.append(index)
            }
        }
        /// The rows of job `index`: the union of its generations' rows (they are consecutive).
        func rows(of index: Int, in memberRows: [Range<Int>]) -> Range<Int> {
            let mine = memberRows.indices.filter { owner[$0] == index }.map { memberRows[$0] }
            return mine.first!.lowerBound..<mine.last!.upperBound
        }
        /// Publishes one step to every live job, ends the cancelled ones; throws when none is left.
        func stepped(index: Int, count: Int, timestep: Float, memberRows: [Range<Int>],
                     previews: (Range<Int>) -> (String?, String?)) throws {
            let now = Date()
            metrics.stepsDone(live.filter { $0 }.count, seconds: now.timeIntervalSince(lastStep))
            lastStep = now
            for (position, job) in jobs.enumerated() where live[position] {
                if job.isCancelRequested {
                    live[position] = false
                    job.finish(.cancelled, images: [], error: nil)
                    continue
                }
                let order = job.order
                let due = order.previewEvery > 0 && ((index + 1) % order.previewEvery == 0 || index + 1 == count)
                let (sample, predicted) = due ? previews(rows(of: position, in: memberRows)) : (nil, nil)
                job.record(StepProgress(step: index + 1, steps: count, timestep: timestep, sample: sample, predictedOriginal: predicted,
                                        stepsPerSecond: Double(index + 1) / Swift.max(now.timeIntervalSince(start), 1e-9),
                                        guidanceLoss: nil, logProbability: nil))
            }
            if !live.contains(true) { throw Job.Cancelled() }
        }
        func narrowed(_ tensor: Tensor, _ rows: Range<Int>) -> Tensor {
            noGrad { tensor.narrowed(axis: 0, start: rows.lowerBound, length: rows.count).contiguous() }
        }
        let images = jobs.reduce(0) { $0 + $1.order.count }
        jobs.forEach { $0.markBatched(images: images) }
        metrics.batchedRun(jobs: jobs.count, images: images)
        do {
            let pictures: [[PixelImage]]
            switch jobs[0].model.pipeline {
            case .pixel(let pipeline):
                let requests = members.compactMap { member -> SampleRequest? in
                    if case .pixel(let request) = member { return request }
                    return nil
                }
                pictures = try SampleRun.runBatch(requests, pipeline: pipeline) { step in
                    try stepped(index: step.index, count: step.count, timestep: step.timestep, memberRows: step.rows) { rows in
                        (PreviewImages.pixel(narrowed(step.sample, rows)), PreviewImages.pixel(narrowed(step.predictedOriginal, rows)))
                    }
                }
            case .stableDiffusion(let pipeline):
                let requests = members.compactMap { member -> StableDiffusionRequest? in
                    if case .text(let request, _, _) = member { return request }
                    return nil
                }
                let outputs = try StableDiffusionRun.generateBatch(requests, pipeline: pipeline, log: { position, line in
                    jobs[owner[position]].publish(.log(line))
                }) { step in
                    try stepped(index: step.index, count: step.count, timestep: step.timestep, memberRows: step.rows) { rows in
                        (PreviewImages.latent(narrowed(step.latents, rows)), PreviewImages.latent(narrowed(step.predictedOriginal, rows)))
                    }
                }
                pictures = outputs.map(\.images)
            }
            for (position, job) in jobs.enumerated() where live[position] {
                let mine = pictures.indices.filter { owner[$0] == position }.flatMap { pictures[$0] }
                do {
                    job.finish(.succeeded, images: try JobRunner.pngFiles(mine, order: job.order), error: nil)
                } catch {
                    job.finish(.failed, images: [], error: "\(error)")
                }
            }
        } catch is Job.Cancelled {
            for (position, job) in jobs.enumerated() where live[position] { job.finish(.cancelled, images: [], error: nil) }
        } catch {
            for (position, job) in jobs.enumerated() where live[position] { job.finish(.failed, images: [], error: "\(error)") }
        }
    }
}
