import Foundation

extension Tensor {
    /// Scaled dot-product attention, `softmax(Q·Kᵀ·scale + mask)·V` (PyTorch's
    /// `F.scaled_dot_product_attention`). Shapes `[…, L, E]`, `[…, S, E]`,
    /// `[…, S, Ev]`; `mask` is added to the scores and broadcasts to `[…, L, S]`
    /// (use `-infinity` to hide a position); `scale` defaults to `1/√E`.
    public static func scaledDotProductAttention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor? = nil, scale: Float? = nil) -> Tensor {
        fatalError("scaledDotProductAttention: not implemented yet")
    }
}
