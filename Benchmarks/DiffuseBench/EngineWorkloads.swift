// Rows for the engine of Stable Diffusion's models: the matrix products of its UNet
// (`gemm-sd-MxKxN`, as `linear` computes them: x [M, K] · Wᵀ with W [N, K]) in float32, with
// weights held in bfloat16, and with bfloat16 compute; bfloat16 convolutions of any shape for tuning.
import Diffusion
import Foundation
import NN
import Tensors

/// The products of Stable Diffusion 1.5's UNet at batch 2 (classifier-free guidance), 64×64 latents:
/// 8,192 tokens × 320 features (attention projections and the feed-forward), 154 context tokens × 768
/// (cross-attention keys and values), 512 tokens × 1,280 at the 16×16 level.
let stableDiffusionProducts: [(m: Int, k: Int, n: Int)] = [(8192, 320, 1280), (8192, 1280, 320), (154, 768, 320), (512, 1280, 1280)]

/// How a `gemm-sd` row computes: float32; float32 on weights held in bfloat16 (`-w16`, widened
/// per call); bfloat16 compute (`-bf16`).
enum ProductMode: String, CaseIterable {
    case float32 = "", sixteenBitWeights = "-w16", bfloat16 = "-bf16"
}

func stableDiffusionProduct(m: Int, k: Int, n: Int, mode: ProductMode) -> Workload {
    Workload(name: "gemm-sd-\(m)x\(k)x\(n)" + mode.rawValue) {
        ComputeMode.precision = mode == .bfloat16 ? .bfloat16 : .float32
        let x = randn([m, k]), weight = randn([n, k]) * 0.05
        if mode == .sixteenBitWeights { weight.convertStorage(to: .bfloat16) }
        return { _ = noGrad { x.linear(weight: weight, bias: nil) } }
    }
}

let engineWorkloads: [Workload] = stableDiffusionProducts.flatMap { shape in
    ProductMode.allCases.map { stableDiffusionProduct(m: shape.m, k: shape.k, n: shape.n, mode: $0) }
}

/// `conv-fwd-bf16:BATCH:IN:OUT:SIZE[:kK][:sS]`: a convolution with bfloat16 compute
/// (channels-last input; not a `make bench` row). PyTorch's side runs its bfloat16 convolution
/// on channels-last bfloat16 weights, converting the input each time as Diffuse does.
func shapedBFloat16Convolution(_ name: String) -> Workload? {
    guard name.hasPrefix("conv-fwd-bf16:") else { return nil }
    ComputeMode.precision = .bfloat16
    return shapedConvolution("conv-fwd:" + name.dropFirst("conv-fwd-bf16:".count)).map { workload in
        Workload(name: name, setup: workload.setup)
    }
}
