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
        if gradient.dataType == .float32 && gradient.strides == reference.strides && gradient.isDense { return gradient }
        let copy = Tensor(uninitializedShape: reference.shape, strides: reference.strides)
        copyElements(from: gradient, into: copy)
        return copy
    }
}

// MARK: - Shared row kernels

/// Vector loops shared by the normalisation kernels.
enum NormalizationMath {
    typealias Vector = SIMD8<Float>

    /// Values per float lane block before flushing into Double.
    static let flushBlock = 512

    /// `Σ (x − pivot)` and `Σ (x − pivot)²` over a contiguous run.
    @inline(__always)
    static func shiftedMoments(_ x: UnsafePointer<Float>, _ count: Int, pivot: Float) -> (sum: Double, squares: Double) {
        var sum = 0.0, squares = 0.0
        let shift = Vector(repeating: pivot)
        var index = 0
        while index + 8 <= count {
            let end = Swift.min(count, index + flushBlock)
            var s0 = Vector(), s1 = Vector(), q0 = Vector(), q1 = Vector()
            while index + 16 <= end {
                let a = UnsafeRawPointer(x + index).loadUnaligned(as: Vector.self) - shift
                let b = UnsafeRawPointer(x + index + 8).loadUnaligned(as: Vector.self) - shift
                s0 += a; q0 = q0.addingProduct(a, a)
                s1 += b; q1 = q1.addingProduct(b, b)
                index += 16
            }
            if index + 8 <= end {
                let a = UnsafeRawPointer(x + index).loadUnaligned(as: Vector.self) - shift
                s0 += a; q0 = q0.addingProduct(a, a)
                index += 8
            }
            sum += Double((s0 + s1).sum())
            squares += Double((q0 + q1).sum())
        }
        while index < count {
            let value = Double(x[index] - pivot)
            sum += value
            squares += value * value
            index += 1
        }
        return (sum, squares)
    }

    /// `Σ g` and `Σ g·(x − mean)` over a contiguous run.
    @inline(__always)
    static func gradientMoments(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ count: Int, mean: Float) -> (sum: Double, centered: Double) {
        var sum = 0.0, centered = 0.0
        let shift = Vector(repeating: mean)
        var index = 0
        while index + 8 <= count {
            let end = Swift.min(count, index + flushBlock)
            var s0 = Vector(), s1 = Vector(), c0 = Vector(), c1 = Vector()
            while index + 16 <= end {
                let ga = UnsafeRawPointer(g + index).loadUnaligned(as: Vector.self)
                let gb = UnsafeRawPointer(g + index + 8).loadUnaligned(as: Vector.self)
                let xa = UnsafeRawPointer(x + index).loadUnaligned(as: Vector.self) - shift
                let xb = UnsafeRawPointer(x + index + 8).loadUnaligned(as: Vector.self) - shift
                s0 += ga; c0 = c0.addingProduct(ga, xa)
                s1 += gb; c1 = c1.addingProduct(gb, xb)
                index += 16
            }
            if index + 8 <= end {
                let ga = UnsafeRawPointer(g + index).loadUnaligned(as: Vector.self)
                let xa = UnsafeRawPointer(x + index).loadUnaligned(as: Vector.self) - shift
                s0 += ga; c0 = c0.addingProduct(ga, xa)
                index += 8
            }
            sum += Double((s0 + s1).sum())
            centered += Double((c0 + c1).sum())
        }
        while index < count {
            sum += Double(g[index])
            centered += Double(g[index]) * Double(x[index] - mean)
            index += 1
        }
        return (sum, centered)
    }

    /// `y = x · scale + shift` over a contiguous run.
    @inline(__always)
    static func scaleShift(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ count: Int, scale: Float, shift: Float) {
        let a = Vector(repeating: scale), b = Vector(repeating: shift)
        var index = 0
        while index + 8 <= count {
            let value = UnsafeRawPointer(x + index).loadUnaligned(as: Vector.self)
            UnsafeMutableRawPointer(y + index).storeBytes(of: b.addingProduct(value, a), as: Vector.self)
            index += 8
        }
        while index < count {
            y[index] = x[index] * scale + shift
            index += 1
        }
    }

    /// `dx = a·g + c·(x − mean) + d` over a contiguous run.
    @inline(__always)
    static func inputGradient(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, _ count: Int,
                              a: Float, c: Float, mean: Float, d: Float) {
        let va = Vector(repeating: a), vc = Vector(repeating: c), vm = Vector(repeating: mean), vd = Vector(repeating: d)
        var index = 0
        while index + 8 <= count {
            let gv = UnsafeRawPointer(g + index).loadUnaligned(as: Vector.self)
            let xv = UnsafeRawPointer(x + index).loadUnaligned(as: Vector.self)
            let value = vd.addingProduct(gv, va).addingProduct(xv - vm, vc)
            UnsafeMutableRawPointer(dx + index).storeBytes(of: value, as: Vector.self)
            index += 8
        }
        while index < count {
            dx[index] = a * g[index] + c * (x[index] - mean) + d
            index += 1
        }
    }

    /// Mean and `1/√(var + ε)` from shifted sums over `count` values.
    @inline(__always)
    static func statistics(sum: Double, squares: Double, count: Int, pivot: Float, epsilon: Float) -> (mean: Float, inverseStandardDeviation: Float) {
        let shiftedMean = sum / Double(count)
        let variance = Swift.max(squares / Double(count) - shiftedMean * shiftedMean, 0)
        return (Float(Double(pivot) + shiftedMean), Float(1 / (variance + Double(epsilon)).squareRoot()))
    }
}

// MARK: - Group norm kernels

enum GroupNormKernel {
    typealias Vector = SIMD8<Float>

    /// Pieces each channels-last sample is split into so that `batch × pieces`
    /// keeps every worker busy.
    static func channelsLastPieces(batch: Int, pixels: Int) -> Int {
        let threads = Parallel.threadCount
        if threads <= 1 || batch % threads == 0 || batch >= 4 * threads { return 1 }
        let wanted = (4 * threads + batch - 1) / batch
        return Swift.max(1, Swift.min(wanted, pixels / 64))
    }

    static func forward(input: Tensor, channelsLast: Bool, groupCount: Int, weight: Tensor?, bias: Tensor?, epsilon: Float)
        -> (output: Tensor, mean: Tensor, inverseStandardDeviation: Tensor) {
        let batch = input.shape[0], channels = input.shape[1]
        let spatial = input.shape.dropFirst(2).reduce(1, *)
        let output = Tensor(uninitializedShape: input.shape, strides: channelsLast ? input.strides : Shape.contiguousStrides(input.shape))
        let mean = Tensor(uninitializedShape: [batch * groupCount])
        let inverse = Tensor(uninitializedShape: [batch * groupCount])
        let x = UnsafePointer(input.floatPointer), y = output.floatPointer
        let meanPointer = mean.floatPointer, inversePointer = inverse.floatPointer
        let gamma = weight.map { UnsafePointer($0.floatPointer) }
        let beta = bias.map { UnsafePointer($0.floatPointer) }
        let groupChannels = channels / groupCount
        let groupSize = groupChannels * spatial

        if !channelsLast {
            Parallel.forEach(batch * groupCount, grain: Swift.max(1, 4096 / Swift.max(groupSize, 1))) { range in
                for item in range {
                    let base = item * groupSize
                    let moments = NormalizationMath.shiftedMoments(x + base, groupSize, pivot: x[base])
                    let (average, inverseDeviation) = NormalizationMath.statistics(
                        sum: moments.sum, squares: moments.squares, count: groupSize, pivot: x[base], epsilon: epsilon)
                    meanPointer[item] = average
                    inversePointer[item] = inverseDeviation
                    let firstChannel = (item % groupCount) * groupChannels
                    for channelIndex in 0..<groupChannels {
                        let channel = firstChannel + channelIndex
                        let scale = inverseDeviation * (gamma?[channel] ?? 1)
                        let shift = (beta?[channel] ?? 0) - average * scale
                        let start = base + channelIndex * spatial
                        NormalizationMath.scaleShift(x + start, y + start, spatial, scale: scale, shift: shift)
                    }
                }
            }
            return (output, mean, inverse)
        }

        // Channels-last: each sample is `spatial` rows of `channels` values.
        let pieces = channelsLastPieces(batch: batch, pixels: spatial)
        let sampleSize = spatial * channels
        // Per-channel pivots (the first pixel) and shifted sums, per (sample, piece).
        let channelSums = UnsafeMutablePointer<Double>.allocate(capacity: 2 * batch * pieces * channels)
        defer { channelSums.deallocate() }

        func pieceRange(_ piece: Int) -> Range<Int> { (spatial * piece / pieces)..<(spatial * (piece + 1) / pieces) }

        func accumulate(sample: Int, piece: Int) {
            let sums = channelSums + 2 * (sample * pieces + piece) * channels
            ChannelsLastMath.shiftedChannelMoments(x + sample * sampleSize, pixels: pieceRange(piece), channels: channels,
                                                   pivots: x + sample * sampleSize, sums: sums, squares: sums + channels)
        }

        func combine(sample: Int) {
            let pivots = x + sample * sampleSize
            for group in 0..<groupCount {
                // Σ over the group of Σ (x − p_c) and Σ (x − p_c)², re-centred on the group mean.
                var total = 0.0
                for channel in (group * groupChannels)..<((group + 1) * groupChannels) {
                    var channelSum = 0.0
                    for piece in 0..<pieces { channelSum += channelSums[2 * (sample * pieces + piece) * channels + channel] }
                    total += Double(pivots[channel]) * Double(spatial) + channelSum
                }
                let average = total / Double(groupSize)
                var squares = 0.0
                for channel in (group * groupChannels)..<((group + 1) * groupChannels) {
                    var channelSum = 0.0, channelSquares = 0.0
                    for piece in 0..<pieces {
                        let sums = channelSums + 2 * (sample * pieces + piece) * channels
                        channelSum += sums[channel]
                        channelSquares += sums[channels + channel]
                    }
                    let offset = Double(pivots[channel]) - average
                    squares += channelSquares + 2 * offset * channelSum + Double(spatial) * offset * offset
                }
                let variance = Swift.max(squares / Double(groupSize), 0)
                meanPointer[sample * groupCount + group] = Float(average)
                inversePointer[sample * groupCount + group] = Float(1 / (variance + Double(epsilon)).squareRoot())
            }
        }

        func apply(sample: Int, piece: Int, scale: UnsafeMutablePointer<Float>, shift: UnsafeMutablePointer<Float>) {
            for channel in 0..<channels {
                let item = sample * groupCount + channel / groupChannels
                scale[channel] = inversePointer[item] * (gamma?[channel] ?? 1)
                shift[channel] = (beta?[channel] ?? 0) - meanPointer[item] * scale[channel]
            }
            ChannelsLastMath.scaleShiftRows(x + sample * sampleSize, y + sample * sampleSize, pixels: pieceRange(piece),
                                            channels: channels, scale: scale, shift: shift)
        }

        if pieces == 1 {
            Parallel.forEach(batch) { range in
                let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 2 * channels)
                defer { scratch.deallocate() }
                for sample in range {
                    accumulate(sample: sample, piece: 0)
                    combine(sample: sample)
                    apply(sample: sample, piece: 0, scale: scratch, shift: scratch + channels)
                }
            }
        } else {
            Parallel.forEach(batch * pieces) { range in
                for item in range { accumulate(sample: item / pieces, piece: item % pieces) }
            }
            for sample in 0..<batch { combine(sample: sample) }
            Parallel.forEach(batch * pieces) { range in
                let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 2 * channels)
                defer { scratch.deallocate() }
                for item in range { apply(sample: item / pieces, piece: item % pieces, scale: scratch, shift: scratch + channels) }
            }
        }
        return (output, mean, inverse)
    }

    /// Gradients of group norm. `input` and `gradient` share a layout; returns
    /// (d input or nil, d weight or nil, d bias or nil).
    static func backward(input: Tensor, gradient: Tensor, channelsLast: Bool, groupCount: Int, weight: Tensor?,
                         mean: Tensor, inverseStandardDeviation: Tensor,
                         needsInput: Bool, needsWeight: Bool, needsBias: Bool) -> (Tensor?, Tensor?, Tensor?) {
        let batch = input.shape[0], channels = input.shape[1]
        let spatial = input.shape.dropFirst(2).reduce(1, *)
        let groupChannels = channels / groupCount
        let groupSize = groupChannels * spatial
        let inputGradient = needsInput ? Tensor(uninitializedShape: input.shape, strides: input.strides) : nil
        let x = UnsafePointer(input.floatPointer), g = UnsafePointer(gradient.floatPointer)
        let dx = inputGradient?.floatPointer
        let meanPointer = UnsafePointer(mean.floatPointer), inversePointer = UnsafePointer(inverseStandardDeviation.floatPointer)
        let gamma = weight.map { UnsafePointer($0.floatPointer) }
        // Per (sample, channel): Σ g and Σ g·(x − mean).
        let channelSums = UnsafeMutablePointer<Double>.allocate(capacity: batch * channels)
        let channelCentered = UnsafeMutablePointer<Double>.allocate(capacity: batch * channels)
        defer { channelSums.deallocate(); channelCentered.deallocate() }

        /// The coefficients of `dx = a_c·g + c·(x − mean) + d` for one (sample, group).
        func coefficients(sample: Int, group: Int) -> (c: Float, d: Float) {
            let item = sample * groupCount + group
            let inverseDeviation = Double(inversePointer[item])
            var weightedSum = 0.0, weightedCentered = 0.0
            for channel in (group * groupChannels)..<((group + 1) * groupChannels) {
                let scale = Double(gamma?[channel] ?? 1)
                weightedSum += scale * channelSums[sample * channels + channel]
                weightedCentered += scale * channelCentered[sample * channels + channel]
            }
            let count = Double(groupSize)
            let c = -inverseDeviation * inverseDeviation * inverseDeviation * weightedCentered / count
            let d = -inverseDeviation * weightedSum / count
            return (Float(c), Float(d))
        }

        if !channelsLast {
            Parallel.forEach(batch * groupCount, grain: Swift.max(1, 4096 / Swift.max(groupSize, 1))) { range in
                for item in range {
                    let sample = item / groupCount, group = item % groupCount
                    let average = meanPointer[item]
                    let base = item * groupSize
                    for channelIndex in 0..<groupChannels {
                        let start = base + channelIndex * spatial
                        let moments = NormalizationMath.gradientMoments(g + start, x + start, spatial, mean: average)
                        let channel = group * groupChannels + channelIndex
                        channelSums[sample * channels + channel] = moments.sum
                        channelCentered[sample * channels + channel] = moments.centered
                    }
                    guard let dx else { continue }
                    let (c, d) = coefficients(sample: sample, group: group)
                    for channelIndex in 0..<groupChannels {
                        let channel = group * groupChannels + channelIndex
                        let start = base + channelIndex * spatial
                        NormalizationMath.inputGradient(g + start, x + start, dx + start, spatial,
                                                        a: inversePointer[item] * (gamma?[channel] ?? 1), c: c, mean: average, d: d)
                    }
                }
            }
        } else {
            let pieces = channelsLastPieces(batch: batch, pixels: spatial)
            let sampleSize = spatial * channels
            let partials = UnsafeMutablePointer<Double>.allocate(capacity: 2 * batch * pieces * channels)
            defer { partials.deallocate() }
            func pieceRange(_ piece: Int) -> Range<Int> { (spatial * piece / pieces)..<(spatial * (piece + 1) / pieces) }

            func expandMeans(sample: Int, into means: UnsafeMutablePointer<Float>) {
                for channel in 0..<channels { means[channel] = meanPointer[sample * groupCount + channel / groupChannels] }
            }
            func accumulate(sample: Int, piece: Int, means: UnsafeMutablePointer<Float>) {
                let sums = partials + 2 * (sample * pieces + piece) * channels
                ChannelsLastMath.gradientChannelMoments(g + sample * sampleSize, x + sample * sampleSize, pixels: pieceRange(piece),
                                                        channels: channels, means: means, sums: sums, centered: sums + channels)
            }
            func combine(sample: Int) {
                for channel in 0..<channels {
                    var sum = 0.0, centered = 0.0
                    for piece in 0..<pieces {
                        let sums = partials + 2 * (sample * pieces + piece) * channels
                        sum += sums[channel]
                        centered += sums[channels + channel]
                    }
                    channelSums[sample * channels + channel] = sum
                    channelCentered[sample * channels + channel] = centered
                }
            }
            func apply(sample: Int, piece: Int, scratch: UnsafeMutablePointer<Float>) {
                guard let dx else { return }
                let (a, c, means, d) = (scratch, scratch + channels, scratch + 2 * channels, scratch + 3 * channels)
                expandMeans(sample: sample, into: means)
                for group in 0..<groupCount {
                    let (groupC, groupD) = coefficients(sample: sample, group: group)
                    for channel in (group * groupChannels)..<((group + 1) * groupChannels) {
                        a[channel] = inversePointer[sample * groupCount + group] * (gamma?[channel] ?? 1)
                        c[channel] = groupC
                        d[channel] = groupD
                    }
                }
                ChannelsLastMath.inputGradientRows(g + sample * sampleSize, x + sample * sampleSize, dx + sample * sampleSize,
                                                   pixels: pieceRange(piece), channels: channels, a: a, c: c, means: means, d: d)
            }

            if pieces == 1 {
                Parallel.forEach(batch) { range in
                    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 4 * channels)
                    defer { scratch.deallocate() }
                    for sample in range {
                        expandMeans(sample: sample, into: scratch)
                        accumulate(sample: sample, piece: 0, means: scratch)
                        combine(sample: sample)
                        apply(sample: sample, piece: 0, scratch: scratch)
                    }
                }
            } else {
                Parallel.forEach(batch * pieces) { range in
                    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: channels)
                    defer { scratch.deallocate() }
                    for item in range {
                        expandMeans(sample: item / pieces, into: scratch)
                        accumulate(sample: item / pieces, piece: item % pieces, means: scratch)
                    }
                }
                for sample in 0..<batch { combine(sample: sample) }
                if dx != nil {
                    Parallel.forEach(batch * pieces) { range in
                        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 4 * channels)
                        defer { scratch.deallocate() }
                        for item in range { apply(sample: item / pieces, piece: item % pieces, scratch: scratch) }
                    }
                }
            }
        }

        // d weight_c = Σ_n rstd·Σ g·(x − mean); d bias_c = Σ_n Σ g.
        var weightGradient: Tensor?
        var biasGradient: Tensor?
        if needsWeight {
            let result = Tensor(uninitializedShape: [channels])
            for channel in 0..<channels {
                var total = 0.0
                for sample in 0..<batch {
                    total += Double(inversePointer[sample * groupCount + channel / groupChannels]) * channelCentered[sample * channels + channel]
                }
                result.floatPointer[channel] = Float(total)
            }
            weightGradient = result
        }
        if needsBias {
            let result = Tensor(uninitializedShape: [channels])
            for channel in 0..<channels {
                var total = 0.0
                for sample in 0..<batch { total += channelSums[sample * channels + channel] }
                result.floatPointer[channel] = Float(total)
            }
            biasGradient = result
        }
        return (inputGradient, weightGradient, biasGradient)
    }
}

/// Row loops over channels-last samples: `pixels` rows of `channels` values.
enum ChannelsLastMath {
    typealias Vector = SIMD8<Float>
    /// Rows accumulated in float before flushing into Double.
    static let flushRows = 64

    /// Per channel `Σ (x − p_c)` and `Σ (x − p_c)²` over a range of rows, written (not added) to `sums`/`squares`.
    static func shiftedChannelMoments(_ x: UnsafePointer<Float>, pixels: Range<Int>, channels: Int, pivots: UnsafePointer<Float>,
                                      sums: UnsafeMutablePointer<Double>, squares: UnsafeMutablePointer<Double>) {
        sums.update(repeating: 0, count: channels)
        squares.update(repeating: 0, count: channels)
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * channels) { buffer in
            let floatSums = buffer.baseAddress!, floatSquares = floatSums + channels
            var row = pixels.lowerBound
            while row < pixels.upperBound {
                let end = Swift.min(pixels.upperBound, row + flushRows)
                floatSums.update(repeating: 0, count: 2 * channels)
                while row < end {
                    let values = x + row * channels
                    var channel = 0
                    while channel + 8 <= channels {
                        let value = UnsafeRawPointer(values + channel).loadUnaligned(as: Vector.self)
                            - UnsafeRawPointer(pivots + channel).loadUnaligned(as: Vector.self)
                        let s = UnsafeRawPointer(floatSums + channel).loadUnaligned(as: Vector.self) + value
                        let q = UnsafeRawPointer(floatSquares + channel).loadUnaligned(as: Vector.self).addingProduct(value, value)
                        UnsafeMutableRawPointer(floatSums + channel).storeBytes(of: s, as: Vector.self)
                        UnsafeMutableRawPointer(floatSquares + channel).storeBytes(of: q, as: Vector.self)
                        channel += 8
                    }
                    while channel < channels {
                        let value = values[channel] - pivots[channel]
                        floatSums[channel] += value
                        floatSquares[channel] += value * value
                        channel += 1
                    }
                    row += 1
                }
                for channel in 0..<channels {
                    sums[channel] += Double(floatSums[channel])
                    squares[channel] += Double(floatSquares[channel])
                }
            }
        }
    }

    /// Per channel `Σ g` and `Σ g·(x − mean_c)` over a range of rows, written to `sums`/`centered`.
    static func gradientChannelMoments(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, pixels: Range<Int>, channels: Int,
                                       means: UnsafePointer<Float>, sums: UnsafeMutablePointer<Double>, centered: UnsafeMutablePointer<Double>) {
        sums.update(repeating: 0, count: channels)
        centered.update(repeating: 0, count: channels)
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * channels) { buffer in
            let floatSums = buffer.baseAddress!, floatCentered = floatSums + channels
            var row = pixels.lowerBound
            while row < pixels.upperBound {
                let end = Swift.min(pixels.upperBound, row + flushRows)
                floatSums.update(repeating: 0, count: 2 * channels)
                while row < end {
                    let gradients = g + row * channels, values = x + row * channels
                    var channel = 0
                    while channel + 8 <= channels {
                        let gv = UnsafeRawPointer(gradients + channel).loadUnaligned(as: Vector.self)
                        let xv = UnsafeRawPointer(values + channel).loadUnaligned(as: Vector.self)
                            - UnsafeRawPointer(means + channel).loadUnaligned(as: Vector.self)
                        let s = UnsafeRawPointer(floatSums + channel).loadUnaligned(as: Vector.self) + gv
                        let c = UnsafeRawPointer(floatCentered + channel).loadUnaligned(as: Vector.self).addingProduct(gv, xv)
                        UnsafeMutableRawPointer(floatSums + channel).storeBytes(of: s, as: Vector.self)
                        UnsafeMutableRawPointer(floatCentered + channel).storeBytes(of: c, as: Vector.self)
                        channel += 8
                    }
                    while channel < channels {
                        floatSums[channel] += gradients[channel]
                        floatCentered[channel] += gradients[channel] * (values[channel] - means[channel])
                        channel += 1
                    }
                    row += 1
                }
                for channel in 0..<channels {
                    sums[channel] += Double(floatSums[channel])
                    centered[channel] += Double(floatCentered[channel])
                }
            }
        }
    }

    /// `y = x · scale_c + shift_c` over a range of rows.
    static func scaleShiftRows(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, pixels: Range<Int>, channels: Int,
                               scale: UnsafePointer<Float>, shift: UnsafePointer<Float>) {
        for row in pixels {
            let values = x + row * channels, out = y + row * channels
            var channel = 0
            while channel + 8 <= channels {
                let value = UnsafeRawPointer(values + channel).loadUnaligned(as: Vector.self)
                let a = UnsafeRawPointer(scale + channel).loadUnaligned(as: Vector.self)
                let b = UnsafeRawPointer(shift + channel).loadUnaligned(as: Vector.self)
                UnsafeMutableRawPointer(out + channel).storeBytes(of: b.addingProduct(value, a), as: Vector.self)
                channel += 8
            }
            while channel < channels {
                out[channel] = values[channel] * scale[channel] + shift[channel]
                channel += 1
            }
        }
    }

    /// `dx = a_c·g + c_c·(x − mean_c) + d_c` over a range of rows.
    static func inputGradientRows(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
                                  pixels: Range<Int>, channels: Int, a: UnsafePointer<Float>, c: UnsafePointer<Float>,
                                  means: UnsafePointer<Float>, d: UnsafePointer<Float>) {
        for row in pixels {
            let gradients = g + row * channels, values = x + row * channels, out = dx + row * channels
            var channel = 0
            while channel + 8 <= channels {
                let gv = UnsafeRawPointer(gradients + channel).loadUnaligned(as: Vector.self)
                let xv = UnsafeRawPointer(values + channel).loadUnaligned(as: Vector.self)
                let av = UnsafeRawPointer(a + channel).loadUnaligned(as: Vector.self)
                let cv = UnsafeRawPointer(c + channel).loadUnaligned(as: Vector.self)
                let mv = UnsafeRawPointer(means + channel).loadUnaligned(as: Vector.self)
                let dv = UnsafeRawPointer(d + channel).loadUnaligned(as: Vector.self)
                UnsafeMutableRawPointer(out + channel).storeBytes(of: dv.addingProduct(gv, av).addingProduct(xv - mv, cv), as: Vector.self)
                channel += 8
            }
            while channel < channels {
                out[channel] = a[channel] * gradients[channel] + c[channel] * (values[channel] - means[channel]) + d[channel]
                channel += 1
            }
        }
    }
}

/// Saved state of a group norm: the input in its layout, the affine weight and per-(sample, group) statistics.
struct GroupNormBackward: BackwardContext {
    var name: String { "groupNorm" }

    func mappingSavedActivations(_ transform: (Tensor) -> Tensor) -> any BackwardContext {
        GroupNormBackward(input: transform(input), channelsLast: channelsLast, weight: weight, hasWeight: hasWeight, hasBias: hasBias,
                          groupCount: groupCount, mean: mean, inverseStandardDeviation: inverseStandardDeviation)
    }
    let input: Tensor
    let channelsLast: Bool
    let weight: Tensor?
    let hasWeight: Bool
    let hasBias: Bool
    let groupCount: Int
    let mean: Tensor
    let inverseStandardDeviation: Tensor

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        let weightIndex = hasWeight ? 1 : nil
        let biasIndex = hasBias ? (hasWeight ? 2 : 1) : nil
        let needsWeight = weightIndex.map { inputs[$0] != nil } ?? false
        let needsBias = biasIndex.map { inputs[$0] != nil } ?? false
        let (inputGradient, weightGradient, biasGradient) = GroupNormKernel.backward(
            input: input, gradient: Tensor.matchingLayout(gradient, input), channelsLast: channelsLast,
            groupCount: groupCount, weight: weight, mean: mean, inverseStandardDeviation: inverseStandardDeviation,
            needsInput: inputs[0] != nil, needsWeight: needsWeight, needsBias: needsBias)
        var result: [Tensor?] = [inputGradient]
        if hasWeight { result.append(weightGradient) }
        if hasBias { result.append(biasGradient) }
        return result
    }
}

// MARK: - Layer norm kernels

enum LayerNormKernel {
    typealias Vector = SIMD8<Float>

    static func forward(input: Tensor, width: Int, weight: Tensor?, bias: Tensor?, epsilon: Float)
        -> (output: Tensor, mean: Tensor, inverseStandardDeviation: Tensor) {
        let rows = input.count / width
        let output = Tensor(uninitializedShape: input.shape)
        let mean = Tensor(uninitializedShape: [rows])
        let inverse = Tensor(uninitializedShape: [rows])
        let x = UnsafePointer(input.floatPointer), y = output.floatPointer
        let meanPointer = mean.floatPointer, inversePointer = inverse.floatPointer
        let gamma = weight.map { UnsafePointer($0.floatPointer) }
        let beta = bias.map { UnsafePointer($0.floatPointer) }
        Parallel.forEach(rows, grain: Swift.max(1, 8192 / width)) { range in
            for row in range {
                let values = x + row * width, out = y + row * width
                let moments = NormalizationMath.shiftedMoments(values, width, pivot: values[0])
                let (average, inverseDeviation) = NormalizationMath.statistics(
                    sum: moments.sum, squares: moments.squares, count: width, pivot: values[0], epsilon: epsilon)
                meanPointer[row] = average
                inversePointer[row] = inverseDeviation
                let vm = Vector(repeating: average), vr = Vector(repeating: inverseDeviation)
                var index = 0
                while index + 8 <= width {
                    var value = (UnsafeRawPointer(values + index).loadUnaligned(as: Vector.self) - vm) * vr
                    if let gamma { value *= UnsafeRawPointer(gamma + index).loadUnaligned(as: Vector.self) }
                    if let beta { value += UnsafeRawPointer(beta + index).loadUnaligned(as: Vector.self) }
                    UnsafeMutableRawPointer(out + index).storeBytes(of: value, as: Vector.self)
                    index += 8
                }
                while index < width {
                    var value = (values[index] - average) * inverseDeviation
                    if let gamma { value *= gamma[index] }
                    if let beta { value += beta[index] }
                    out[index] = value
                    index += 1
                }
            }
        }
        return (output, mean, inverse)
    }

    static func backward(input: Tensor, gradient: Tensor, width: Int, weight: Tensor?, mean: Tensor, inverseStandardDeviation: Tensor,
                         needsInput: Bool, needsWeight: Bool, needsBias: Bool) -> (Tensor?, Tensor?, Tensor?) {
        let rows = input.count / width
        let inputGradient = needsInput ? Tensor(uninitializedShape: input.shape) : nil
        let x = UnsafePointer(input.floatPointer), g = UnsafePointer(gradient.floatPointer)
        let dx = inputGradient?.floatPointer
        let meanPointer = UnsafePointer(mean.floatPointer), inversePointer = UnsafePointer(inverseStandardDeviation.floatPointer)
        let gamma = weight.map { UnsafePointer($0.floatPointer) }
        let needsAffine = needsWeight || needsBias
        let chunks = Swift.max(1, Swift.min(Parallel.threadCount, rows / Swift.max(1, 4096 / width)))
        // Per chunk: Double partial sums of g·x̂ and g per column.
        let partials = UnsafeMutablePointer<Double>.allocate(capacity: needsAffine ? 2 * chunks * width : 1)
        defer { partials.deallocate() }
        let flushRows = 64

        Parallel.forEach(chunks) { range in
            let floatPartials = UnsafeMutablePointer<Float>.allocate(capacity: needsAffine ? 2 * width : 1)
            defer { floatPartials.deallocate() }
            for chunk in range {
                let chunkRows = (rows * chunk / chunks)..<(rows * (chunk + 1) / chunks)
                let weightSums = partials + 2 * chunk * width
                if needsAffine {
                    weightSums.update(repeating: 0, count: 2 * width)
                    floatPartials.update(repeating: 0, count: 2 * width)
                }
                for row in chunkRows {
                    let values = x + row * width, gradients = g + row * width
                    let average = meanPointer[row], inverseDeviation = inversePointer[row]
                    if let dx {
                        // Σ γg and Σ γg·(x − mean) over the row.
                        var sum = 0.0, centered = 0.0
                        if let gamma {
                            var s = Vector(), c = Vector()
                            let vm = Vector(repeating: average)
                            var index = 0
                            while index + 8 <= width {
                                let gv = UnsafeRawPointer(gradients + index).loadUnaligned(as: Vector.self)
                                    * UnsafeRawPointer(gamma + index).loadUnaligned(as: Vector.self)
                                s += gv
                                c = c.addingProduct(gv, UnsafeRawPointer(values + index).loadUnaligned(as: Vector.self) - vm)
                                index += 8
                            }
                            sum = Double(s.sum()); centered = Double(c.sum())
                            while index < width {
                                let gv = gradients[index] * gamma[index]
                                sum += Double(gv)
                                centered += Double(gv) * Double(values[index] - average)
                                index += 1
                            }
                        } else {
                            (sum, centered) = NormalizationMath.gradientMoments(gradients, values, width, mean: average)
                        }
                        let r = Double(inverseDeviation), n = Double(width)
                        let c = Float(-r * r * r * centered / n)
                        let d = Float(-r * sum / n)
                        let out = dx + row * width
                        if let gamma {
                            let vm = Vector(repeating: average), vc = Vector(repeating: c), vd = Vector(repeating: d), vr = Vector(repeating: inverseDeviation)
                            var index = 0
                            while index + 8 <= width {
                                let gv = UnsafeRawPointer(gradients + index).loadUnaligned(as: Vector.self)
                                    * UnsafeRawPointer(gamma + index).loadUnaligned(as: Vector.self)
                                let xv = UnsafeRawPointer(values + index).loadUnaligned(as: Vector.self) - vm
                                UnsafeMutableRawPointer(out + index).storeBytes(of: vd.addingProduct(gv, vr).addingProduct(xv, vc), as: Vector.self)
                                index += 8
                            }
                            while index < width {
                                out[index] = inverseDeviation * gamma[index] * gradients[index] + c * (values[index] - average) + d
                                index += 1
                            }
                        } else {
                            NormalizationMath.inputGradient(gradients, values, out, width, a: inverseDeviation, c: c, mean: average, d: d)
                        }
                    }
                    if needsAffine {
                        let fw = floatPartials, fb = floatPartials + width
                        let vm = Vector(repeating: average), vr = Vector(repeating: inverseDeviation)
                        var index = 0
                        while index + 8 <= width {
                            let gv = UnsafeRawPointer(gradients + index).loadUnaligned(as: Vector.self)
                            let normalized = (UnsafeRawPointer(values + index).loadUnaligned(as: Vector.self) - vm) * vr
                            let w = UnsafeRawPointer(fw + index).loadUnaligned(as: Vector.self).addingProduct(gv, normalized)
                            let b = UnsafeRawPointer(fb + index).loadUnaligned(as: Vector.self) + gv
                            UnsafeMutableRawPointer(fw + index).storeBytes(of: w, as: Vector.self)
                            UnsafeMutableRawPointer(fb + index).storeBytes(of: b, as: Vector.self)
                            index += 8
                        }
                        while index < width {
                            fw[index] += gradients[index] * (values[index] - average) * inverseDeviation
                            fb[index] += gradients[index]
                            index += 1
                        }
                        if (row - chunkRows.lowerBound) % flushRows == flushRows - 1 || row == chunkRows.upperBound - 1 {
                            for index in 0..<(2 * width) { weightSums[index] += Double(floatPartials[index]) }
                            floatPartials.update(repeating: 0, count: 2 * width)
                        }
                    }
                }
            }
        }

        var weightGradient: Tensor?, biasGradient: Tensor?
        if needsWeight {
            let result = Tensor(uninitializedShape: [width])
            for index in 0..<width {
                var total = 0.0
                for chunk in 0..<chunks { total += partials[2 * chunk * width + index] }
                result.floatPointer[index] = Float(total)
            }
            weightGradient = result
        }
        if needsBias {
            let result = Tensor(uninitializedShape: [width])
            for index in 0..<width {
                var total = 0.0
                for chunk in 0..<chunks { total += partials[(2 * chunk + 1) * width + index] }
                result.floatPointer[index] = Float(total)
            }
            biasGradient = result
        }
        return (inputGradient, weightGradient, biasGradient)
    }
}

/// Saved state of a layer norm: the row-major input, the affine weight and per-row statistics.
struct LayerNormBackward: BackwardContext {
    var name: String { "layerNorm" }

    func mappingSavedActivations(_ transform: (Tensor) -> Tensor) -> any BackwardContext {
        LayerNormBackward(input: transform(input), width: width, weight: weight, normalizedShape: normalizedShape, hasWeight: hasWeight,
                          hasBias: hasBias, mean: mean, inverseStandardDeviation: inverseStandardDeviation)
    }
    let input: Tensor
    let width: Int
    let weight: Tensor?
    let normalizedShape: [Int]
    let hasWeight: Bool
    let hasBias: Bool
    let mean: Tensor
    let inverseStandardDeviation: Tensor

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        let weightIndex = hasWeight ? 1 : nil
        let biasIndex = hasBias ? (hasWeight ? 2 : 1) : nil
        let needsWeight = weightIndex.map { inputs[$0] != nil } ?? false
        let needsBias = biasIndex.map { inputs[$0] != nil } ?? false
        let (inputGradient, weightGradient, biasGradient) = LayerNormKernel.backward(
            input: input, gradient: gradient.contiguousData(), width: width, weight: weight,
            mean: mean, inverseStandardDeviation: inverseStandardDeviation,
            needsInput: inputs[0] != nil, needsWeight: needsWeight, needsBias: needsBias)
        var result: [Tensor?] = [inputGradient]
        if hasWeight { result.append(weightGradient?.reshapedView(normalizedShape)) }
        if hasBias { result.append(biasGradient?.reshapedView(normalizedShape)) }
        return result
    }
}
