import NN
import Tensors
import TestSupport
import XCTest

/// diffusers' `Attention` against goldens: same state dict names, same output,
/// same input and parameter gradients.
final class LayerParityTests: XCTestCase {
    private func check(_ name: String, _ attention: Attention) throws {
        let golden = try SafetensorsFixture.load(name, subdirectory: "nn")
        var parameters: [String: Tensor] = [:]
        for (key, value) in golden.tensors where key.hasPrefix("param.") { parameters[String(key.dropFirst(6))] = value }
        try attention.load(stateDict: parameters)
        let input = try golden.leaf("input")
        let context = golden.tensors["context"].map { value -> Tensor in
            let leaf = value.contiguousCopy()
            leaf.requiresGrad = true
            return leaf
        }
        let output = attention(input, context: context)
        assertClose(output, try golden.tensor("output"), relative: 1e-4, absolute: 1e-5, "\(name) output")
        (output * (try golden.tensor("upstream"))).sum().backward()
        assertClose(input.grad!, try golden.tensor("grad_input"), relative: 1e-4, absolute: 1e-5, "\(name) input gradient")
        if let context {
            assertClose(context.grad!, try golden.tensor("grad_context"), relative: 1e-4, absolute: 1e-5, "\(name) context gradient")
        }
        for (parameterName, parameter) in attention.namedParameters() {
            assertClose(parameter.grad!, try golden.tensor("grad_param." + parameterName), relative: 1e-4, absolute: 1e-5, "\(name) \(parameterName) gradient")
        }
    }

    func testSelfAttentionOnImagesMatchesDiffusers() throws {
        try check("attention_self_4d", Attention(queryDimension: 8, heads: 2, dimensionPerHead: 4, bias: true, normGroupCount: 2,
                                                 residualConnection: true, rescaleOutputFactor: 2))
    }

    func testCrossAttentionMatchesDiffusers() throws {
        try check("attention_cross", Attention(queryDimension: 8, crossAttentionDimension: 6, heads: 2, dimensionPerHead: 4))
    }
}
