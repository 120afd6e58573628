// Stable Diffusion VAE rows of `make bench` (torch_bench.py builds the same model with diffusers).
import Diffusion
import Foundation
import NN
import Tensors

/// Stable Diffusion 1.5's `AutoencoderKL` (random weights), no gradients:
/// `decode` a 1×4×64×64 latent to a 512×512 image, or encode a 512×512 image
/// to the posterior's moments.
func stableDiffusionVAE(decode: Bool) -> Workload {
    Workload(name: decode ? "sd15-vae-decode-64" : "sd15-vae-encode-512") {
        Initialization.seed(0)
        guard let model = try? AutoencoderKL(configuration: .stableDiffusion) else { fatalError("the Stable Diffusion VAE configuration is valid") }
        model.eval()
        var draws = RandomGenerator(seed: 3)
        let input = decode ? Tensor.randn([1, 4, 64, 64], generator: &draws) : Tensor.randn([1, 3, 512, 512], generator: &draws)
        if decode {
            return { _ = noGrad { model.decode(input) } }
        }
        return { _ = noGrad { model.encodeMoments(input) } }
    }
}

let autoencoderWorkloads = [stableDiffusionVAE(decode: true), stableDiffusionVAE(decode: false)]
