import Foundation

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
