import Foundation
import NN
import Tensors

/// `diffuse sample`: generate images from a pipeline folder and write a grid,
/// optionally the raw final tensor and a trace strip.
public struct SampleRequest: Sendable {
    /// The pipeline folder (diffusers layout).
    public var pipeline: String
    /// A scheduler to use instead of the folder's (class name or short name).
    public var scheduler: String?
    /// Inference steps (nil: 1000 for DDPM, 50 for the others).
    public var steps: Int?
    /// DDIM's η (0: deterministic).
    public var eta: Double?
    /// Seed of the starting noise and stochastic steps.
    public var seed: UInt64 = 0
    /// Images to generate (nil: from `--init-noise` or the class list, else 16).
    public var count: Int?
    /// Class labels as typed: `3`, `0,1,2`, `0-9`, or class names from `classes.json`;
    /// when `count` is a multiple of the list, each class is repeated in turn (one row per class).
    public var classes: String?
    /// Classifier-free guidance scale (0: unconditional, 1: plain conditional).
    public var guidanceScale: Double = 1
    /// The grid PNG (nil: no grid is written; the outcome's `images` hold the samples, as a server wants).
    public var output: String? = "samples.png"
    /// Images per grid row (nil: one row per class for a sorted class list, else 8).
    public var columns: Int?
    /// A safetensors file with unit-variance starting noise `[count, C, H, W]`.
    public var initNoise: String?
    /// Where to save the final samples (before conversion to pixels) as safetensors.
    public var saveTensor: String?
    /// Record x_t and the predicted x0 every this many steps into a strip (nil: no trace).
    public var traceEvery: Int?
    /// The trace strip PNG (nil: the grid's name with `-trace`).
    public var traceOutput: String?
    /// Loss guidance terms as typed: `color=#RRGGBB`, `clip=a red bag` (needs `clipModel`);
    /// several terms are lowered together (their losses added, CLIP terms times `clipWeight`).
    public var guides: [String] = []
    /// One loss guidance term (the first of `guides`).
    public var guide: String? {
        get { guides.first }
        set { guides = newValue.map { [$0] } ?? [] }
    }
    /// A transformers `CLIPModel` folder with its tokenizer files (`diffuse train-clip`'s output)
    /// for `clip=` guidance.
    public var clipModel: String?
    /// CLIP guidance: cut-outs per image and step.
    public var clipCutouts = 4
    /// CLIP guidance: the weight of CLIP terms beside colour terms.
    public var clipWeight: Double = 1
    /// The loss guidance scale.
    public var guideScale: Double = 40
    /// Where the loss guidance gradient is taken.
    public var guideMode: GuidanceMode = .shortcut
    /// A classifier folder from `diffuse train-classifier` for classifier guidance (nil: none).
    public var classifier: String?
    /// The classifier guidance scale (0: unguided).
    public var classifierScale: Double = 1
    /// Print the guidance loss every this many steps (0: never).
    public var guidanceReportEvery = 10

    public init(pipeline: String) { self.pipeline = pipeline }
}

/// What a sampling run wrote.
public struct SampleOutcome: Sendable {
    /// The grid written (nil when the request has no `output`).
    public let gridPath: String?
    public let tracePath: String?
    public let tensorPath: String?
    public let count: Int
    public let labels: [Int]?
    public let schedulerName: String
    public let steps: Int
    public let seconds: Double
    /// Class names from the pipeline's `classes.json` (or the classifier's).
    public let classNames: [String]
    /// What the guidance did, e.g. `colour guidance #1AE680, scale 40, shortcut: final colour loss 0.2412`.
    public let guidanceSummary: String?
    /// The samples as 8-bit images, one per sample, in order.
    public let images: [PixelImage]

    /// What to tell a person: what was sampled and where it went.
    public var reportLines: [String] {
        var lines = [String(format: "%d samples, %@, %d steps, %.1f s", count, schedulerName, steps, seconds)]
        if let labels {
            let described = labels.map { $0 < classNames.count ? "\($0) \(classNames[$0])" : "\($0)" }
            var unique: [String] = []
            for item in described where unique.last != item { unique.append(item) }
            lines.append("classes:     " + unique.joined(separator: ", "))
        }
        if let guidanceSummary { lines.append("guidance:    " + guidanceSummary) }
        if let gridPath { lines.append("grid:        \(gridPath)") }
        if let tracePath { lines.append("trace:       \(tracePath) (rows: x_t, predicted x0)") }
        if let tensorPath { lines.append("tensor:      \(tensorPath)") }
        return lines
    }
}

/// Runs a ``SampleRequest``.
public enum SampleRun {
    /// Loads the pipeline, samples and writes the files.
    /// - Parameters:
    ///   - progressOutput: where the live progress line goes (nil: none).
    ///   - log: receives the guidance loss lines printed every few steps.
    public static func run(_ request: SampleRequest, progressOutput: ProgressOutput? = nil, log: ((String) -> Void)? = nil) throws -> SampleOutcome {
        let start = Date()
        let pipeline = try DDPMPipeline.load(folder: URL(fileURLWithPath: request.pipeline))
        return try run(request, pipeline: pipeline, started: start, progressOutput: progressOutput, log: log)
    }

    /// Samples with a pipeline already loaded from `request.pipeline` (a server loads it once and
    /// runs many requests): the same checks, sampling and files as ``run(_:progressOutput:log:)``.
    /// The pipeline's scheduler is not changed: each run steps a fresh one built from its configuration.
    /// - Parameters:
    ///   - started: when the run began (for the outcome's seconds).
    ///   - onGuidance: the guidance reports (every `request.guidanceReportEvery` steps) as numbers.
    ///   - onStep: every step's x_t and predicted x0 (previews); throw to stop sampling (cancellation).
    public static func run(_ request: SampleRequest, pipeline: DDPMPipeline, started start: Date = Date(),
                           progressOutput: ProgressOutput? = nil, log: ((String) -> Void)? = nil,
                           onGuidance: ((SamplingGuidance.Report) -> Void)? = nil,
                           onStep: ((SamplingLoop.State) throws -> Void)? = nil) throws -> SampleOutcome {
        pipeline.unet.eval()
        var scheduler = try Schedulers.make(SchedulerNames.kind(type(of: pipeline.scheduler).className),
                                            configuration: pipeline.scheduler.configuration)
        if let name = request.scheduler {
            guard let kind = SchedulerNames.kind(name) else {
                throw GuidedSampler.RequestError("unknown scheduler \"\(name)\"; known: \(SchedulerNames.known)")
            }
            scheduler = try Schedulers.make(kind, configuration: pipeline.scheduler.configuration)
        }
        if let eta = request.eta {
            guard let ddim = scheduler as? DDIMScheduler else {
                throw GuidedSampler.RequestError("--eta applies to DDIMScheduler only; this run uses \(type(of: scheduler).className)")
            }
            ddim.eta = Float(eta)
        }
        let steps = request.steps ?? (scheduler is DDPMScheduler ? scheduler.trainTimesteps : 50)

        let noise = try request.initNoise.map(loadNoise)
        let classifier = try request.classifier.map { try NoiseAwareClassifier.load(folder: URL(fileURLWithPath: $0)) }
        let classNames = classifier?.configuration.classNames ?? PipelineClasses.load(from: request.pipeline)?.names ?? []
        if classifier != nil && request.classes == nil {
            throw GuidanceError("--classifier needs --class: the class(es) to steer towards")
        }
        var labels = try request.classes.map { try parseClasses($0, names: classNames) }
        let count = request.count ?? noise?.shape[0] ?? (labels.map { $0.count > 1 ? $0.count : nil } ?? nil) ?? 16
        guard count >= 1 else { throw GuidedSampler.RequestError("--count must be at least 1") }
        if let given = labels, given.count != count, count % given.count == 0 {
            // Each class repeated in turn: `--class 0-9 --count 80` is one row of 8 per class.
            labels = given.flatMap { Array(repeating: $0, count: count / given.count) }
        }

        var guidance: SamplingGuidance?
        var guidanceDescription: [String] = []
        if !request.guides.isEmpty {
            let loss = try guidanceLoss(request, channels: pipeline.unet.configuration.inChannels)
            guidance = SamplingGuidance(loss: LossGuidance(loss: loss, scale: Float(request.guideScale), mode: request.guideMode))
            guidanceDescription.append("\(request.guides.joined(separator: " + ")), scale \(request.guideScale), \(request.guideMode.rawValue)")
        }
        if let classifier, let labels {
            var combined = guidance ?? SamplingGuidance()
            combined.classifier = try ClassifierGuidance(classifier: classifier, labels: labels, scale: Float(request.classifierScale))
            guidance = combined
            guidanceDescription.append("classifier \(request.classifier ?? ""), scale \(request.classifierScale)")
        }
        guidance?.reportEvery = request.guidanceReportEvery
        // Class labels steer the UNet only when it is class-conditional; with a classifier they steer the classifier.
        let unetLabels = classifier != nil && GuidedSampler.nullClass(of: pipeline.unet) == nil ? nil : labels
        if unetLabels == nil && classifier != nil && request.guidanceScale != 1 {
            throw GuidanceError("--guidance-scale (classifier-free guidance) needs a class-conditional model; this one is unconditional, "
                                + "so only --classifier-scale applies")
        }

        var generator = RandomGenerator(seed: request.seed)
        let traceEvery = request.traceEvery.map { $0 > 0 ? $0 : Swift.max(1, steps / 10) }
        let bar = progressOutput.map { ProgressBar(total: steps, label: "sample", output: $0) }
        var lastReport: SamplingGuidance.Report?
        let lossName = guidance?.loss?.loss.name ?? "loss"
        let result = try GuidedSampler.sample(
            unet: pipeline.unet, scheduler: scheduler, count: count, steps: steps, labels: unetLabels,
            guidanceScale: Float(request.guidanceScale), initialNoise: noise, generator: &generator,
            guidance: guidance, onGuidance: { report in
                lastReport = report
                log?(report.line(lossName: lossName))
                onGuidance?(report)
            },
            traceEvery: traceEvery, onStep: { done, _ in bar?.update(step: done) }, onState: onStep)
        bar?.finish()
        var guidanceSummary: String?
        if !guidanceDescription.isEmpty {
            guidanceSummary = guidanceDescription.joined(separator: "; ")
            if let lastReport { guidanceSummary! += "; last step: " + lastReport.line(lossName: lossName) }
        }

        let columns = request.columns ?? labels.flatMap(rowLength) ?? Swift.min(8, count)
        if let output = request.output { try savePNG(result.samples, path: output, columns: columns) }
        var tensorPath: String?
        if let path = request.saveTensor {
            try Safetensors.save(["samples": result.samples], to: path, metadata: ["format": "pt"])
            tensorPath = path
        }
        var tracePath: String?
        if traceEvery != nil, let path = request.traceOutput ?? request.output.map(defaultTracePath),
           let strip = GuidedSampler.traceStrip(result.trace) {
            let clamped = noGrad { strip.images.clamped(min: -1, max: 1) }
            try PNG.write(makeGrid(images: clamped, columns: strip.columns), to: path)
            tracePath = path
        }
        return SampleOutcome(gridPath: request.output, tracePath: tracePath, tensorPath: tensorPath, count: count, labels: labels,
                             schedulerName: type(of: scheduler).className, steps: steps, seconds: Date().timeIntervalSince(start),
                             classNames: classNames, guidanceSummary: guidanceSummary,
                             images: (0..<count).map { PixelImage(tensor: result.samples.narrowed(axis: 0, start: $0, length: 1).contiguous()) })
    }

    /// The loss of a request's `--guide` terms: one term's loss, or their weighted sum.
    public static func guidanceLoss(_ request: SampleRequest, channels: Int) throws -> any GuidanceLoss {
        var clip: (model: CLIPModel, tokenizer: CLIPTokenizer)?
        var terms: [(loss: any GuidanceLoss, weight: Float)] = []
        for (index, text) in request.guides.enumerated() {
            let parts = text.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if parts.count == 2, parts[0].lowercased() == "clip" {
                let prompt = parts[1].trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
                if clip == nil { clip = try loadCLIP(request.clipModel) }
                guard let (model, tokenizer) = clip else { continue }
                let ids = try tokenizer.tokenize([prompt], maximumLength: model.configuration.text.maximumPositionEmbeddings)
                if ids.isTruncated(0) {
                    FileHandle.standardError.write(Data("warning: the CLIP prompt \"\(prompt)\" is longer than \(model.configuration.text.maximumPositionEmbeddings) tokens and was cut\n".utf8))
                }
                let loss = CLIPGuidanceLoss(model: model, prompt: prompt, promptIDs: ids.ids[0],
                                            cutouts: CLIPCutouts(count: request.clipCutouts), seed: request.seed &+ UInt64(index) &* 7919)
                terms.append((loss, Float(request.clipWeight)))
            } else {
                terms.append((try guidanceLoss(text, channels: channels), 1))
            }
        }
        return terms.count == 1 && terms[0].weight == 1 ? terms[0].loss : CombinedGuidanceLoss(terms)
    }

    /// The CLIP model and tokenizer of `--clip-model`.
    static func loadCLIP(_ path: String?) throws -> (CLIPModel, CLIPTokenizer) {
        guard let path else {
            throw GuidanceError("--guide clip=... needs --clip-model DIR: a transformers CLIPModel folder with its tokenizer "
                                + "(diffuse train-clip writes one)")
        }
        let folder = URL(fileURLWithPath: path)
        return (try CLIPModel.load(folder: folder), try CLIPTokenizer(contentsOf: folder))
    }

    /// The loss of one `--guide` term: `color=#RRGGBB` (or `colour=`), for an RGB model.
    public static func guidanceLoss(_ text: String, channels: Int) throws -> any GuidanceLoss {
        let parts = text.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.count == 2, ["color", "colour"].contains(parts[0].lowercased()) else {
            throw GuidanceError("--guide \"\(text)\" is not understood; the built-in guidance is color=#RRGGBB and clip=PROMPT "
                                + "(custom losses go through the Swift API: LossGuidance with a GuidanceLoss)")
        }
        guard channels == 3 else {
            throw GuidanceError("--guide color needs an RGB model; this model makes \(channels)-channel images")
        }
        return try ColorLoss(hex: parts[1])
    }

    /// `a.png` → `a-trace.png`.
    static func defaultTracePath(_ output: String) -> String {
        let url = URL(fileURLWithPath: output)
        let base = url.deletingPathExtension().lastPathComponent
        return url.deletingLastPathComponent().appendingPathComponent(base + "-trace.png").path
    }

    /// `3`, `0,1,2`, `0-9` or class names (`Sneaker,Bag`) into labels.
    public static func parseClasses(_ text: String, names: [String]) throws -> [Int] {
        var labels: [Int] = []
        for part in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !part.isEmpty {
            if let label = Int(part) {
                labels.append(label)
            } else if let dash = part.firstIndex(of: "-"), let low = Int(part[..<dash]), let high = Int(part[part.index(after: dash)...]), low <= high {
                labels.append(contentsOf: low...high)
            } else if let index = names.firstIndex(where: { $0.caseInsensitiveCompare(part) == .orderedSame }) {
                labels.append(index)
            } else {
                throw GuidedSampler.RequestError("--class \"\(part)\" is neither a class number nor a class name"
                                                 + (names.isEmpty ? "" : " (\(names.joined(separator: ", ")))"))
            }
        }
        guard !labels.isEmpty else { throw GuidedSampler.RequestError("--class needs at least one class") }
        return labels
    }

    /// The length of equal runs when labels come in equal runs of at least two classes (one row per class).
    static func rowLength(_ labels: [Int]) -> Int? {
        guard let first = labels.first else { return nil }
        let run = labels.prefix { $0 == first }.count
        guard run < labels.count, labels.count % run == 0 else { return nil }
        for start in stride(from: 0, to: labels.count, by: run) where Set(labels[start..<(start + run)]).count != 1 { return nil }
        return run
    }

    /// The starting noise of a safetensors file: the tensor named `noise`,
    /// `init_noise`, `latents` or `sample`, or its only tensor; `[C, H, W]` gets a batch axis.
    public static func loadNoise(_ path: String) throws -> Tensor {
        let tensors = try Safetensors.load(path: path, as: .float32)
        let preferred = ["noise", "init_noise", "latents", "sample"].compactMap { tensors[$0] }.first
        guard let tensor = preferred ?? (tensors.count == 1 ? tensors.values.first : nil) else {
            throw GuidedSampler.RequestError("\(path) holds \(tensors.keys.sorted()); name the noise tensor \"noise\" or keep only one")
        }
        switch tensor.rank {
        case 4: return tensor
        case 3: return tensor.reshaped([1] + tensor.shape)
        default: throw GuidedSampler.RequestError("the noise in \(path) has shape \(tensor.shape); expected [count, channels, height, width]")
        }
    }
}
