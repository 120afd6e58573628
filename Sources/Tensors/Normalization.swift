import Foundation

// Group and layer normalisation: fused single-pass statistics, fused backward.
//
// Statistics are accumulated on values shifted by a pivot (the first value of
// the run), in float lanes flushed to Double every block, so large means do
// not cancel. Variance is biased and epsilon sits inside the square root, as
// in PyTorch.

extension Tensor {
    /// Group normalisation of `[N, C, …]` (PyTorch's `F.group_norm`), with optional affine `[C]` weight and bias.
    ///
    /// The channels are split into `groupCount` groups of consecutive channels; each
    /// (sample, group) is normalised by its own mean and biased variance. A
    /// channels-last 4-d input is normalised in place of its layout and the
    /// result is channels-last too; any other input gives a row-major result.
    public func groupNorm(groupCount: Int, weight: Tensor? = nil, bias: Tensor? = nil, epsilon: Float = 1e-5) -> Tensor {
        Tensor.validateGroupNorm(self, groupCount: groupCount, weight: weight, bias: bias)
        if count == 0 {
            return groupNormReference(groupCount: groupCount, weight: weight, bias: bias, epsilon: epsilon)
        }
        let channelsLast = layout == .channelsLast && dataType == .float32
        let input = channelsLast ? self : contiguousData()
        let weightData = weight?.contiguousData()
        let biasData = bias?.contiguousData()
        let (output, mean, inverseStandardDeviation) = GroupNormKernel.forward(
            input: input, channelsLast: channelsLast, groupCount: groupCount,
            weight: weightData, bias: biasData, epsilon: epsilon)
        var inputs = [self]
        if let weight { inputs.append(weight) }
        if let bias { inputs.append(bias) }
        return Tensor.record(output, .kernel(GroupNormBackward(
            input: input.detach(), channelsLast: channelsLast, weight: weightData?.detach(),
            hasWeight: weight != nil, hasBias: bias != nil, groupCount: groupCount,
            mean: mean, inverseStandardDeviation: inverseStandardDeviation)), inputs: inputs)
    }

    /// The plain group normalisation composed from differentiable ops (reshape,
    /// mean, variance, arithmetic): the reference the fused kernel is tested against.
    public func groupNormReference(groupCount: Int, weight: Tensor? = nil, bias: Tensor? = nil, epsilon: Float = 1e-5) -> Tensor {
        Tensor.validateGroupNorm(self, groupCount: groupCount, weight: weight, bias: bias)
        let batch = shape[0], channels = shape[1]
        let grouped = reshaped([batch, groupCount, -1])
        let average = grouped.mean(axes: [2], keepDims: true)
        let spread = grouped.variance(axes: [2], correction: 0, keepDims: true)
        var result = ((grouped - average) * (spread + epsilon).rsqrt()).reshaped(shape)
        let affineShape = [1, channels] + Array(repeating: 1, count: rank - 2)
        if let weight { result = result * weight.reshaped(affineShape) }
        if let bias { result = result + bias.reshaped(affineShape) }
        return result
    }

    /// Layer normalisation over the last `normalizedRank` dimensions (PyTorch's `F.layer_norm`), optional affine weight and bias.
    ///
    /// `weight` and `bias`, when given, have the normalised shape (the last
    /// `normalizedRank` sizes). The result is row-major.
    public func layerNorm(normalizedRank: Int = 1, weight: Tensor? = nil, bias: Tensor? = nil, epsilon: Float = 1e-5) -> Tensor {
        Tensor.validateLayerNorm(self, normalizedRank: normalizedRank, weight: weight, bias: bias)
        let width = shape.suffix(normalizedRank).reduce(1, *)
        if count == 0 || width == 0 {
            return layerNormReference(normalizedRank: normalizedRank, weight: weight, bias: bias, epsilon: epsilon)
        }
        let input = contiguousData()
        let weightData = weight?.contiguousData()
        let biasData = bias?.contiguousData()
        let (output, mean, inverseStandardDeviation) = LayerNormKernel.forward(
            input: input, width: width, weight: weightData, bias: biasData, epsilon: epsilon)
        var inputs = [self]
        if let weight { inputs.append(weight) }
        if let bias { inputs.append(bias) }
        return Tensor.record(output, .kernel(LayerNormBackward(
            input: input.detach(), width: width, weight: weightData?.detach(), normalizedShape: Array(shape.suffix(normalizedRank)),
            hasWeight: weight != nil, hasBias: bias != nil,
            mean: mean, inverseStandardDeviation: inverseStandardDeviation)), inputs: inputs)
    }

    /// The plain layer normalisation composed from differentiable ops: the
    /// reference the fused kernel is tested against.
    public func layerNormReference(normalizedRank: Int = 1, weight: Tensor? = nil, bias: Tensor? = nil, epsilon: Float = 1e-5) -> Tensor {
        Tensor.validateLayerNorm(self, normalizedRank: normalizedRank, weight: weight, bias: bias)
        let axes = Array((rank - normalizedRank)..<rank)
        let average = mean(axes: axes, keepDims: true)
        let spread = variance(axes: axes, correction: 0, keepDims: true)
        var result = (self - average) * (spread + epsilon).rsqrt()
        if let weight { result = result * weight }
        if let bias { result = result + bias }
        return result
    }

    static func validateGroupNorm(_ input: Tensor, groupCount: Int, weight: Tensor?, bias: Tensor?) {
        guard input.rank >= 2 else {
            fatalError("groupNorm: input must be [N, C, …], got shape \(input.shape)")
        }
        let channels = input.shape[1]
        guard groupCount > 0, channels % groupCount == 0 else {
            fatalError("groupNorm: \(channels) channels of input shape \(input.shape) cannot be split into \(groupCount) groups")
        }
        if let weight, weight.shape != [channels] {
            fatalError("groupNorm: weight shape \(weight.shape) must be [\(channels)] for input shape \(input.shape)")
        }
        if let bias, bias.shape != [channels] {
            fatalError("groupNorm: bias shape \(bias.shape) must be [\(channels)] for input shape \(input.shape)")
        }
    }

    static func validateLayerNorm(_ input: Tensor, normalizedRank: Int, weight: Tensor?, bias: Tensor?) {
        guard normalizedRank >= 1, normalizedRank <= input.rank else {
            fatalError("layerNorm: normalizedRank \(normalizedRank) is out of range for input shape \(input.shape)")
        }
        let normalizedShape = Array(input.shape.suffix(normalizedRank))
        if let weight, weight.shape != normalizedShape {
            fatalError("layerNorm: weight shape \(weight.shape) must be \(normalizedShape) for input shape \(input.shape)")
        }
        if let bias, bias.shape != normalizedShape {
            fatalError("layerNorm: bias shape \(bias.shape) must be \(normalizedShape) for input shape \(input.shape)")
        }
    }

    /// `gradient` with exactly `reference`'s strides (a copy when they differ).
    static func matchingLayout(_ gradient: Tensor, _ reference: Tensor) -> Tensor {
        withStrides(gradient, reference.strides)
    }
}
