import Foundation

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

    /// Group norm of `input` (then SiLU when `silu`: `groupNormSiLU`'s forward in the same pass),
    /// with each (sample, group)'s mean and 1/√(var + ε).
    static func forward(input: Tensor, channelsLast: Bool, groupCount: Int, weight: Tensor?, bias: Tensor?, epsilon: Float,
                        silu: Bool = false) -> (output: Tensor, mean: Tensor, inverseStandardDeviation: Tensor) {
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
                        NormalizationMath.scaleShift(x + start, y + start, spatial, scale: scale, shift: shift, silu: silu)
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
                                            channels: channels, scale: scale, shift: shift, silu: silu)
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
