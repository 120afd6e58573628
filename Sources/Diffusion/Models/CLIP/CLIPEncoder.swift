import Foundation
import NN
import Tensors

/// transformers' `CLIPAttention`: multi-head self-attention with biased
/// `q_proj`, `k_proj`, `v_proj`, `out_proj`, scaled by 1/√head size.
public final class CLIPAttention: Module {
    public let queryProjection: Linear
    public let keyProjection: Linear
    public let valueProjection: Linear
    public let outputProjection: Linear
    public let heads: Int

    public override class var stateDictKeys: [String: String] {
        ["queryProjection": "q_proj", "keyProjection": "k_proj", "valueProjection": "v_proj", "outputProjection": "out_proj"]
    }

    public init(width: Int, heads: Int) {
        keyProjection = Linear(width, width)
        valueProjection = Linear(width, width)
        queryProjection = Linear(width, width)
        outputProjection = Linear(width, width)
        self.heads = heads
        super.init()
    }

    /// `input` is `[batch, tokens, width]`; `mask` is additive, broadcastable to
    /// `[batch, heads, tokens, tokens]` (−∞ where a token may not look).
    public func callAsFunction(_ input: Tensor, mask: Tensor?) -> Tensor {
        let (batch, tokens, width) = (input.shape[0], input.shape[1], input.shape[2])
        let headSize = width / heads
        func split(_ tensor: Tensor) -> Tensor {
            tensor.reshaped([batch, tokens, heads, headSize]).transposed(1, 2)
        }
        let attended = Tensor.scaledDotProductAttention(query: split(queryProjection(input)), key: split(keyProjection(input)),
                                                        value: split(valueProjection(input)), mask: mask)
        return outputProjection(attended.transposed(1, 2).reshaped([batch, tokens, width]))
    }
}

/// transformers' `CLIPMLP`: `fc1`, the activation, `fc2`.
public final class CLIPMLP: Module {
    public let fc1: Linear
    public let fc2: Linear
    public let activation: CLIPActivation

    public init(width: Int, intermediate: Int, activation: CLIPActivation) {
        fc1 = Linear(width, intermediate)
        fc2 = Linear(intermediate, width)
        self.activation = activation
        super.init()
    }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        let hidden = fc1(input)
        let activated: Tensor
        switch activation {
        case .quickGELU: activated = hidden.quickGelu()
        case .gelu: activated = hidden.gelu()
        case .geluTanh, .geluNew: activated = hidden.gelu(approximate: true)
        }
        return fc2(activated)
    }
}

/// transformers' `CLIPEncoderLayer`: pre-norm attention and MLP, each with a residual.
public final class CLIPEncoderLayer: Module {
    public let selfAttention: CLIPAttention
    public let layerNorm1: LayerNorm
    public let mlp: CLIPMLP
    public let layerNorm2: LayerNorm

    public override class var stateDictKeys: [String: String] {
        ["selfAttention": "self_attn", "layerNorm1": "layer_norm1", "layerNorm2": "layer_norm2"]
    }

    public init(_ configuration: some CLIPEncoderConfiguration) {
        selfAttention = CLIPAttention(width: configuration.hiddenSize, heads: configuration.attentionHeadCount)
        layerNorm1 = LayerNorm(configuration.hiddenSize, epsilon: configuration.layerNormEpsilon)
        mlp = CLIPMLP(width: configuration.hiddenSize, intermediate: configuration.intermediateSize, activation: configuration.activation)
        layerNorm2 = LayerNorm(configuration.hiddenSize, epsilon: configuration.layerNormEpsilon)
        super.init()
    }

    public func callAsFunction(_ input: Tensor, mask: Tensor?) -> Tensor {
        let hidden = input + selfAttention(layerNorm1(input), mask: mask)
        return hidden + mlp(layerNorm2(hidden))
    }
}

/// transformers' `CLIPEncoder`: the stack of layers (`layers.N`).
public final class CLIPEncoder: Module {
    public let layers: [CLIPEncoderLayer]

    public init(_ configuration: some CLIPEncoderConfiguration) {
        layers = (0..<configuration.hiddenLayerCount).map { _ in CLIPEncoderLayer(configuration) }
        super.init()
    }

    /// The last layer's output and, when `keepingHiddenStates`, the input and
    /// every layer's output (`hidden_states`: layer count + 1 entries).
    /// `throughLayer` stops after that many layers (Stable Diffusion's `clip_skip`).
    public func callAsFunction(_ input: Tensor, mask: Tensor?, keepingHiddenStates: Bool = false,
                               throughLayer: Int? = nil) -> (last: Tensor, hiddenStates: [Tensor]) {
        var hidden = input
        var states = keepingHiddenStates ? [input] : []
        for layer in layers.prefix(throughLayer ?? layers.count) {
            hidden = layer(hidden, mask: mask)
            if keepingHiddenStates { states.append(hidden) }
        }
        return (hidden, states)
    }
}
