import Foundation
import NN
import Tensors

/// Trainable LoRA adapters as `train_text_to_image_lora.py` adds them: PEFT's
/// `LoraConfig(r, lora_alpha, init_lora_weights="gaussian", target_modules=…)`, so A is
/// normal with standard deviation 1/r and B is zero (the adapted model starts as the base).
public enum TextToImageLoRA {
    /// The UNet's adapted projections (the script's `target_modules`).
    public static let unetTargets = ["to_q", "to_k", "to_v", "to_out.0"]
    /// The text encoder's (diffusers' `train_dreambooth_lora.py` `--train_text_encoder`).
    public static let textEncoderTargets = ["q_proj", "k_proj", "v_proj", "out_proj"]
    /// The adapter name the trainer attaches and saves.
    public static let adapterName = "default"

    /// Attaches a new adapter to every `Linear` of `module` whose PEFT target name is in `targets`,
    /// in path order, drawing A from `generator`; returns the adapters by layer path.
    @discardableResult
    public static func attach(to module: Module, targets: [String], rank: Int, alpha: Float,
                              generator: inout RandomGenerator) -> [(path: String, adapter: LoRAAdapter)] {
        var attached: [(String, LoRAAdapter)] = []
        for (path, linear) in module.linearLayersByPath().sorted(by: { $0.key < $1.key })
        where targets.contains(StableDiffusionPipeline.targetName(path)) {
            let down = Tensor.randn([rank, linear.inFeatures], generator: &generator) * (1 / Float(rank))
            let up = Tensor.zeros([linear.outFeatures, rank])
            down.requiresGrad = true
            up.requiresGrad = true
            let adapter = LoRAAdapter(down: down, up: up, alpha: alpha, name: adapterName)
            linear.attachLoRA(adapter)
            attached.append((path, adapter))
        }
        return attached
    }

    /// The adapters named ``adapterName`` on `module`'s layers, by layer path (sorted).
    public static func adapters(of module: Module) -> [(path: String, adapter: LoRAAdapter)] {
        module.linearLayersByPath().sorted(by: { $0.key < $1.key }).compactMap { path, linear in
            linear.loraAdapters.first { $0.name == adapterName }.map { (path, $0) }
        }
    }

    /// The adapters' factors under PEFT's keys (`<layer>.lora_A.weight`, `<layer>.lora_B.weight`),
    /// prefixed with `prefix` (for checkpoints).
    public static func stateDict(_ adapters: [(path: String, adapter: LoRAAdapter)], prefix: String) -> [String: Tensor] {
        var tensors: [String: Tensor] = [:]
        for (path, adapter) in adapters {
            tensors["\(prefix)\(path).lora_A.weight"] = adapter.down
            tensors["\(prefix)\(path).lora_B.weight"] = adapter.up
        }
        return tensors
    }

    /// Copies factors saved by ``stateDict(_:prefix:)`` back into the adapters.
    public static func load(_ tensors: [String: Tensor], into adapters: [(path: String, adapter: LoRAAdapter)], prefix: String) throws {
        for (path, adapter) in adapters {
            for (key, tensor) in [("lora_A.weight", adapter.down), ("lora_B.weight", adapter.up)] {
                guard let stored = tensors["\(prefix)\(path).\(key)"], stored.shape == tensor.shape else {
                    throw TrainingError.corruptCheckpoint("no \(prefix)\(path).\(key) of shape \(tensor.shape) (was it written with another --rank?)")
                }
                noGrad { tensor.copyValues(from: stored) }
            }
        }
    }
}
