import Diffusion
import Foundation

/// What a served model can take.
public enum ServedModelKind: String, Sendable, Codable {
    /// A pixel-space UNet without conditioning (`diffuse sample`).
    case unconditional
    /// A pixel-space UNet with class embeddings (`diffuse sample --class`).
    case classConditional = "class-conditional"
    /// A Stable Diffusion pipeline (`diffuse generate`): prompts, image-to-image.
    case textToImage = "text-to-image"

    /// True when a prompt is what drives the model.
    public var takesPrompt: Bool { self == .textToImage }
}

/// The loaded pipeline of a served model. It is used by the model's worker thread only.
public enum ServedPipeline {
    case pixel(DDPMPipeline)
    case stableDiffusion(StableDiffusionPipeline)
}

/// A model the server loaded once, with what the API tells about it.
public final class ServedModel: @unchecked Sendable {
    /// The name requests use: the folder's last component.
    public let name: String
    /// The folder it was loaded from.
    public let folder: String
    /// Pixel models' class names (`classes.json`), or numbers for class-conditional models without names.
    public let classNames: [String]
    public let kind: ServedModelKind
    /// The image size it makes by default.
    public let width: Int
    public let height: Int
    /// Image channels (1 grey, 3 RGB).
    public let channels: Int
    /// The scheduler class stored in the folder.
    public let schedulerName: String
    /// The timesteps the model was trained on: the most inference steps it can take.
    public let trainingTimesteps: Int
    /// Only the worker thread touches this.
    let pipeline: ServedPipeline

    /// Wraps a loaded pipeline; `folder` is the path `SampleRequest.pipeline` names (for `classes.json`).
    public init(name: String, folder: String, pipeline: ServedPipeline) throws {
        self.name = name
        self.folder = folder
        self.pipeline = pipeline
        switch pipeline {
        case .pixel(let ddpm):
            let shape = try GuidedSampler.sampleShape(unet: ddpm.unet, count: 1)
            (channels, height, width) = (shape[1], shape[2], shape[3])
            if let null = GuidedSampler.nullClass(of: ddpm.unet) {
                kind = .classConditional
                let names = PipelineClasses.load(from: folder)?.names ?? []
                classNames = (0..<null).map { $0 < names.count ? names[$0] : String($0) }
            } else {
                kind = .unconditional
                classNames = []
            }
            schedulerName = type(of: ddpm.scheduler).className
            trainingTimesteps = ddpm.scheduler.trainTimesteps
        case .stableDiffusion(let sd):
            kind = .textToImage
            classNames = []
            (height, width) = sd.defaultSize
            channels = 3
            schedulerName = type(of: sd.scheduler).className
            trainingTimesteps = sd.scheduler.trainTimesteps
        }
    }

    /// Loads a folder: a Stable Diffusion pipeline when its `model_index.json` names one, else a pixel pipeline.
    public static func load(folder: String, name: String? = nil) throws -> ServedModel {
        let url = URL(fileURLWithPath: folder)
        let index = (try? String(contentsOf: url.appendingPathComponent("model_index.json"), encoding: .utf8)) ?? ""
        let isStableDiffusion = index.contains("StableDiffusion") || FileManager.default.fileExists(atPath: url.appendingPathComponent("text_encoder").path)
        let pipeline: ServedPipeline = isStableDiffusion
            ? .stableDiffusion(try StableDiffusionPipeline.load(folder: url))
            : .pixel(try DDPMPipeline.load(folder: url))
        return try ServedModel(name: name ?? url.standardizedFileURL.lastPathComponent, folder: folder, pipeline: pipeline)
    }
}
