// Stable Diffusion UNet rows of `make bench` (torch_bench.py builds the same models with diffusers).
import Diffusion
import Foundation
import NN
import Tensors

/// Stable Diffusion 1.5's UNet (random weights) on a batch of 2 (classifier-free
/// guidance's conditional and unconditional halves), 4×64×64 latents, 77×768 context, no gradients.
func stableDiffusion15UNet() -> Workload {
    Workload(name: "sd15-unet-b2-64") {
        Initialization.seed(0)
        let model = try! UNet2DConditionModel(configuration: .stableDiffusion15)
        model.eval()
        var draws = RandomGenerator(seed: 3)
        let latents = Tensor.randn([2, 4, 64, 64], generator: &draws)
        let context = Tensor.randn([2, 77, 768], generator: &draws)
        return { _ = noGrad { model(latents, timestep: 981, encoderHiddenStates: context) } }
    }
}

/// A small UNet2DConditionModel's training step at batch 8: blocks (32, 64, 64), 32×32
/// latents of 4 channels, a 16-token context of width 64, MSE to the noise, AdamW.
func smallConditionUNetTraining() -> Workload {
    Workload(name: "sd-unet-small-train-b8") {
        var configuration = UNet2DConditionConfiguration()
        configuration.sampleSize = .square(32)
        configuration.blockOutChannels = [32, 64, 64]
        configuration.downBlockTypes = [.crossAttentionDownBlock, .crossAttentionDownBlock, .downBlock]
        configuration.upBlockTypes = [.upBlock, .crossAttentionUpBlock, .crossAttentionUpBlock]
        configuration.crossAttentionDimension = .uniform(64)
        configuration.normGroupCount = 32
        Initialization.seed(0)
        let model = try! UNet2DConditionModel(configuration: configuration)
        model.train()
        let optimizer = Adam.adamW(parameters: model.parameters(), learningRate: 1e-4)
        var draws = RandomGenerator(seed: 4)
        let clean = Tensor.randn([8, 4, 32, 32], generator: &draws)
        let noise = Tensor.randn([8, 4, 32, 32], generator: &draws)
        let context = Tensor.randn([8, 16, 64], generator: &draws)
        let timesteps = (0..<8).map { _ in Float(draws.integer(below: 1000)) }
        return {
            let prediction = model(clean + noise, timesteps: timesteps, encoderHiddenStates: context)
            let loss = Tensor.mseLoss(prediction, noise)
            loss.backward()
            optimizer.step()
            optimizer.zeroGradients()
        }
    }
}

let unetConditionWorkloads = [stableDiffusion15UNet(), smallConditionUNetTraining()]
let unetConditionMemoryRows = ["sd15-unet-b2-64-rss"]
