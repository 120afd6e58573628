import Diffusion
import Foundation

/// What jobs must share to run as one batch: the library's batch keys (everything but prompts, seeds, counts and classes).
enum JobBatchKey: Hashable {
    case pixel(SampleBatchKey)
    case text(StableDiffusionBatchKey)

    /// The key of every generation of `order`, or nil when one of them must run alone (guidance, image-to-image, LoRAs).
    /// Called on the model's worker thread only (it reads the pipeline).
    static func of(_ order: GenerationOrder, model: ServedModel) -> JobBatchKey? {
        var key: JobBatchKey?
        for member in order.members {
            let memberKey: JobBatchKey?
            switch (member, model.pipeline) {
            case (.pixel(let request), .pixel): memberKey = SampleRun.batchKey(request).map { .pixel($0) }
            case (.text(let request, nil, nil), .stableDiffusion(let pipeline)):
                memberKey = StableDiffusionRun.batchKey(request, pipeline: pipeline).map { .text($0) }
            default: memberKey = nil
            }
            guard let memberKey, key == nil || key == memberKey else { return nil }
            key = memberKey
        }
        return key
    }
}
