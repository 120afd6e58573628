/// What a trainer does at the terminal: signal handlers that save a checkpoint on Ctrl-C, a
/// progress bar, and messages. Every trainer (pixel, text-to-image, VAE, CLIP) has the three.
public protocol TrainerReporting: AnyObject {
    /// Whether `run()` installs SIGINT/SIGTERM handlers that stop at the next step and save.
    var handleSignals: Bool { get set }
    /// Where the progress bar goes (`nil`: none).
    var progressOutput: ProgressOutput? { get set }
    /// Where messages (saved files, evaluations, warnings) go.
    var message: (String) -> Void { get set }
}

extension TrainerReporting {
    /// No signal handlers, no progress bar, no messages: for a trainer run inside another program
    /// (a server, a notebook-like tool, the tests).
    public func silence() {
        handleSignals = false
        progressOutput = nil
        message = { _ in }
    }
}

extension Trainer: TrainerReporting {}
extension TextToImageTrainer: TrainerReporting {}
extension VAETrainer: TrainerReporting {}
extension CLIPTrainer: TrainerReporting {}
