import Foundation

/// `make demo` (`diffuse demo`): train a small class-conditional UNet on
/// Fashion-MNIST for a few minutes, then sample one row per class with
/// classifier-free guidance.
public enum DemoRun {
    /// The demo's settings.
    public struct Options: Sendable {
        /// Where everything goes.
        public var outputDir = "output/demo"
        /// Optimizer steps (batches of 64).
        public var steps = 600
        /// Images per class row of the final grid.
        public var perClass = 8
        /// Guidance scale of the final grid.
        public var guidanceScale = 3.0
        /// DDIM steps of the final grid.
        public var samplingSteps = 50
        /// Continue an interrupted demo instead of starting again.
        public var resume = false

        public init() {}
    }

    /// The training configuration of the demo.
    public static func configuration(_ options: Options) throws -> TrainingConfiguration {
        try TrainingConfiguration.load(yaml: """
            model: small
            dataset: fashion-mnist
            image_size: 28
            class_conditional: true
            condition_dropout: 0.1
            train_batch_size: 64
            max_train_steps: \(options.steps)
            learning_rate: 2.0e-3
            lr_scheduler: cosine
            lr_warmup_steps: 50
            beta_schedule: squaredcos_cap_v2
            use_ema: true
            ema_power: 0.75
            checkpointing_steps: 100
            checkpoints_total_limit: 2
            eval_batch_size: 20
            eval_scheduler: DDIMScheduler
            eval_inference_steps: 50
            guidance_scale: \(options.guidanceScale)
            seed: 0
            """, overrides: [
                ("output_dir", "\"\(options.outputDir)\""),
                (options.resume ? "resume_from_checkpoint" : "overwrite_output_dir", options.resume ? "latest" : "true"),
            ])
    }

    /// What the demo produced.
    public struct Outcome: Sendable {
        public let training: TrainingSummary
        /// Nil when the training was interrupted (Ctrl-C).
        public let sampling: SampleOutcome?

        /// What to tell a person.
        public var reportLines: [String] {
            var lines = training.reportLines
            if let sampling {
                lines.append("")
                lines.append("one row per class, classifier-free guidance:")
                lines += sampling.reportLines
            } else {
                lines.append("interrupted: continue with `diffuse demo --resume`")
            }
            return lines
        }
    }

    /// Trains, then samples `perClass` images of every class into `output_dir/demo-grid.png`
    /// (and its trace strip). `configure` may adjust the trainer (progress output, messages).
    public static func run(_ options: Options, configure: (Trainer) -> Void = { _ in }) throws -> Outcome {
        let trainer = try Trainer(configuration: configuration(options))
        configure(trainer)
        let training = try trainer.run()
        guard !training.interrupted else { return Outcome(training: training, sampling: nil) }
        return Outcome(training: training, sampling: try sample(options, classCount: trainer.classNames.count, progress: trainer.progressOutput != nil))
    }

    private static func sample(_ options: Options, classCount: Int, progress: Bool) throws -> SampleOutcome {
        var request = SampleRequest(pipeline: options.outputDir)
        request.scheduler = "DDIMScheduler"
        request.steps = options.samplingSteps
        request.classes = "0-\(classCount - 1)"
        request.count = classCount * options.perClass
        request.guidanceScale = options.guidanceScale
        request.seed = 1
        request.output = (options.outputDir as NSString).appendingPathComponent("demo-grid.png")
        request.traceEvery = options.samplingSteps / 10
        return try SampleRun.run(request, progressOutput: progress ? FileDescriptorOutput() : nil)
    }
}
