import Foundation

/// Separable resampling with a triangle (bilinear) filter, as Pillow's
/// `Image.resize(…, BILINEAR)` does: when shrinking, the filter widens by the
/// scale factor so every input pixel contributes (antialiasing); when enlarging,
/// or with antialiasing off, it is plain bilinear interpolation at pixel centres
/// (PyTorch's `interpolate(mode="bilinear", align_corners=False)`).
enum Resampling {
    /// For one output position: the first input index and the weights of the inputs from there.
    struct Taps {
        let start: Int
        let weights: [Float]
    }

    /// The taps of every output position along an axis of `inputSize` resized to `outputSize`.
    static func taps(inputSize: Int, outputSize: Int, antialias: Bool) -> [Taps] {
        let scale = Double(inputSize) / Double(outputSize)
        let filterScale = antialias ? Swift.max(scale, 1) : 1
        let support = filterScale
        return (0..<outputSize).map { output in
            let center = (Double(output) + 0.5) * scale
            let first = Swift.max(Int(center - support + 0.5), 0)
            let last = Swift.min(Int(center + support + 0.5), inputSize)
            var weights: [Double] = []
            for input in first..<Swift.max(last, first) {
                let distance = abs((Double(input) - center + 0.5) / filterScale)
                weights.append(Swift.max(0, 1 - distance))
            }
            let total = weights.reduce(0, +)
            if total <= 0 {
                // Only when the window holds no positive weight: take the nearest input.
                let nearest = Swift.min(Swift.max(Int(center), 0), inputSize - 1)
                return Taps(start: nearest, weights: [1])
            }
            return Taps(start: first, weights: weights.map { Float($0 / total) })
        }
    }

    /// `planes` planes of `height × width` values resized to `newHeight × newWidth`.
    static func resize(_ values: [Float], planes: Int, height: Int, width: Int,
                       newHeight: Int, newWidth: Int, antialias: Bool) -> [Float] {
        let columns = taps(inputSize: width, outputSize: newWidth, antialias: antialias)
        let rows = taps(inputSize: height, outputSize: newHeight, antialias: antialias)
        // Horizontal pass: planes × height × newWidth.
        var horizontal = [Float](repeating: 0, count: planes * height * newWidth)
        for plane in 0..<planes {
            for row in 0..<height {
                let source = (plane * height + row) * width
                let target = (plane * height + row) * newWidth
                for column in 0..<newWidth {
                    let tap = columns[column]
                    var sum: Float = 0
                    for (offset, weight) in tap.weights.enumerated() { sum += weight * values[source + tap.start + offset] }
                    horizontal[target + column] = sum
                }
            }
        }
        // Vertical pass: planes × newHeight × newWidth.
        var result = [Float](repeating: 0, count: planes * newHeight * newWidth)
        for plane in 0..<planes {
            for row in 0..<newHeight {
                let tap = rows[row]
                let target = (plane * newHeight + row) * newWidth
                for (offset, weight) in tap.weights.enumerated() {
                    let source = (plane * height + tap.start + offset) * newWidth
                    for column in 0..<newWidth { result[target + column] += weight * horizontal[source + column] }
                }
            }
        }
        return result
    }
}
