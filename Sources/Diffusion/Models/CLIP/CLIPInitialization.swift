import Foundation
import NN
import Tensors

/// transformers' `CLIPPreTrainedModel._init_weights` (transformers 5.x), for
/// training a CLIP from scratch. With `factor` the `initializer_factor` (1)
/// and `d` a tower's `hidden_size`, `L` its layer count:
///
/// | parameter | initial value |
/// |---|---|
/// | text `token_embedding`, `position_embedding` | N(0, 0.02·factor) |
/// | vision `class_embedding` | N(0, d^-½·factor) |
/// | vision `patch_embedding`, `position_embedding` | N(0, initializer_range·factor) |
/// | attention `q_proj`, `k_proj`, `v_proj` weights | N(0, d^-½·(2L)^-½·factor) |
/// | attention `out_proj` weight | N(0, d^-½·factor) |
/// | MLP `fc1` weight | N(0, (2d)^-½·factor) |
/// | MLP `fc2` weight | N(0, d^-½·(2L)^-½·factor) |
/// | `text_projection`, `visual_projection` | N(0, d^-½·factor) of their tower |
/// | every Linear bias | 0 |
/// | LayerNorm weight, bias | 1, 0 |
/// | `logit_scale` | `logit_scale_init_value` (ln(1/0.07) = 2.6592) |
extension CLIPModel {
    /// Overwrites every parameter with transformers' initial values, drawing
    /// the normal ones from `generator` in parameter order.
    public func initializeWeights(generator: inout RandomGenerator) {
        noGrad {
            func normal(_ tensor: Tensor, _ standardDeviation: Double) {
                let values = Tensor.randn(tensor.shape, generator: &generator) * Float(standardDeviation)
                tensor.copyValues(from: values)
            }
            func constant(_ tensor: Tensor?, _ value: Float) {
                guard let tensor else { return }
                tensor.copyValues(from: Tensor.full(value, tensor.shape))
            }
            func encoder(_ encoder: CLIPEncoder, _ configuration: some CLIPEncoderConfiguration, factor: Double) {
                let width = Double(configuration.hiddenSize)
                let layers = Double(configuration.hiddenLayerCount)
                let inputStandardDeviation = Foundation.pow(width, -0.5) * Foundation.pow(2 * layers, -0.5) * factor
                for layer in encoder.layers {
                    let attention = layer.selfAttention
                    for projection in [attention.queryProjection, attention.keyProjection, attention.valueProjection] {
                        normal(projection.weight, inputStandardDeviation)
                        constant(projection.bias, 0)
                    }
                    normal(attention.outputProjection.weight, Foundation.pow(width, -0.5) * factor)
                    constant(attention.outputProjection.bias, 0)
                    normal(layer.mlp.fc1.weight, Foundation.pow(2 * width, -0.5) * factor)
                    constant(layer.mlp.fc1.bias, 0)
                    normal(layer.mlp.fc2.weight, inputStandardDeviation)
                    constant(layer.mlp.fc2.bias, 0)
                    for norm in [layer.layerNorm1, layer.layerNorm2] { constant(norm.weight, 1); constant(norm.bias, 0) }
                }
            }
            let text = configuration.text, vision = configuration.vision
            normal(textModel.embeddings.tokenEmbedding.weight, 0.02 * text.initializerFactor)
            normal(textModel.embeddings.positionEmbedding.weight, 0.02 * text.initializerFactor)
            encoder(textModel.encoder, text, factor: text.initializerFactor)
            constant(textModel.finalLayerNorm.weight, 1)
            constant(textModel.finalLayerNorm.bias, 0)

            let embeddings = visionModel.embeddings
            normal(embeddings.classEmbedding, Foundation.pow(Double(vision.hiddenSize), -0.5) * vision.initializerFactor)
            normal(embeddings.patchEmbedding.weight, vision.initializerRange * vision.initializerFactor)
            normal(embeddings.positionEmbedding.weight, vision.initializerRange * vision.initializerFactor)
            for norm in [visionModel.preLayerNorm, visionModel.postLayerNorm] { constant(norm.weight, 1); constant(norm.bias, 0) }
            encoder(visionModel.encoder, vision, factor: vision.initializerFactor)

            normal(textProjection.weight, Foundation.pow(Double(text.hiddenSize), -0.5) * text.initializerFactor)
            normal(visualProjection.weight, Foundation.pow(Double(vision.hiddenSize), -0.5) * vision.initializerFactor)
            constant(logitScale, Float(configuration.logitScaleInitialValue))
        }
    }

    /// Initialises with a generator seeded by `seed`.
    public func initializeWeights(seed: UInt64) {
        var generator = RandomGenerator(seed: seed)
        initializeWeights(generator: &generator)
    }
}
