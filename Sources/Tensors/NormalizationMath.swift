import Foundation

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

    /// `y = x · scale + shift` over a contiguous run (then `silu(y)` when `silu`).
    @inline(__always)
    static func scaleShift(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ count: Int, scale: Float, shift: Float,
                           silu: Bool = false) {
        let a = Vector(repeating: scale), b = Vector(repeating: shift)
        var index = 0
        while index + 8 <= count {
            let value = b.addingProduct(UnsafeRawPointer(x + index).loadUnaligned(as: Vector.self), a)
            UnsafeMutableRawPointer(y + index).storeBytes(of: silu ? value * VectorMath.sigmoid(value) : value, as: Vector.self)
            index += 8
        }
        while index < count {
            let value = x[index] * scale + shift
            y[index] = silu ? value / (1 + Foundation.exp(-value)) : value
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
