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

/// The same UNet with its weights held in bfloat16 (built without float32 initial values, each
/// parameter drawn and rounded one at a time, so the float32 model never exists): `-w16` computes
/// in float32 (weights widened layer by layer), `-bf16` in bfloat16 (oneDNN; the weights used as
/// they are). PyTorch's side of both is diffusers' default float32 model, the reference.
func stableDiffusion15UNetSixteenBit(bfloat16Compute: Bool) -> Workload {
    Workload(name: bfloat16Compute ? "sd15-unet-b2-64-bf16" : "sd15-unet-b2-64-w16") {
        ComputeMode.precision = bfloat16Compute ? .bfloat16 : .float32
        let model = Initialization.withoutInitialValues { try! UNet2DConditionModel(configuration: .stableDiffusion15) }
        var draws = RandomGenerator(seed: 5)
        drawBFloat16Parameters(model, generator: &draws)
        model.eval()
        let latents = Tensor.randn([2, 4, 64, 64], generator: &draws)
        let context = Tensor.randn([2, 77, 768], generator: &draws)
        return { _ = noGrad { model(latents, timestep: 981, encoderHiddenStates: context) } }
    }
}

/// Gives every parameter of `model` (built without initial values) random bfloat16 values, one parameter at
/// a time, so that no float32 copy of the model ever exists (as when 16-bit weights are mapped from a file):
/// matrices and kernels uniform in ±1/√fan-in, norm weights 1, other vectors uniform in ±0.02.
func drawBFloat16Parameters(_ model: Module, generator draws: inout RandomGenerator) {
    for (name, parameter) in model.namedParameters() {
        let values: Tensor
        if parameter.rank >= 2 {
            let bound = 1 / Float(parameter.count / parameter.shape[0]).squareRoot()
            values = Tensor.rand(parameter.shape, low: -bound, high: bound, generator: &draws)
        } else {
            values = name.contains("norm") && name.hasSuffix("weight") ? Tensor.ones(parameter.shape)
                : Tensor.rand(parameter.shape, low: -0.02, high: 0.02, generator: &draws)
        }
        parameter.requiresGrad = false
        parameter.replaceStorage(with: values.converted(to: .bfloat16).storage)
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

let unetConditionWorkloads = [stableDiffusion15UNet(), stableDiffusion15UNetSixteenBit(bfloat16Compute: false),
                              stableDiffusion15UNetSixteenBit(bfloat16Compute: true), smallConditionUNetTraining()]
let unetConditionMemoryRows = ["sd15-unet-b2-64-rss", "sd15-unet-b2-64-w16-rss"]
