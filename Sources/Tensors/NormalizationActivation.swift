import Foundation

extension Tensor {
    /// `silu(groupNorm(x))` as one op, the pair every UNet ResNet block runs.
    ///
    /// Same values as the two ops in sequence, but backward keeps only the
    /// group norm's input and statistics: the normalised activations are
    /// recomputed instead of being stored (one activation tensor less per
    /// pair, about a quarter of a UNet's training memory).
    public func groupNormSiLU(groupCount: Int, weight: Tensor? = nil, bias: Tensor? = nil, epsilon: Float = 1e-5) -> Tensor {
        Tensor.validateGroupNorm(self, groupCount: groupCount, weight: weight, bias: bias)
        if count == 0 {
            return groupNorm(groupCount: groupCount, weight: weight, bias: bias, epsilon: epsilon).silu()
        }
        let channelsLast = layout == .channelsLast && dataType == .float32
        let input = channelsLast ? self : contiguousData()
        let weightData = weight?.contiguousData()
        let biasData = bias?.contiguousData()
        let (output, mean, inverseStandardDeviation) = GroupNormKernel.forward(
            input: input, channelsLast: channelsLast, groupCount: groupCount,
            weight: weightData, bias: biasData, epsilon: epsilon, silu: true)
        var inputs = [self]
        if let weight { inputs.append(weight) }
        if let bias { inputs.append(bias) }
        let normalization = GroupNormBackward(
            input: input.detach(), channelsLast: channelsLast, weight: weightData?.detach(),
            hasWeight: weight != nil, hasBias: bias != nil, groupCount: groupCount,
            mean: mean, inverseStandardDeviation: inverseStandardDeviation)
        return Tensor.record(output, .kernel(GroupNormSiLUBackward(
            normalization: normalization, bias: biasData?.detach(), epsilon: epsilon)), inputs: inputs)
    }
}

/// Backward of `groupNormSiLU`: the gradient through SiLU at the group norm's output,
/// recomputed element by element from the saved input and statistics
/// (`GroupNormKernel.siluGradient`, one pass), then through the group norm.
struct GroupNormSiLUBackward: BackwardContext {
    var name: String { "groupNormSiLU" }
    let normalization: GroupNormBackward
    let bias: Tensor?
    let epsilon: Float

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        let input = normalization.input
        let throughActivation = GroupNormKernel.siluGradient(
            input: input, gradient: Tensor.matchingLayout(gradient, input), channelsLast: normalization.channelsLast,
            groupCount: normalization.groupCount,
            weight: normalization.weight, bias: bias, mean: normalization.mean,
            inverseStandardDeviation: normalization.inverseStandardDeviation)
        return normalization.backward(throughActivation, inputs: inputs)
    }
}

extension GroupNormKernel {
    /// `g · silu′(y)` with `y = (x − mean)·rstd·γ + β` the group norm's output: the gradient that
    /// reaches the group norm from a SiLU after it, in `input`'s layout (contiguous or
    /// channels-last), computed in one pass from the saved statistics (no second pass over
    /// the input for the moments, no normalised tensor written and read back).
    /// silu′(y) = σ(y)·(1 + y·(1 − σ(y))).
    static func siluGradient(input: Tensor, gradient: Tensor, channelsLast: Bool, groupCount: Int, weight: Tensor?, bias: Tensor?,
                             mean: Tensor, inverseStandardDeviation: Tensor) -> Tensor {
        let batch = input.shape[0], channels = input.shape[1]
        let spatial = input.shape.dropFirst(2).reduce(1, *)
        let groupChannels = channels / groupCount
        let result = Tensor(uninitializedShape: input.shape, strides: input.strides)
        let x = UnsafePointer(input.floatPointer), g = UnsafePointer(gradient.floatPointer), out = result.floatPointer
        let gamma = weight.map { UnsafePointer($0.floatPointer) }, beta = bias.map { UnsafePointer($0.floatPointer) }
        let meanPointer = UnsafePointer(mean.floatPointer), inversePointer = UnsafePointer(inverseStandardDeviation.floatPointer)
        // y = x·scale + shift per (sample, channel).
        let coefficients = UnsafeMutablePointer<Float>.allocate(capacity: 2 * batch * channels)
        defer { coefficients.deallocate() }
        let scales = coefficients, shifts = coefficients + batch * channels
        for sample in 0..<batch {
            for channel in 0..<channels {
                let item = sample * groupCount + channel / groupChannels
                let scale = inversePointer[item] * (gamma?[channel] ?? 1)
                scales[sample * channels + channel] = scale
                shifts[sample * channels + channel] = (beta?[channel] ?? 0) - meanPointer[item] * scale
            }
        }
        @inline(__always)
        func gradientVector(_ gv: Vector, _ xv: Vector, _ scale: Vector, _ shift: Vector) -> Vector {
            let y = shift.addingProduct(xv, scale)
            let sigmoid = VectorMath.sigmoid(y)
            return gv * sigmoid * (1 + y * (1 - sigmoid))
        }
        @inline(__always)
        func gradientScalar(_ gradient: Float, _ value: Float, _ scale: Float, _ shift: Float) -> Float {
            let y = value * scale + shift
            let sigmoid = 1 / (1 + Foundation.exp(-y))
            return gradient * sigmoid * (1 + y * (1 - sigmoid))
        }
        if !channelsLast {
            // Runs of `spatial` values per (sample, channel).
            Parallel.forEach(batch * channels, grain: Swift.max(1, 4096 / Swift.max(spatial, 1))) { range in
                for item in range {
                    let base = item * spatial
                    let scale = Vector(repeating: scales[item]), shift = Vector(repeating: shifts[item])
                    var index = 0
                    while index + 8 <= spatial {
                        let value = gradientVector(MicroKernels.load(g + base + index), MicroKernels.load(x + base + index), scale, shift)
                        MicroKernels.store(value, out + base + index)
                        index += 8
                    }
                    while index < spatial {
                        out[base + index] = gradientScalar(g[base + index], x[base + index], scales[item], shifts[item])
                        index += 1
                    }
                }
            }
            return result
        }
        // Channels-last: rows of `channels` values, `spatial` rows per sample.
        Parallel.forEach(batch * spatial, grain: Swift.max(1, 4096 / channels)) { range in
            for row in range {
                let base = row * channels, sample = row / spatial
                let rowScales = scales + sample * channels, rowShifts = shifts + sample * channels
                var channel = 0
                while channel + 8 <= channels {
                    let value = gradientVector(MicroKernels.load(g + base + channel), MicroKernels.load(x + base + channel),
                                               MicroKernels.load(rowScales + channel), MicroKernels.load(rowShifts + channel))
                    MicroKernels.store(value, out + base + channel)
                    channel += 8
                }
                while channel < channels {
                    out[base + channel] = gradientScalar(g[base + channel], x[base + channel], rowScales[channel], rowShifts[channel])
                    channel += 1
                }
            }
        }
        return result
    }
}
