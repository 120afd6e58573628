import Foundation

extension Tensor {
    /// Mean squared error (PyTorch's `F.mse_loss`, reduction mean).
    ///
    /// `prediction` and `target` must have the same shape (no broadcasting).
    /// Returns a zero-dimensional tensor; differentiable in both arguments.
    public static func mseLoss(_ prediction: Tensor, _ target: Tensor) -> Tensor {
        elementwiseLoss(.squared, prediction, target)
    }

    /// Mean absolute error (PyTorch's `F.l1_loss`, reduction mean).
    ///
    /// `prediction` and `target` must have the same shape (no broadcasting).
    /// The gradient at equal values is zero (the sign function's).
    public static func l1Loss(_ prediction: Tensor, _ target: Tensor) -> Tensor {
        elementwiseLoss(.absolute, prediction, target)
    }

    /// Cross-entropy of `[N, classes]` logits against class indices (PyTorch's `F.cross_entropy`, reduction mean).
    ///
    /// Computed as the mean of `logsumexp(logits_i) − logits_i[target_i]` in one
    /// fused pass; the backward is `(softmax − onehot) / N`.
    public static func crossEntropy(logits: Tensor, targets: [Int]) -> Tensor {
        guard logits.rank == 2 else {
            fatalError("crossEntropy: logits must be [N, classes], got shape \(logits.shape)")
        }
        let (rows, classes) = (logits.shape[0], logits.shape[1])
        guard targets.count == rows else {
            fatalError("crossEntropy: \(targets.count) targets for logits of shape \(logits.shape)")
        }
        for (row, target) in targets.enumerated() where target < 0 || target >= classes {
            fatalError("crossEntropy: target \(target) at row \(row) is out of range for logits of shape \(logits.shape)")
        }
        let logProbabilities = softmaxKernel(logits, axis: 1, logarithm: true)
        let values = logProbabilities.floatPointer
        var total = 0.0
        for (row, target) in targets.enumerated() { total -= Double(values[row * classes + target]) }
        let result = Tensor(scalar: Float(total / Double(rows)))
        return record(result, .kernel(CrossEntropyBackward(logProbabilities: logProbabilities, targets: targets)), inputs: [logits])
    }

    /// Zeroes each element with probability `probability` and scales the rest by `1/(1-p)`; identity when not training.
    ///
    /// The keep/drop draws come from `generator` in row-major order, one
    /// uniform number per element (dropped when `uniform() < p`), so a seed
    /// gives the same mask on every run. `probability` must be in `[0, 1)`.
    ///
    /// With `parts` > 1 this tensor is part `part` of a larger one stacked along axis 0 from
    /// `parts` equal parts (a data-parallel rank's rows of the global batch): the draws are
    /// those of the whole larger tensor, and this part's mask is its rows, so `parts` ranks
    /// together draw one process's mask and every rank's generator ends in the same state.
    public func dropout(probability: Float, training: Bool = true, generator: inout RandomGenerator,
                        part: Int = 0, of parts: Int = 1) -> Tensor {
        guard probability >= 0 && probability < 1 else {
            fatalError("dropout: probability \(probability) must be in [0, 1) (input shape \(shape))")
        }
        precondition(parts >= 1 && part >= 0 && part < parts, "dropout: part \(part) of \(parts)")
        if !training || probability == 0 { return self }
        let keep = 1 / (1 - probability)
        let mask = Tensor(uninitializedShape: shape)
        let pointer = mask.floatPointer
        let count = count
        RandomReplay.draw(&generator) { generator in
            for _ in 0..<(part * count) { _ = generator.uniform() }
            for index in 0..<count { pointer[index] = generator.uniform() < probability ? 0 : keep }
            for _ in 0..<((parts - part - 1) * count) { _ = generator.uniform() }
        }
        return self * mask
    }

    enum ElementwiseLossKind: String {
        case squared = "mseLoss"
        case absolute = "l1Loss"
    }

    /// The fused mean of `(p − t)²` or `|p − t|`, summed in Double over worker chunks.
    static func elementwiseLoss(_ kind: ElementwiseLossKind, _ prediction: Tensor, _ target: Tensor) -> Tensor {
        guard prediction.shape == target.shape else {
            fatalError("\(kind.rawValue): prediction shape \(prediction.shape) and target shape \(target.shape) must match")
        }
        var left = prediction.denseData(), right = target.denseData()
        if left.strides != right.strides {
            left = left.contiguousData()
            right = right.contiguousData()
        }
        let total = prediction.count
        let (a, b) = (UnsafePointer(left.floatPointer), UnsafePointer(right.floatPointer))
        let chunks = Swift.max(1, Swift.min(Parallel.threadCount, total / 32768))
        var partials = [Double](repeating: 0, count: chunks)
        partials.withUnsafeMutableBufferPointer { sums in
            let sums = sums.baseAddress!
            Parallel.forEach(chunks) { range in
                for chunk in range {
                    let start = total * chunk / chunks, end = total * (chunk + 1) / chunks
                    var sum = 0.0
                    var index = start
                    while index < end {
                        let blockEnd = Swift.min(end, index + 1024)
                        var lanes = SIMD8<Float>()
                        while index + 8 <= blockEnd {
                            let difference = UnsafeRawPointer(a + index).loadUnaligned(as: SIMD8<Float>.self)
                                - UnsafeRawPointer(b + index).loadUnaligned(as: SIMD8<Float>.self)
                            switch kind {
                            case .squared: lanes = lanes.addingProduct(difference, difference)
                            case .absolute: lanes += difference.replacing(with: -difference, where: difference .< 0)
                            }
                            index += 8
                        }
                        sum += Double(lanes.sum())
                        while index < blockEnd {
                            let difference = Double(a[index] - b[index])
                            sum += kind == .squared ? difference * difference : Swift.abs(difference)
                            index += 1
                        }
                    }
                    sums[chunk] = sum
                }
            }
        }
        let result = Tensor(scalar: Float(partials.reduce(0, +) / Double(total)))
        return record(result, .kernel(ElementwiseLossBackward(kind: kind, prediction: left.detach(), target: right.detach())),
                      inputs: [prediction, target])
    }
}

/// Saved state of `mseLoss` / `l1Loss`: both operands in one shared layout.
struct ElementwiseLossBackward: BackwardContext {
    let kind: Tensor.ElementwiseLossKind
    let prediction: Tensor
    let target: Tensor
    var name: String { kind.rawValue }

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        let total = prediction.count
        let upstream = gradient.item / Float(total)
        let predictionGradient = Tensor(uninitializedShape: prediction.shape, strides: prediction.strides)
        let (a, b, out) = (UnsafePointer(prediction.floatPointer), UnsafePointer(target.floatPointer), predictionGradient.floatPointer)
        let kind = self.kind
        Parallel.forEach(total, grain: 32768) { range in
            switch kind {
            case .squared:
                let factor = 2 * upstream
                for index in range { out[index] = factor * (a[index] - b[index]) }
            case .absolute:
                for index in range {
                    let difference = a[index] - b[index]
                    out[index] = difference > 0 ? upstream : (difference < 0 ? -upstream : 0)
                }
            }
        }
        return [inputs[0] == nil ? nil : predictionGradient,
                inputs[1] == nil ? nil : predictionGradient.affine(scale: -1, shift: 0)]
    }
}

/// Saved state of `crossEntropy`: the log-probabilities and the targets.
struct CrossEntropyBackward: BackwardContext {
    var name: String { "crossEntropy" }
    let logProbabilities: Tensor
    let targets: [Int]

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        let (rows, classes) = (logProbabilities.shape[0], logProbabilities.shape[1])
        let factor = gradient.item / Float(rows)
        let result = Tensor(uninitializedShape: logProbabilities.shape)
        let (source, out) = (UnsafePointer(logProbabilities.floatPointer), result.floatPointer)
        // d logits = (softmax − onehot) · g / N
        Tensor.pointwiseKernel(.exp, source, out, result.count)
        Parallel.forEach(result.count, grain: 32768) { range in
            for index in range { out[index] *= factor }
        }
        for (row, target) in targets.enumerated() { out[row * classes + target] -= factor }
        return [result]
    }
}
