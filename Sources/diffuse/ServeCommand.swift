import ArgumentParser
import DiffuseServer
import Foundation

/// `diffuse serve`: wiring from flags to `DiffuseServer`.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve pipeline folders over HTTP: Diffuse's API, the AUTOMATIC1111 and OpenAI image routes, and a page at /.",
        discussion: """
        Each MODEL folder (a pixel DDPM pipeline, class-conditional or not, or a Stable Diffusion pipeline) is loaded once and \
        gets one worker thread and a queue of --queue jobs (more are answered 429 with Retry-After). Routes: / (the page), \
        /healthz, /metrics, /openapi.json, /api/v1/models, /api/v1/jobs (POST, GET {id}, DELETE {id}, GET {id}/events as \
        server-sent events), /sdapi/v1/txt2img, img2img, progress, interrupt, samplers, sd-models, and /v1/images/generations. \
        With --api-key every route but /healthz needs Authorization: Bearer KEY (the page takes ?api_key=KEY). \
        Compatible waiting jobs (same model, size, steps, scheduler and guidance scale; no loss, classifier or CLIP guidance, \
        LoRA or init image) run as one batched sampling run of up to --max-batch images, each with the images it would get alone. \
        LoRAs, CLIP models and classifiers are given here and named by requests, never by path. \
        SIGTERM or SIGINT cancels the running jobs and exits.
        """)

    @Argument(help: "Pipeline folders to serve.") var models: [String]
    @Option(help: "The address to bind.") var host = "127.0.0.1"
    @Option(help: "The port.") var port = 7860
    @Option(help: "Require Authorization: Bearer KEY on every route but /healthz.") var apiKey: String?
    @Option(help: "Jobs waiting per model before 429.") var queue = 8
    @Option(help: "Largest width a request may ask for.") var maxWidth = 1024
    @Option(help: "Largest height a request may ask for.") var maxHeight = 1024
    @Option(help: "Most steps a request may ask for.") var maxSteps = 200
    @Option(help: "Most images one request may make.") var maxCount = 8
    @Option(help: "Largest request body in bytes.") var maxBody = 16 << 20
    @Option(help: "Most images one batched sampling run makes from compatible waiting jobs (1: every job runs alone).") var maxBatch = 8
    @Option(help: "A LoRA .safetensors file requests may name (by its file name without extension) in \"loras\"; repeatable.")
    var lora: [String] = []
    @Option(help: "A transformers CLIPModel folder requests may name in \"clip_model\" (CLIP guidance); repeatable.")
    var clipModel: [String] = []
    @Option(help: "A `diffuse train-classifier` folder requests may name in \"classifier\" (classifier guidance); repeatable.")
    var classifier: [String] = []

    func run() async throws {
        setvbuf(stdout, nil, _IOLBF, 0)  // the log lines as they happen, also into a file
        var limits = ServerLimits()
        limits.queueCapacity = queue
        limits.maximumWidth = maxWidth
        limits.maximumHeight = maxHeight
        limits.maximumSteps = maxSteps
        limits.maximumCount = maxCount
        limits.maximumBodyBytes = maxBody
        guard maxBatch >= 1 else { throw ValidationError("--max-batch must be at least 1") }
        limits.maximumBatch = maxBatch
        var resources = ServerResources()
        do {
            resources.loras = try ServerResources.named(lora, kind: "LoRA")
            resources.clipModels = try ServerResources.named(clipModel, kind: "CLIP model")
            resources.classifiers = try ServerResources.named(classifier, kind: "classifier")
        } catch let error as APIError {
            throw ValidationError(error.message)
        }
        var served: [ServedModel] = []
        for folder in models {
            let start = Date()
            do {
                let model = try ServedModel.load(folder: folder)
                print(String(format: "loaded %@ (%@, %d×%d) in %.1f s", model.name, model.kind.rawValue, model.width, model.height,
                             Date().timeIntervalSince(start)))
                served.append(model)
            } catch {
                throw ValidationError("cannot load \(folder): \(error)")
            }
        }
        let server = DiffuseServer(models: served, limits: limits, apiKey: apiKey, resources: resources)
        print("serving on http://\(host):\(port)/" + (apiKey == nil ? "" : " (Authorization: Bearer required)"))
        try await server.makeApplication(host: host, port: port).runService()
        server.shutdown()
    }
}
