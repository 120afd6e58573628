// CLIP rows of `make bench` (torch_bench.py builds the same models with transformers).
import Diffusion
import Foundation
import NN
import Tensors

/// Two 77-token prompts through Stable Diffusion 1.x's text encoder (openai
/// ViT-L/14's text tower, random weights), no gradients.
func clipTextL14(bfloat16: Bool = false) -> Workload {
    Workload(name: bfloat16 ? "clip-text-l14-b2-bf16" : "clip-text-l14-b2") {
        // bfloat16: Diffuse's opt-in bfloat16 inference products; PyTorch under autocast(bfloat16).
        ComputeMode.precision = bfloat16 ? .bfloat16 : .float32
        Initialization.seed(0)
        let model = CLIPTextModel(.stableDiffusion1)
        model.eval()
        var draws = RandomGenerator(seed: 1)
        var ids: [Int] = []
        for length in [9, 75] {
            let middle = (0..<length).map { _ in draws.integer(below: 49406) }
            ids += [49406] + middle + [49407] + Array(repeating: 49407, count: 77 - length - 2)
        }
        return { _ = noGrad { model(ids: ids, batch: 2).lastHiddenState } }
    }
}

/// Eight 224×224 images through openai ViT-B/32's image tower and projection,
/// forward and backward to the pixels (what CLIP guidance runs), frozen weights.
func clipVisionB32() -> Workload {
    Workload(name: "clip-vision-b32-fwdbwd-b8") {
        Initialization.seed(0)
        let model = CLIPVisionModelWithProjection(CLIPVisionConfiguration())
        model.eval()
        model.freeze()
        var draws = RandomGenerator(seed: 2)
        let pixels = Tensor.randn([8, 3, 224, 224], generator: &draws)
        pixels.requiresGrad = true
        return {
            model(pixels).imageEmbeddings.sum().backward()
            pixels.grad = nil
        }
    }
}
