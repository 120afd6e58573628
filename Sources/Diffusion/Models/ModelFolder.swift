import Foundation
import NN
import Tensors

/// Errors reading or writing a diffusers model or pipeline folder.
public enum ModelFolderError: Error, CustomStringConvertible, Equatable {
    /// A file the folder must have is not there.
    case missingFile(path: String, hint: String)
    /// `model_index.json` is malformed or names something Diffuse cannot load.
    case invalidModelIndex(path: String, reason: String)

    public var description: String {
        switch self {
        case .missingFile(let path, let hint): return "\(path) does not exist" + (hint.isEmpty ? "" : "; \(hint)")
        case .invalidModelIndex(let path, let reason): return "\(path): \(reason)"
        }
    }
}

/// File names of diffusers model folders.
public enum ModelFolder {
    /// `config.json`.
    public static let configurationName = "config.json"
    /// diffusers' weights base name.
    public static let weightsBaseName = "diffusion_pytorch_model"

    /// `diffusion_pytorch_model[.variant].safetensors`.
    public static func weightsName(variant: String?) -> String {
        weightsBaseName + (variant.map { ".\($0)" } ?? "") + ".safetensors"
    }

    /// diffusers' sharded index name: `diffusion_pytorch_model.safetensors.index[.variant].json`.
    public static func indexName(variant: String?) -> String {
        weightsBaseName + ".safetensors.index" + (variant.map { ".\($0)" } ?? "") + ".json"
    }

    /// The weights file (or sharded index) of `variant` in `folder`, with an
    /// error that lists the variants present when it is missing.
    public static func weightsPath(in folder: URL, variant: String?) throws -> String {
        let manager = FileManager.default
        for name in [weightsName(variant: variant), indexName(variant: variant)] {
            let path = folder.appendingPathComponent(name).path
            if manager.fileExists(atPath: path) { return path }
        }
        let contents = (try? manager.contentsOfDirectory(atPath: folder.path)) ?? []
        let pickle = contents.filter { $0.hasPrefix(weightsBaseName) && $0.hasSuffix(".bin") }
        if let first = pickle.first, !contents.contains(where: { $0.hasSuffix(".safetensors") }) {
            throw SafetensorsError.pickleCheckpoint(path: folder.appendingPathComponent(first).path)
        }
        let variants = contents.compactMap { name -> String? in
            guard name.hasPrefix(weightsBaseName + "."), name.hasSuffix(".safetensors") else { return nil }
            let middle = name.dropFirst(weightsBaseName.count + 1).dropLast(".safetensors".count)
            return middle.isEmpty ? nil : String(middle)
        }
        let hint = variants.isEmpty
            ? (contents.contains(weightsName(variant: nil)) ? "the folder has the plain weights; load without a variant" : "")
            : "the folder has the variant(s) \(variants.sorted().map { "\"\($0)\"" }.joined(separator: ", ")); pass variant:"
        throw ModelFolderError.missingFile(path: folder.appendingPathComponent(weightsName(variant: variant)).path, hint: hint)
    }

    /// The folder's `config.json`, with an error when it is missing.
    public static func configurationPath(in folder: URL) throws -> URL {
        let path = folder.appendingPathComponent(configurationName)
        guard FileManager.default.fileExists(atPath: path.path) else {
            throw ModelFolderError.missingFile(path: path.path, hint: "a diffusers model folder holds config.json and the weights")
        }
        return path
    }

    /// Loads `module`'s weights from the folder's weights file of `variant` (or its sharded index),
    /// held as `precision` says (16-bit values widened to `float32` by default). Strict: any missing,
    /// unexpected or mis-shaped parameter throws the `StateDictReport`; otherwise the report of what did not load.
    public static func loadWeights(into module: Module, folder: URL, variant: String?, strict: Bool,
                                   precision: WeightPrecision = .float32) throws -> StateDictReport {
        try module.loadSafetensors(path: try weightsPath(in: folder, variant: variant), strict: strict, precision: precision)
    }

    /// Builds a model about to be loaded: a strict load overwrites every parameter, so no initial
    /// values are drawn (``Initialization/withoutInitialValues(_:)``); a lenient one keeps them for
    /// the parameters the checkpoint lacks.
    public static func build<Model>(strict: Bool, _ make: () throws -> Model) rethrows -> Model {
        strict ? try Initialization.withoutInitialValues(make) : try make()
    }

    /// Writes a diffusers model folder: `config.json` as diffusers writes it and the weights as
    /// `diffusion_pytorch_model[.variant].safetensors` with `format: pt` metadata, stored as
    /// `dataType` (by default `float16` for the `fp16` variant, `bfloat16` for `bf16`, else `float32`).
    public static func save(_ module: Module, configuration: some ModelConfigurationFile, folder: URL, variant: String?,
                            dataType: DataType?) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try configuration.save(to: folder.appendingPathComponent(configurationName))
        let stored = dataType ?? (variant == "fp16" ? .float16 : variant == "bf16" ? .bfloat16 : nil)
        try module.saveSafetensors(path: folder.appendingPathComponent(weightsName(variant: variant)).path, dataType: stored)
    }
}

extension UNet2DModel {
    /// Loads a diffusers `UNet2DModel` folder: `config.json` and
    /// `diffusion_pytorch_model[.variant].safetensors` (or a sharded index).
    /// Half-precision weights (the `fp16` variant) are widened to `float32` unless `precision` keeps them.
    ///
    /// - Parameter strict: when true (the default) any missing, unexpected or
    ///   mis-shaped parameter throws a `StateDictReport` naming all of them.
    ///   When false, matching parameters load and the rest keep their random
    ///   initial values; read `loadReport` to see which.
    /// - Parameter precision: how the weights are held (16-bit ones mapped from the file with `.asStored`).
    public static func load(folder: URL, variant: String? = nil, strict: Bool = true, precision: WeightPrecision = .float32) throws -> UNet2DModel {
        let configuration = try UNet2DConfiguration.load(contentsOf: ModelFolder.configurationPath(in: folder))
        let model = try ModelFolder.build(strict: strict) { try UNet2DModel(configuration: configuration) }
        model.loadReport = try ModelFolder.loadWeights(into: model, folder: folder, variant: variant, strict: strict, precision: precision)
        return model
    }

    /// Writes a diffusers model folder: `config.json` as diffusers writes it and
    /// the weights as `diffusion_pytorch_model[.variant].safetensors` with
    /// `format: pt` metadata.
    ///
    /// - Parameter dataType: the stored type; by default `float16` for the
    ///   `fp16` variant, `bfloat16` for `bf16`, else `float32`.
    public func save(folder: URL, variant: String? = nil, dataType: DataType? = nil) throws {
        try ModelFolder.save(self, configuration: configuration, folder: folder, variant: variant, dataType: dataType)
    }
}

/// diffusers' `DDPMPipeline` (also `DDIMPipeline`, which has the same parts):
/// a `UNet2DModel` and a scheduler, stored as a folder with `model_index.json`,
/// `unet/` and `scheduler/scheduler_config.json`.
public final class DDPMPipeline {
    public let unet: UNet2DModel
    public var scheduler: any Scheduler
    /// `_class_name` of `model_index.json`.
    public var className: String

    public init(unet: UNet2DModel, scheduler: any Scheduler, className: String = "DDPMPipeline") {
        self.unet = unet
        self.scheduler = scheduler
        self.className = className
    }

    /// The pipeline classes whose folders this type reads.
    public static let supportedClassNames: Set<String> = ["DDPMPipeline", "DDIMPipeline"]

    /// Loads a pipeline folder saved by diffusers' `save_pretrained` (or by `save(folder:)`).
    ///
    /// `model_index.json` must name a supported pipeline, `unet` as
    /// `["diffusers", "UNet2DModel"]` and `scheduler` as a diffusers scheduler
    /// Diffuse implements; any other component is an error naming it.
    public static func load(folder: URL, variant: String? = nil, strict: Bool = true) throws -> DDPMPipeline {
        let indexURL = folder.appendingPathComponent("model_index.json")
        guard FileManager.default.fileExists(atPath: indexURL.path) else {
            throw ModelFolderError.missingFile(path: indexURL.path, hint: "a diffusers pipeline folder has model_index.json")
        }
        func invalid(_ reason: String) -> ModelFolderError { .invalidModelIndex(path: indexURL.path, reason: reason) }
        let root: JSONValue
        do {
            root = try JSONText.parse(String(contentsOf: indexURL, encoding: .utf8))
        } catch let error as JSONSyntaxError {
            throw invalid(error.description)
        }
        guard case .object(let members) = root else { throw invalid("not a JSON object") }
        guard case .string(let className)? = members["_class_name"] else { throw invalid("no \"_class_name\" string") }
        guard supportedClassNames.contains(className) else {
            throw invalid("pipeline class \"\(className)\" is not supported; supported: \(supportedClassNames.sorted().joined(separator: ", "))")
        }
        func component(_ key: String) throws -> String {
            guard case .array(let pair)? = members[key], pair.count == 2,
                  case .string(let library) = pair[0], case .string(let type) = pair[1] else {
                throw invalid("component \"\(key)\" must be [library, class], e.g. [\"diffusers\", \"UNet2DModel\"]")
            }
            guard library == "diffusers" else { throw invalid("component \"\(key)\" comes from \"\(library)\", not diffusers") }
            return type
        }
        for key in members.keys.sorted() where !key.hasPrefix("_") && key != "unet" && key != "scheduler" {
            throw invalid("component \"\(key)\" is not supported (a \(className) has unet and scheduler)")
        }
        let unetClass = try component("unet")
        guard unetClass == UNet2DConfiguration.className else { throw invalid("unet class \"\(unetClass)\" is not supported (UNet2DModel is)") }
        let schedulerClass = try component("scheduler")
        guard let kind = SchedulerKind(rawValue: schedulerClass) else {
            throw invalid("scheduler class \"\(schedulerClass)\" is not supported; supported: \(SchedulerKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let unet = try UNet2DModel.load(folder: folder.appendingPathComponent("unet"), variant: variant, strict: strict)
        let schedulerURL = folder.appendingPathComponent("scheduler").appendingPathComponent("scheduler_config.json")
        let scheduler = try Schedulers.load(contentsOf: schedulerURL, as: kind)
        return DDPMPipeline(unet: unet, scheduler: scheduler, className: className)
    }

    /// The `model_index.json` text diffusers writes for this pipeline.
    public var modelIndexJSON: String {
        let object: [String: JSONValue] = [
            "_class_name": .string(className),
            "_diffusers_version": .string(SchedulerConfiguration.diffusersVersion),
            "scheduler": .array([.string("diffusers"), .string(type(of: scheduler).className)]),
            "unet": .array([.string("diffusers"), .string(UNet2DConfiguration.className)]),
        ]
        return JSONText.write(.object(object), indent: 2) + "\n"
    }

    /// Writes the folder diffusers' `DDPMPipeline.from_pretrained` reads:
    /// `model_index.json`, `unet/` (see `UNet2DModel.save(folder:variant:dataType:)`)
    /// and `scheduler/scheduler_config.json`.
    public func save(folder: URL, variant: String? = nil, dataType: DataType? = nil) throws {
        let manager = FileManager.default
        try manager.createDirectory(at: folder, withIntermediateDirectories: true)
        try unet.save(folder: folder.appendingPathComponent("unet"), variant: variant, dataType: dataType)
        let schedulerFolder = folder.appendingPathComponent("scheduler")
        try manager.createDirectory(at: schedulerFolder, withIntermediateDirectories: true)
        try scheduler.saveConfiguration(to: schedulerFolder.appendingPathComponent("scheduler_config.json"))
        try modelIndexJSON.write(to: folder.appendingPathComponent("model_index.json"), atomically: true, encoding: .utf8)
    }

    /// Generates images as diffusers' `DDPMPipeline.__call__` does: standard
    /// normal noise of `[batchSize, inChannels, height, width]` (the
    /// configuration's `sample_size`, or `size`), `steps` scheduler steps with
    /// the UNet under `noGrad`, then `(x / 2 + 0.5)` clamped to [0, 1].
    public func callAsFunction(batchSize: Int = 1, steps: Int = 1000, size: (height: Int, width: Int)? = nil,
                               generator: inout RandomGenerator) throws -> Tensor {
        let configuration = unet.configuration
        var shape = [batchSize, configuration.inChannels]
        if let size {
            shape += [size.height, size.width]
        } else {
            switch configuration.sampleSize {
            case .square(let side)?: shape += [side, side]
            case .rectangle(let height, let width)?: shape += [height, width]
            case nil: throw UNet2DConfigurationError.invalid(key: "sample_size", reason: "is null; pass the image size")
            }
        }
        let unet = self.unet
        let images = try SamplingLoop.run(scheduler: scheduler, shape: shape, steps: steps, generator: &generator,
                                          model: { sample, timestep in unet(sample, timestep: timestep) })
        return noGrad { (images / 2 + 0.5).clamped(min: 0, max: 1) }
    }
}
