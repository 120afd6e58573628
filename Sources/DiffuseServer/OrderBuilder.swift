import Diffusion
import Foundation

/// Checks ``GenerationFields`` against a model and the server's limits and builds the
/// ``SampleRequest`` or ``StableDiffusionRequest`` the command line would build.
enum OrderBuilder {
    static func make(_ fields: GenerationFields, model: ServedModel, limits: ServerLimits,
                     resources: ServerResources = ServerResources()) throws -> GenerationOrder {
        var parameters: [(key: String, value: String)] = []
        let steps = try fields.steps.map { try checked("steps", $0, 1...limits.maximumSteps, limit: "the server's --max-steps") }
        if let steps, steps > model.trainingTimesteps {
            throw APIError.badRequest("steps \(steps) is more than the \(model.trainingTimesteps) timesteps \(model.name) was trained on")
        }
        let count = try fields.count.map { try checked("count", $0, 1...limits.maximumCount, limit: "the server's --max-count") }
        let seed: UInt64
        if let given = fields.seed, given != -1 {
            guard given >= 0 else { throw APIError.badRequest("seed \(given) is negative; give -1 for a random seed, or 0 or more") }
            seed = UInt64(given)
        } else {
            seed = UInt64.random(in: 0..<(1 << 32))
        }
        var scheduler: String?
        if let name = fields.scheduler, let kind = SamplerNames.kind(name) {
            scheduler = kind.rawValue
        } else if let name = fields.scheduler, !["automatic", ""].contains(name.trimmingCharacters(in: .whitespaces).lowercased()) {
            throw APIError.badRequest("unknown sampler or scheduler \"\(name.prefix(80))\"; known: \(SamplerNames.known)")
        }
        let eta = try fields.eta.map { try finite("eta", $0, 0...1) }
        let guidanceScale = try fields.guidanceScale.map { try finite("guidance scale", $0, 0...100) }
        let previewEvery = try checked("preview_every", fields.previewEvery ?? 1, 0...limits.maximumSteps, limit: "the step limit")
        if let width = fields.width { _ = try checked("width", width, 8...limits.maximumWidth, limit: "the server's --max-width") }
        if let height = fields.height { _ = try checked("height", height, 8...limits.maximumHeight, limit: "the server's --max-height") }
        parameters.append(("Model", model.name))
        parameters.append(("Seed", String(seed)))

        switch model.kind {
        case .unconditional, .classConditional:
            if let prompt = fields.prompt, !prompt.isEmpty {
                throw APIError.badRequest("the model \(model.name) is \(model.kind == .unconditional ? "an unconditional" : "a class-conditional") "
                                          + "pixel model and cannot take a prompt" + (model.kind == .classConditional ? "; give classes instead" : ""))
            }
            if fields.initImage != nil { throw APIError.badRequest("the model \(model.name) is a pixel model and cannot take an init image") }
            if !fields.loras.isEmpty { throw APIError.badRequest("LoRAs are for Stable Diffusion models; \(model.name) is a pixel model") }
            if fields.clipGuidanceScale != nil {
                throw APIError.badRequest("clip_guidance_scale is Stable Diffusion CLIP guidance; pixel models take a guide \"clip=PROMPT\" with clip_model")
            }
            if fields.width.map({ $0 != model.width }) ?? false || fields.height.map({ $0 != model.height }) ?? false {
                throw APIError.badRequest("the model \(model.name) makes \(model.width)×\(model.height) images; width and height must be those or absent")
            }
            var request = SampleRequest(pipeline: model.folder)
            request.output = nil
            request.scheduler = scheduler
            request.steps = steps ?? 50
            request.eta = eta
            request.seed = seed
            request.count = count
            request.guidanceReportEvery = 1  // every step's loss goes into its event
            var classifierClasses: [String]?
            if let name = fields.classifier {
                let path = try ServerResources.path(name, in: resources.classifiers, kind: "classifier", option: "--classifier")
                let configuration: NoiseAwareClassifierConfiguration
                do {
                    configuration = try JSONDecoder().decode(NoiseAwareClassifierConfiguration.self,
                                                             from: Data(contentsOf: URL(fileURLWithPath: path + "/config.json")))
                } catch {
                    throw APIError.badRequest("the classifier \(name) cannot be read: \(error)")
                }
                guard configuration.inChannels == model.channels else {
                    throw APIError.badRequest("the classifier \(name) takes \(configuration.inChannels)-channel images; \(model.name) makes \(model.channels)")
                }
                guard configuration.sampleSize == model.width, configuration.sampleSize == model.height else {
                    throw APIError.badRequest("the classifier \(name) takes \(configuration.sampleSize)×\(configuration.sampleSize) images; "
                                              + "\(model.name) makes \(model.width)×\(model.height)")
                }
                guard fields.classes != nil else { throw APIError.badRequest("classifier guidance needs classes: the class(es) to steer towards") }
                classifierClasses = configuration.classNames
                request.classifier = path
                parameters.append(("Classifier", name))
            } else if fields.classifierScale != nil {
                throw APIError.badRequest("classifier_scale needs a classifier")
            }
            if let scale = fields.classifierScale { request.classifierScale = try finite("classifier scale", scale, 0...10_000) }
            if let classes = fields.classes {
                guard model.kind == .classConditional || classifierClasses != nil else {
                    throw APIError.badRequest("the model \(model.name) is unconditional and takes no classes (unless a classifier steers towards them)")
                }
                // With a classifier the labels are its classes (as `diffuse sample --classifier` reads them).
                let names = classifierClasses ?? model.classNames
                let labels: [Int]
                do { labels = try SampleRun.parseClasses(classes, names: names) } catch { throw APIError.badRequest("\(error)") }
                if let bad = labels.first(where: { $0 < 0 || $0 >= names.count }) {
                    throw APIError.badRequest("class \(bad) is outside the \(classifierClasses == nil ? "model" : "classifier")'s classes 0…\(names.count - 1)")
                }
                if model.kind == .classConditional, let bad = labels.first(where: { $0 >= model.classNames.count }) {
                    throw APIError.badRequest("class \(bad) is outside the model's classes 0…\(model.classNames.count - 1)")
                }
                _ = try checked("the number of classes", labels.count, 1...limits.maximumCount, limit: "the server's --max-count")
                if let count, count != labels.count, count % labels.count != 0 {
                    throw APIError.badRequest("count \(count) is not a multiple of the \(labels.count) classes given")
                }
                request.classes = classes
                request.count = count ?? labels.count
                parameters.append(("Classes", classes))
            } else {
                request.count = count ?? 1
            }
            if let guidanceScale {
                guard model.kind == .classConditional || guidanceScale == 1 else {
                    throw APIError.badRequest("guidance scale (classifier-free guidance) needs a class-conditional model; \(model.name) is unconditional")
                }
                request.guidanceScale = guidanceScale
            }
            for guide in fields.guides {
                let parts = guide.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                if parts.count == 2, parts[0].lowercased() == "clip" {
                    guard !parts[1].isEmpty else { throw APIError.badRequest("guide \"clip=\" has no prompt") }
                    continue
                }
                do { _ = try SampleRun.guidanceLoss(guide, channels: model.channels) } catch {
                    throw APIError.badRequest("guide \"\(guide.prefix(80))\": \(error)")
                }
            }
            request.guides = fields.guides
            let clipGuides = fields.guides.contains { $0.trimmingCharacters(in: .whitespaces).lowercased().hasPrefix("clip") }
            if let name = fields.clipModel {
                guard clipGuides else { throw APIError.badRequest("clip_model is used by a guide \"clip=PROMPT\" on pixel models; none is given") }
                let path = try ServerResources.path(name, in: resources.clipModels, kind: "CLIP model", option: "--clip-model")
                guard FileManager.default.fileExists(atPath: path + "/vocab.json") || FileManager.default.fileExists(atPath: path + "/tokenizer.json") else {
                    throw APIError.badRequest("the CLIP model \(name) has no tokenizer files, which clip= guides need")
                }
                request.clipModel = path
            } else if clipGuides {
                throw APIError.badRequest("a guide \"clip=PROMPT\" needs clip_model: one of the CLIP models the server was started with")
            }
            if let cutouts = fields.clipCutouts { request.clipCutouts = try checked("clip_cutouts", cutouts, 1...64, limit: "the cut-out limit") }
            if let scale = fields.guideScale { request.guideScale = try finite("guide scale", scale, 0...10_000) }
            if let mode = fields.guideMode {
                guard let parsed = GuidanceMode(rawValue: mode.lowercased()) else {
                    throw APIError.badRequest("guide mode \"\(mode.prefix(40))\" is not shortcut or full")
                }
                request.guideMode = parsed
            }
            parameters.insert(("Steps", String(request.steps!)), at: 0)
            parameters.append(("Size", "\(model.width)x\(model.height)"))
            if let scheduler { parameters.append(("Scheduler", scheduler)) }
            if request.guidanceScale != 1 { parameters.append(("CFG scale", String(request.guidanceScale))) }
            if !request.guides.isEmpty {
                parameters.append(("Guidance", request.guides.joined(separator: " + ")))
                parameters.append(("Guide scale", String(request.guideScale)))
            }
            return GenerationOrder(work: .pixel(request), previewEvery: previewEvery, seed: seed, parameters: parameters)

        case .textToImage:
            guard let prompt = fields.prompt else { throw APIError.badRequest("prompt is required for the text-to-image model \(model.name)") }
            if fields.classes != nil { throw APIError.badRequest("the model \(model.name) takes a prompt, not classes") }
            if fields.classifier != nil || fields.classifierScale != nil {
                throw APIError.badRequest("classifier guidance is for pixel models; \(model.name) is a Stable Diffusion model")
            }
            if !fields.guides.isEmpty { throw APIError.badRequest("colour guidance is for pixel models; \(model.name) is a Stable Diffusion model") }
            var request = StableDiffusionRequest(pipeline: model.folder, prompt: prompt)
            request.negativePrompt = fields.negativePrompt
            request.steps = steps ?? 20
            request.scheduler = scheduler
            request.eta = eta ?? 0
            request.seed = seed
            request.count = count ?? 1
            if let guidanceScale { request.guidanceScale = guidanceScale }
            if let rescale = fields.guidanceRescale { request.guidanceRescale = try finite("guidance rescale", rescale, 0...1) }
            if let skip = fields.clipSkip { request.clipSkip = try checked("clip_skip", skip, 0...11, limit: "the text encoder's layers") }
            for lora in fields.loras {
                let path = try ServerResources.path(lora.name, in: resources.loras, kind: "LoRA", option: "--lora")
                request.loras.append(LoRARequest(path: path, scale: Float(try finite("LoRA scale", lora.scale, -10...10))))
            }
            guard request.loras.count <= 8 else { throw APIError.badRequest("\(request.loras.count) LoRAs; at most 8") }
            if Set(fields.loras.map(\.name)).count != fields.loras.count { throw APIError.badRequest("a LoRA is named twice") }
            request.fuseLoRA = false
            if let name = fields.clipModel {
                let path = try ServerResources.path(name, in: resources.clipModels, kind: "CLIP model", option: "--clip-model")
                var options = StableDiffusionCLIPGuidanceOptions(model: path, scale: try finite("CLIP guidance scale", fields.clipGuidanceScale ?? 100, 0...10_000))
                options.prompt = fields.clipPrompt
                if let cutouts = fields.clipCutouts { options.cutouts = try checked("clip_cutouts", cutouts, 1...64, limit: "the cut-out limit") }
                request.clipGuidance = options
            } else if fields.clipGuidanceScale != nil || fields.clipPrompt != nil || fields.clipCutouts != nil {
                throw APIError.badRequest("CLIP guidance needs clip_model: one of the CLIP models the server was started with")
            }
            var initImage: PixelImage?, maskImage: PixelImage?
            if fields.mask != nil && fields.initImage == nil { throw APIError.badRequest("a mask needs an init image: the image to repaint part of") }
            if let encoded = fields.initImage {
                let image = try decodeImage(encoded, name: "init image")
                guard image.width <= limits.maximumWidth, image.height <= limits.maximumHeight else {
                    throw APIError.badRequest("the init image is \(image.width)×\(image.height); the server's limit is "
                                              + "\(limits.maximumWidth)×\(limits.maximumHeight) (--max-width, --max-height)")
                }
                guard image.width >= 8, image.height >= 8 else { throw APIError.badRequest("the init image is smaller than 8×8") }
                initImage = image
                if let encodedMask = fields.mask {
                    let mask = try decodeImage(encodedMask, name: "mask")
                    guard mask.width == image.width, mask.height == image.height else {
                        throw APIError.badRequest("the mask is \(mask.width)×\(mask.height) but the init image is \(image.width)×\(image.height); "
                                                  + "they must be the same size")
                    }
                    maskImage = mask
                }
                request.strength = try finite("denoising strength", fields.strength ?? 0.75, 0...1)
                if Int(Double(request.steps) * request.strength) < 1 {
                    throw APIError.badRequest("denoising strength \(request.strength) with \(request.steps) steps leaves no step to run")
                }
            } else {
                if let width = fields.width, width % 8 != 0 { throw APIError.badRequest("width \(width) is not a multiple of 8") }
                if let height = fields.height, height % 8 != 0 { throw APIError.badRequest("height \(height) is not a multiple of 8") }
                request.width = fields.width
                request.height = fields.height
            }
            parameters.insert(("Steps", String(request.steps)), at: 0)
            if let negative = request.negativePrompt { parameters.insert(("Negative prompt", negative), at: 0) }
            parameters.insert(("Prompt", prompt), at: 0)
            parameters.append(("CFG scale", String(request.guidanceScale)))
            parameters.append(("Size", "\(initImage?.width ?? request.width ?? model.width)x\(initImage?.height ?? request.height ?? model.height)"))
            if let scheduler { parameters.append(("Scheduler", scheduler)) }
            if initImage != nil { parameters.append(("Denoising strength", String(request.strength))) }
            if !fields.loras.isEmpty { parameters.append(("Lora", fields.loras.map { "\($0.name):\($0.scale)" }.joined(separator: " "))) }
            if let options = request.clipGuidance {
                parameters.append(("CLIP guidance", "\(fields.clipModel ?? ""), scale \(options.scale)"))
            }
            return GenerationOrder(work: .text(request, initImage: initImage, mask: maskImage), previewEvery: previewEvery, seed: seed, parameters: parameters)
        }
    }

    /// A base64 PNG or JPEG (optionally a `data:image/...;base64,` URL) decoded.
    static func decodeImage(_ text: String, name: String) throws -> PixelImage {
        var encoded = Substring(text)
        if encoded.hasPrefix("data:"), let comma = encoded.firstIndex(of: ",") { encoded = encoded[encoded.index(after: comma)...] }
        guard let data = Data(base64Encoded: String(encoded), options: .ignoreUnknownCharacters), !data.isEmpty else {
            throw APIError.badRequest("the \(name) is not base64")
        }
        let bytes = [UInt8](data)
        if PNG.hasSignature(bytes), bytes.count >= 24 {
            // The header's size, checked before decoding (a small file can claim a huge image).
            let width = bytes[16..<20].reduce(0) { $0 << 8 | Int($1) }, height = bytes[20..<24].reduce(0) { $0 << 8 | Int($1) }
            guard width <= 8192, height <= 8192 else { throw APIError.badRequest("the \(name) is \(width)×\(height): too large to decode") }
        }
        do {
            if PNG.hasSignature(bytes) { return try PNG.decode(bytes) }
            if JPEG.hasSignature(bytes) { return try JPEG.decode(bytes) }
        } catch {
            throw APIError.badRequest("the \(name) could not be decoded: \(error)")
        }
        throw APIError.badRequest("the \(name) is neither a PNG nor a JPEG")
    }

    static func checked(_ name: String, _ value: Int, _ range: ClosedRange<Int>, limit: String) throws -> Int {
        guard range.contains(value) else {
            throw APIError.badRequest("\(name) \(value) is outside \(range.lowerBound)…\(range.upperBound) (\(limit))")
        }
        return value
    }

    static func finite(_ name: String, _ value: Double, _ range: ClosedRange<Double>) throws -> Double {
        guard value.isFinite, range.contains(value) else {
            throw APIError.badRequest("\(name) \(value) is outside \(range.lowerBound)…\(range.upperBound)")
        }
        return value
    }
}
