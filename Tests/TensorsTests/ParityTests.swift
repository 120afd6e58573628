import Foundation
import Tensors
import TestSupport
import XCTest

/// Every op against PyTorch: each test loads `Tests/Fixtures/tensors/<case>.safetensors`
/// (written by `Scripts/make-goldens`), runs the Diffuse op on the stored inputs,
/// and compares the output and the gradients of `(output * upstream).sum()`
/// with respect to every differentiable input.
final class ParityTests: XCTestCase {
    struct Tolerance {
        var relative: Float
        var absolute: Float
        /// Elementwise ops and short reductions.
        static let tight = Tolerance(relative: 1e-5, absolute: 1e-5)
        /// Ops whose float reduction order differs from PyTorch's (conv, norms, attention).
        static let loose = Tolerance(relative: 1e-4, absolute: 1e-4)
    }

    /// The inputs of a case: differentiable ones as fresh leaves (`requiresGrad = true`), the rest as stored.
    struct Inputs {
        let golden: GoldenCase
        let leaves: [String: Tensor]

        subscript(_ name: String) -> Tensor {
            get throws {
                if let leaf = leaves[name] { return leaf }
                return try golden.tensor(name)
            }
        }

        /// An optional input: nil when the file has no tensor of that name.
        func optional(_ name: String) -> Tensor? {
            leaves[name] ?? golden.tensors[name]
        }
    }

    /// Loads golden `name`, runs `op`, compares the output and every input gradient.
    func checkParity(_ name: String, tolerance: Tolerance = .tight, gradientTolerance: Tolerance? = nil,
                     file: StaticString = #filePath, line: UInt = #line,
                     _ op: (Inputs, GoldenCase) throws -> Tensor) throws {
        let golden = try GoldenCase.load(name)
        let differentiable = try golden.string("differentiable").split(separator: ",").map(String.init)
        let storedGradients = Set(golden.tensors.keys.filter { $0.hasPrefix("grad_") })
        XCTAssertEqual(storedGradients, Set(differentiable.map { "grad_" + $0 }),
                       "\(name): stored gradients do not match the differentiable inputs", file: file, line: line)
        var leaves: [String: Tensor] = [:]
        for input in differentiable { leaves[input] = try golden.leaf(input) }

        let output = try op(Inputs(golden: golden, leaves: leaves), golden)
        let expected = try golden.tensor("output")
        guard output.shape == expected.shape else {
            XCTFail("\(name): output shape \(output.shape) != PyTorch's \(expected.shape)", file: file, line: line)
            return
        }
        assertClose(output, expected, relative: tolerance.relative, absolute: tolerance.absolute,
                    "\(name) output", file: file, line: line)

        let upstream = try golden.tensor("upstream")
        (output * upstream).sum().backward()
        let gradientTolerance = gradientTolerance ?? tolerance
        for input in differentiable {
            guard let gradient = leaves[input]?.grad else {
                XCTFail("\(name): no gradient for \(input)", file: file, line: line)
                continue
            }
            assertClose(gradient, try golden.tensor("grad_" + input),
                        relative: gradientTolerance.relative, absolute: gradientTolerance.absolute,
                        "\(name) d/d\(input)", file: file, line: line)
        }
    }

    // MARK: - Coverage

    /// Every case `Scripts/make-goldens` writes, each checked by a test below.
    static let cases = [
        "matmul_2d", "matmul_batched", "matmul_broadcast",
        "conv2d_s1p1", "conv2d_s2p0", "conv2d_k5p2", "conv2d_1x1_nobias",
        "group_norm_affine", "group_norm_plain", "layer_norm_last", "layer_norm_last2",
        "softmax_last", "softmax_dim1", "log_softmax_last", "log_softmax_dim1",
        "attention_self", "attention_cross", "attention_mask4d",
        "upsample_nearest", "resize_bilinear", "resize_bilinear_align_corners",
        "max_pool_k2s2", "max_pool_k3s2p1", "avg_pool_k2s2", "avg_pool_k3s1p1",
        "gelu_exact", "gelu_tanh", "silu", "quick_gelu", "sigmoid", "tanh",
        "mse_loss", "l1_loss", "cross_entropy",
        "variance_unbiased", "sum_keepdims", "mean_keepdims",
    ]

    func testFixturesAllCovered() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: SafetensorsFixture.directory.path)
        let stored = Set(files.filter { $0.hasSuffix(".safetensors") }.map { String($0.dropLast(".safetensors".count)) })
        XCTAssertEqual(stored.subtracting(Self.cases).sorted(), [], "goldens without a parity test")
        XCTAssertEqual(Set(Self.cases).subtracting(stored).sorted(), [], "parity tests without a golden (run Scripts/make-goldens)")
    }

    func testFixtureReaderIsStrict() throws {
        func file(_ header: String, _ floats: [Float]) -> Data {
            var bytes = [UInt8]()
            let json = Array(header.utf8)
            var length = UInt64(json.count)
            for _ in 0..<8 { bytes.append(UInt8(length & 0xFF)); length >>= 8 }
            bytes += json
            for value in floats { var bits = value.bitPattern; for _ in 0..<4 { bytes.append(UInt8(bits & 0xFF)); bits >>= 8 } }
            return Data(bytes)
        }
        let good = try SafetensorsFixture.parse(file(#"{"x":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]},"__metadata__":{"k":"v"}}"#, [1.5, -.infinity]))
        XCTAssertEqual(good.tensors["x"]?.shape, [2, 1])
        XCTAssertEqual(good.tensors["x"]?.toArray(), [1.5, -.infinity])
        XCTAssertEqual(good.metadata, ["k": "v"])
        let bad = [
            file(#"{"x":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#, [0]),        // dtype
            file(#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, [0, 0]),     // size vs shape
            file(#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, [0, 0]),     // trailing bytes
            file(#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, [0, 0]),     // gap
            file(#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"y":1}}"#, [0]),  // unknown key
            file(#"{"__metadata__":{"k":3}}"#, []),                                       // non-string metadata
            Data([1, 2, 3]),                                                              // truncated
        ]
        for (index, data) in bad.enumerated() {
            XCTAssertThrowsError(try SafetensorsFixture.parse(data), "malformed file \(index) was accepted")
        }
    }

    // MARK: - matmul

    func testMatmul2d() throws {
        try checkParity("matmul_2d") { x, _ in try x["a"].matmul(x["b"]) }
    }

    func testMatmulBatched() throws {
        try checkParity("matmul_batched") { x, _ in try x["a"].matmul(x["b"]) }
    }

    func testMatmulBroadcast() throws {
        try checkParity("matmul_broadcast") { x, _ in try x["a"].matmul(x["b"]) }
    }

    // MARK: - conv2d

    private func checkConv2d(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try checkParity(name, tolerance: .loose, file: file, line: line) { x, golden in
            XCTAssertEqual(try golden.bool("bias"), x.optional("bias") != nil, file: file, line: line)
            return try x["input"].conv2d(weight: x["weight"], bias: x.optional("bias"),
                                         stride: golden.int("stride"), padding: golden.int("padding"))
        }
    }

    func testConv2dStride1Pad1() throws { try checkConv2d("conv2d_s1p1") }
    func testConv2dStride2Pad0() throws { try checkConv2d("conv2d_s2p0") }
    func testConv2dKernel5Pad2() throws { try checkConv2d("conv2d_k5p2") }
    func testConv2d1x1NoBias() throws { try checkConv2d("conv2d_1x1_nobias") }

    // MARK: - normalisation

    private func checkGroupNorm(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try checkParity(name, tolerance: .loose, file: file, line: line) { x, golden in
            XCTAssertEqual(try golden.bool("affine"), x.optional("weight") != nil, file: file, line: line)
            return try x["input"].groupNorm(groupCount: golden.int("groups"), weight: x.optional("weight"),
                                            bias: x.optional("bias"), epsilon: golden.float("eps"))
        }
    }

    func testGroupNormAffine() throws { try checkGroupNorm("group_norm_affine") }
    func testGroupNormPlain() throws { try checkGroupNorm("group_norm_plain") }

    private func checkLayerNorm(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try checkParity(name, tolerance: .loose, file: file, line: line) { x, golden in
            XCTAssertEqual(try golden.bool("affine"), x.optional("weight") != nil, file: file, line: line)
            return try x["input"].layerNorm(normalizedRank: golden.int("normalized_rank"), weight: x.optional("weight"),
                                            bias: x.optional("bias"), epsilon: golden.float("eps"))
        }
    }

    func testLayerNormLastDimension() throws { try checkLayerNorm("layer_norm_last") }
    func testLayerNormLastTwoDimensions() throws { try checkLayerNorm("layer_norm_last2") }

    // MARK: - softmax

    func testSoftmaxLastAxis() throws {
        try checkParity("softmax_last") { x, golden in try x["input"].softmax(axis: golden.int("axis")) }
    }

    func testSoftmaxAxis1() throws {
        try checkParity("softmax_dim1") { x, golden in try x["input"].softmax(axis: golden.int("axis")) }
    }

    func testLogSoftmaxLastAxis() throws {
        try checkParity("log_softmax_last") { x, golden in try x["input"].logSoftmax(axis: golden.int("axis")) }
    }

    func testLogSoftmaxAxis1() throws {
        try checkParity("log_softmax_dim1") { x, golden in try x["input"].logSoftmax(axis: golden.int("axis")) }
    }

    // MARK: - attention

    private func checkAttention(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try checkParity(name, tolerance: .loose, file: file, line: line) { x, golden in
            XCTAssertEqual(try golden.bool("mask"), x.optional("mask") != nil, file: file, line: line)
            let scaleText = try golden.string("scale")
            let scale: Float? = scaleText == "default" ? nil : try golden.float("scale")
            return try Tensor.scaledDotProductAttention(query: x["query"], key: x["key"], value: x["value"],
                                                        mask: x.optional("mask"), scale: scale)
        }
    }

    func testAttentionSelf() throws { try checkAttention("attention_self") }
    func testAttentionCross() throws { try checkAttention("attention_cross") }
    func testAttentionMasked4d() throws { try checkAttention("attention_mask4d") }

    // MARK: - resampling

    func testUpsampleNearest() throws {
        try checkParity("upsample_nearest") { x, golden in try x["input"].upsampleNearest(scaleFactor: golden.int("scale_factor")) }
    }

    private func checkBilinear(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try checkParity(name, file: file, line: line) { x, golden in
            try x["input"].resizedBilinear(height: golden.int("height"), width: golden.int("width"),
                                           alignCorners: golden.bool("align_corners"))
        }
    }

    func testResizeBilinear() throws { try checkBilinear("resize_bilinear") }
    func testResizeBilinearAlignCorners() throws { try checkBilinear("resize_bilinear_align_corners") }

    // MARK: - pooling

    private func checkPool(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try checkParity(name, file: file, line: line) { x, golden in
            let (kernel, stride, padding) = (try golden.int("kernel_size"), try golden.int("stride"), try golden.int("padding"))
            switch try golden.string("op") {
            case "max_pool2d": return try x["input"].maxPool2d(kernelSize: kernel, stride: stride, padding: padding)
            case "avg_pool2d": return try x["input"].avgPool2d(kernelSize: kernel, stride: stride, padding: padding)
            case let op: throw SafetensorsFixtureError.badMetadata("op", op)
            }
        }
    }

    func testMaxPoolKernel2Stride2() throws { try checkPool("max_pool_k2s2") }
    func testMaxPoolKernel3Stride2Pad1() throws { try checkPool("max_pool_k3s2p1") }
    func testAvgPoolKernel2Stride2() throws { try checkPool("avg_pool_k2s2") }
    func testAvgPoolKernel3Stride1Pad1() throws { try checkPool("avg_pool_k3s1p1") }

    // MARK: - pointwise

    func testPointwiseGeluExact() throws {
        try checkParity("gelu_exact") { x, golden in
            XCTAssertEqual(try golden.string("approximate"), "none")
            return try x["input"].gelu(approximate: false)
        }
    }

    func testPointwiseGeluTanh() throws {
        try checkParity("gelu_tanh") { x, golden in
            XCTAssertEqual(try golden.string("approximate"), "tanh")
            return try x["input"].gelu(approximate: true)
        }
    }

    func testPointwiseSilu() throws {
        try checkParity("silu") { x, _ in try x["input"].silu() }
    }

    func testPointwiseQuickGelu() throws {
        try checkParity("quick_gelu") { x, _ in try x["input"].quickGelu() }
    }

    func testPointwiseSigmoid() throws {
        try checkParity("sigmoid") { x, _ in try x["input"].sigmoid() }
    }

    func testPointwiseTanh() throws {
        try checkParity("tanh") { x, _ in try x["input"].tanh() }
    }

    // MARK: - losses

    func testLossMSE() throws {
        try checkParity("mse_loss") { x, _ in try Tensor.mseLoss(x["input"], x["target"]) }
    }

    func testLossL1() throws {
        try checkParity("l1_loss") { x, _ in try Tensor.l1Loss(x["input"], x["target"]) }
    }

    func testLossCrossEntropy() throws {
        try checkParity("cross_entropy") { x, _ in
            let targets = try x["targets"].toArray().map { value -> Int in
                guard value.rounded() == value, value >= 0 else { throw SafetensorsFixtureError.badMetadata("targets", "\(value)") }
                return Int(value)
            }
            return try Tensor.crossEntropy(logits: x["logits"], targets: targets)
        }
    }

    // MARK: - reductions

    func testReductionVarianceUnbiased() throws {
        try checkParity("variance_unbiased") { x, golden in
            try x["input"].variance(axes: golden.ints("axes"), correction: golden.int("correction"), keepDims: golden.bool("keepdims"))
        }
    }

    func testReductionSumKeepDims() throws {
        try checkParity("sum_keepdims") { x, golden in
            try x["input"].sum(axes: golden.ints("axes"), keepDims: golden.bool("keepdims"))
        }
    }

    func testReductionMeanKeepDims() throws {
        try checkParity("mean_keepdims") { x, golden in
            try x["input"].mean(axes: golden.ints("axes"), keepDims: golden.bool("keepdims"))
        }
    }
}
