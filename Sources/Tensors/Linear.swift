import Foundation

extension Tensor {
    /// `self · weightᵀ + bias` over the last dimension (PyTorch's `F.linear`; `weight` is
    /// `[out, in]`). The bias is added inside the product (C starts as the bias rows and the
    /// product adds to it) rather than in a pass of its own over the result, and the backward
    /// pass gives the gradients from one saved input. Anything but float32 operands (with a
    /// float32 bias or none) takes `matmul` and `+`.
    public func linear(weight: Tensor, bias: Tensor?) -> Tensor {
        // 16-bit weights (held so, outside training) are widened here, one layer at a time;
        // the bfloat16 path keeps its own bfloat16 copy (none for bfloat16 weights).
        if weight.dataType != .float32 && !weight.needsGradient && ComputeMode.precision != .bfloat16 {
            return linear(weight: weight.layerWeightData(), bias: bias?.contiguousData())
        }
        let bias = bias.map { $0.dataType == .float32 || $0.needsGradient ? $0 : $0.contiguousData() }
        if ComputeMode.precision == .bfloat16, rank >= 2, weight.rank == 2, shape.last == weight.shape[1], count > 0,
           dataType == .float32, bias.map({ $0.rank == 1 && $0.count == weight.shape[0] && $0.dataType == .float32 }) ?? true,
           !(GradientMode.isEnabled && (needsGradient || weight.needsGradient || (bias?.needsGradient ?? false))),
           let product = BFloat16Linear.linear(self, weight: weight, bias: bias) {
            return product
        }
        // With or without a bias: a bias-free layer (attention's to_q, to_k, to_v) records the same
        // kernel, whose weight gradient dYᵀ·X comes out in the weight's own [out, in] layout (through
        // `matmul(weight.transposed())` it came out transposed, and a serial strided copy laid it out).
        guard rank >= 2, weight.rank == 2, shape.last == weight.shape[1], dataType == .float32, weight.dataType == .float32,
              count > 0, weight.count > 0, bias.map({ $0.rank == 1 && $0.count == weight.shape[0] && $0.dataType == .float32 }) ?? true else {
            let product = matmul(weight.transposed())
            return bias.map { product + $0 } ?? product
        }
        let (outFeatures, inFeatures) = (weight.shape[0], weight.shape[1])
        let rows = count / inFeatures
        let input = contiguousData(), weightData = weight.contiguousData()
        let result = Tensor(uninitializedShape: Array(shape.dropLast()) + [outFeatures])
        let target = result.floatPointer
        if let biasData = bias?.contiguousData() {
            let biasPointer = UnsafePointer(biasData.floatPointer)
            Parallel.forEach(rows, grain: 1024) { range in
                for row in range { (target + row * outFeatures).update(from: biasPointer, count: outFeatures) }
            }
        }
        Gemm.parallel(GemmArguments(transposeB: true, m: rows, n: outFeatures, k: inFeatures,
                                    a: input.floatPointer, lda: inFeatures, b: weightData.floatPointer, ldb: inFeatures,
                                    beta: bias == nil ? 0 : 1, c: target, ldc: outFeatures))
        return Tensor.record(result, .kernel(LinearBackward(input: weight.needsGradient ? input.detach() : nil,
                                                            weight: needsGradient ? weightData.detach() : nil, inputShape: shape)),
                             inputs: bias.map { [self, weight, $0] } ?? [self, weight])
    }
}

/// What `linear` keeps for its backward pass: dX = dY · W, dW = dYᵀ · X, db = Σ rows of dY.
struct LinearBackward: BackwardContext {
    /// The float32 input, kept when the weight needs a gradient.
    let input: Tensor?
    /// The contiguous weight `[out, in]`, kept when the input needs a gradient.
    let weight: Tensor?
    let inputShape: [Int]

    var name: String { "linear" }

    func mappingSavedActivations(_ transform: (Tensor) -> Tensor) -> any BackwardContext {
        LinearBackward(input: input.map(transform), weight: weight, inputShape: inputShape)
    }

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        let upstream = gradient.contiguousData()
        let outFeatures = upstream.shape[upstream.rank - 1]
        let inFeatures = inputShape[inputShape.count - 1]
        let rows = upstream.count / outFeatures
        var result: [Tensor?] = Array(repeating: nil, count: inputs.count)
        if inputs[0] != nil, let weight {
            let inputGradient = Tensor(uninitializedShape: inputShape)
            Gemm.parallel(GemmArguments(m: rows, n: inFeatures, k: outFeatures, a: upstream.floatPointer, lda: outFeatures,
                                        b: weight.floatPointer, ldb: inFeatures, c: inputGradient.floatPointer, ldc: inFeatures))
            result[0] = inputGradient
        }
        if inputs[1] != nil, let input {
            let saved = input.contiguousData()
            let weightGradient = Tensor(uninitializedShape: [outFeatures, inFeatures])
            Gemm.parallel(GemmArguments(transposeA: true, m: outFeatures, n: inFeatures, k: rows, a: upstream.floatPointer, lda: outFeatures,
                                        b: saved.floatPointer, ldb: inFeatures, c: weightGradient.floatPointer, ldc: inFeatures))
            result[1] = weightGradient
        }
        if inputs.count > 2 && inputs[2] != nil {
            result[2] = Convolution.biasGradient(upstream, channels: outFeatures)
        }
        return result
    }
}
