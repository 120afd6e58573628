// Long-sequence attention rows of `make bench` (torch_bench.py runs F.scaled_dot_product_attention
// on the same shapes): Stable Diffusion 1.x's UNet at 512×512, a 64×64 latent, 8 heads.
import Foundation
import Tensors

/// Self-attention `[batch, 8, tokens, depth]` forward, no gradients; `-bf16` rows in bfloat16
/// inference mode (`BFloat16Attention`; PyTorch's side runs its attention on bfloat16 tensors).
func attentionForward(_ name: String, batch: Int = 2, heads: Int = 8, tokens: Int, keys: Int? = nil, depth: Int,
                      precision: ComputePrecision = .float32) -> Workload {
    Workload(name: name) {
        let query = randn([batch, heads, tokens, depth])
        let key = randn([batch, heads, keys ?? tokens, depth]), value = randn([batch, heads, keys ?? tokens, depth])
        return {
            // Set on every run: the worker runs rows of both modes in turn.
            if ComputeMode.requested != precision { ComputeMode.precision = precision }
            _ = noGrad { Tensor.scaledDotProductAttention(query: query, key: key, value: value) }
        }
    }
}

/// Self-attention forward and backward to query, key and value.
func attentionTraining(_ name: String, batch: Int = 2, heads: Int = 8, tokens: Int, depth: Int) -> Workload {
    Workload(name: name) {
        let query = randn([batch, heads, tokens, depth]), key = randn([batch, heads, tokens, depth])
        let value = randn([batch, heads, tokens, depth]), upstream = randn([batch, heads, tokens, depth])
        for tensor in [query, key, value] { tensor.requiresGrad = true }
        return {
            Tensor.scaledDotProductAttention(query: query, key: key, value: value).backward(upstream)
            for tensor in [query, key, value] { tensor.grad = nil }
        }
    }
}

/// One attention layer's shape, for looking into it (not a `make bench` row):
/// `attention-fwd:BATCH:HEADS:TOKENS:KEYS:DEPTH` or `attention-fwdbwd:…` (with the backward pass to
/// query, key and value), each operand split into heads from `[batch, tokens, heads · depth]` as
/// diffusers' attention processor does (PyTorch's side the same).
func shapedAttention(_ name: String) -> Workload? {
    let parts = name.split(separator: ":")
    guard parts.count == 6, ["attention-fwd", "attention-fwdbwd"].contains(parts[0]) else { return nil }
    let sizes = parts.dropFirst().compactMap { Int($0) }
    guard sizes.count == 5, sizes.allSatisfy({ $0 > 0 }) else { return nil }
    return attentionLayer(name, batch: sizes[0], heads: sizes[1], tokens: sizes[2], keys: sizes[3], depth: sizes[4],
                          backward: parts[0] == "attention-fwdbwd")
}

/// Attention of `[batch, tokens, heads · depth]` queries over `keys` keys and values, split into heads as
/// diffusers does; forward only, or forward and backward to the three inputs.
func attentionLayer(_ name: String, batch: Int, heads: Int, tokens: Int, keys: Int, depth: Int, backward: Bool) -> Workload {
    Workload(name: name) {
        let query = randn([batch, tokens, heads * depth])
        let key = randn([batch, keys, heads * depth]), value = randn([batch, keys, heads * depth])
        let upstream = randn([batch, heads, tokens, depth])
        for tensor in [query, key, value] { tensor.requiresGrad = backward }
        func split(_ tensor: Tensor) -> Tensor { tensor.reshaped([batch, tensor.shape[1], heads, depth]).transposed(1, 2) }
        return {
            if backward {
                Tensor.scaledDotProductAttention(query: split(query), key: split(key), value: split(value)).backward(upstream)
                for tensor in [query, key, value] { tensor.grad = nil }
            } else {
                _ = noGrad { Tensor.scaledDotProductAttention(query: split(query), key: split(key), value: split(value)) }
            }
        }
    }
}

/// The 64×64 latent's self-attention (4,096 tokens, heads of 40), its cross-attention to 77 text
/// tokens, and the deeper levels' self-attention (1,024 tokens of 80, 256 of 160).
let attentionWorkloads: [Workload] = [
    attentionForward("attention-sd-4096", tokens: 4096, depth: 40),
    attentionTraining("attention-sd-4096-fwdbwd", tokens: 4096, depth: 40),
    attentionForward("attention-sd-cross-4096x77", tokens: 4096, keys: 77, depth: 40),
    attentionForward("attention-sd-1024-h80", tokens: 1024, depth: 80),
    attentionForward("attention-sd-256-h160", tokens: 256, depth: 160),
    attentionForward("attention-sd-4096-bf16", tokens: 4096, depth: 40, precision: .bfloat16),
    attentionForward("attention-sd-cross-4096x77-bf16", tokens: 4096, keys: 77, depth: 40, precision: .bfloat16),
    attentionForward("attention-sd-1024-h80-bf16", tokens: 1024, depth: 80, precision: .bfloat16),
    attentionForward("attention-sd-256-h160-bf16", tokens: 256, depth: 160, precision: .bfloat16),
]
