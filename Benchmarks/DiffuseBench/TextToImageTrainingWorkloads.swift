// Text-to-image training rows of `make bench` (issue #20): the step of diffusers'
// `train_text_to_image.py` and `train_text_to_image_lora.py` with the VAE's latents and the
// text encoder's output cached, so a step is the UNet's forward and backward, the MSE to
// the noise and an AdamW update. torch_bench.py builds the same with diffusers (and peft).
import Diffusion
import Foundation
import NN
import Tensors

/// The small text-to-image UNet of `diffuse demo --text`: 4×8×8 latents (a 32×32 image through
/// a VAE of factor 4), blocks (64, 128, 128), CrossAttnDown, CrossAttnDown, Down / Up, CrossAttnUp,
/// CrossAttnUp, 8 heads, context width 128, 2 layers per block, 32 norm groups.
func smallTextToImageConfiguration() -> UNet2DConditionConfiguration {
    var configuration = UNet2DConditionConfiguration()
    configuration.sampleSize = .square(8)
    configuration.blockOutChannels = [64, 128, 128]
    configuration.downBlockTypes = [.crossAttentionDownBlock, .crossAttentionDownBlock, .downBlock]
    configuration.upBlockTypes = [.upBlock, .crossAttentionUpBlock, .crossAttentionUpBlock]
    configuration.crossAttentionDimension = .uniform(128)
    configuration.attentionHeadDimension = .uniform(8)
    configuration.layersPerBlock = .uniform(2)
    configuration.normGroupCount = 32
    return configuration
}

/// `sd-small-train-b32`: one full training step of the small UNet at batch 32 on cached
/// latents and a cached 77×128 context (CLIP's full padded length), all parameters trained by AdamW.
func smallTextToImageTraining() -> Workload {
    Workload(name: "sd-small-train-b32") {
        Initialization.seed(0)
        let model = try! UNet2DConditionModel(configuration: smallTextToImageConfiguration())
        model.train()
        let optimizer = Adam.adamW(parameters: model.parameters(), learningRate: 1e-4)
        var draws = RandomGenerator(seed: 6)
        let batch = 32
        let latents = Tensor.randn([batch, 4, 8, 8], generator: &draws)
        let noise = Tensor.randn([batch, 4, 8, 8], generator: &draws)
        let context = Tensor.randn([batch, 77, 128], generator: &draws)
        let timesteps = (0..<batch).map { _ in Float(draws.integer(below: 1000)) }
        return {
            let prediction = model(latents + noise, timesteps: timesteps, encoderHiddenStates: context)
            let loss = Tensor.mseLoss(prediction, noise)
            loss.backward()
            optimizer.step()
            optimizer.zeroGradients()
        }
    }
}

/// Attaches a new rank-`rank` adapter (alpha = rank) to every `to_q`, `to_k`, `to_v` and
/// `to_out.0` of `model` (peft's `LoraConfig(target_modules=[...])`) and returns the adapters.
func attachAttentionLoRA(_ model: Module, rank: Int) -> [LoRAAdapter] {
    var adapters: [LoRAAdapter] = []
    for (path, module) in model.namedModules() {
        guard let linear = module as? Linear, ["to_q", "to_k", "to_v", "to_out.0"].contains(where: { path.hasSuffix(".\($0)") }) else { continue }
        let adapter = LoRAAdapter(inFeatures: linear.inFeatures, outFeatures: linear.outFeatures, rank: rank)
        linear.attachLoRA(adapter)
        adapters.append(adapter)
    }
    return adapters
}

/// `sd15-lora-train-256`: one LoRA training step of Stable Diffusion 1.5's UNet (random weights,
/// frozen) at 256×256 (4×32×32 latents), batch 1, 77×768 context, rank-4 adapters on the attention
/// projections trained by AdamW, gradient checkpointing on.
func stableDiffusion15LoRATraining() -> Workload {
    Workload(name: "sd15-lora-train-256") {
        Initialization.seed(0)
        let model = try! UNet2DConditionModel(configuration: .stableDiffusion15)
        model.freeze()
        let adapters = attachAttentionLoRA(model, rank: 4)
        model.train()
        model.gradientCheckpointing = true
        let optimizer = Adam.adamW(parameters: adapters.flatMap { $0.parameters() }, learningRate: 1e-4)
        var draws = RandomGenerator(seed: 7)
        let latents = Tensor.randn([1, 4, 32, 32], generator: &draws)
        let noise = Tensor.randn([1, 4, 32, 32], generator: &draws)
        let context = Tensor.randn([1, 77, 768], generator: &draws)
        let timesteps = [Float(draws.integer(below: 1000))]
        return {
            let prediction = model(latents + noise, timesteps: timesteps, encoderHiddenStates: context)
            let loss = Tensor.mseLoss(prediction, noise)
            loss.backward()
            optimizer.step()
            optimizer.zeroGradients()
        }
    }
}

let textToImageTrainingWorkloads = [smallTextToImageTraining(), stableDiffusion15LoRATraining()]
let textToImageTrainingMemoryRows = ["sd15-lora-train-256-rss"]
