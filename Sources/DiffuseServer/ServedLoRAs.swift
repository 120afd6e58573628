import Diffusion
import Foundation

/// A request's LoRAs attached to the served pipeline for its generation only: unfused (the weights are never
/// changed, so no rounding is left behind), and removed afterwards whatever happens.
enum ServedLoRAs {
    static func withLoRAs<Result>(_ request: StableDiffusionRequest, pipeline: StableDiffusionPipeline, log: @escaping (String) -> Void,
                                  _ body: () throws -> Result) throws -> Result {
        guard !request.loras.isEmpty else { return try body() }
        var unfused = request
        unfused.fuseLoRA = false
        defer { pipeline.unloadLoRA() }
        try StableDiffusionRun.applyLoRAs(unfused, to: pipeline, log: log)
        return try body()
    }
}
