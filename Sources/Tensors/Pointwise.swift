import Foundation
#if arch(x86_64)
import _Builtin_intrinsics.intel
#endif

/// Differentiable one-input functions, applied elementwise.
public enum PointwiseFunction: String, CaseIterable, Sendable {
    case exp, log, sqrt, rsqrt, abs, sin, cos, tanh, sigmoid, relu, silu
    /// GELU with the exact error function.
    case geluExact
    /// GELU with the tanh approximation.
    case geluTanh
    /// CLIP's `x · sigmoid(1.702 x)`.
    case quickGelu
    /// arcsin on [-1, 1] (CLIP guidance's great-circle distance).
    case asin
}

extension PointwiseFunction {
    /// True when d f / d x is computed from the output alone (so backward keeps only the output).
    var derivativeUsesOutput: Bool {
        switch self {
        case .exp, .sqrt, .rsqrt, .tanh, .sigmoid: return true
        default: return false
        }
    }
}

/// Plain scalar definitions: the reference the vector kernels are tested against.
enum PointwiseReference {
    static let geluTanhScale: Float = 0.7978845608028654 // sqrt(2 / pi)

    static func value(_ function: PointwiseFunction, _ x: Float) -> Float {
        switch function {
        case .exp: return Foundation.exp(x)
        case .log: return Foundation.log(x)
        case .sqrt: return x.squareRoot()
        case .rsqrt: return 1 / x.squareRoot()
        case .abs: return Swift.abs(x)
        case .sin: return Foundation.sin(x)
        case .cos: return Foundation.cos(x)
        case .tanh: return Foundation.tanh(x)
        case .sigmoid: return 1 / (1 + Foundation.exp(-x))
        case .relu: return Swift.max(x, 0)
        case .silu: return x / (1 + Foundation.exp(-x))
        case .geluExact: return 0.5 * x * (1 + Foundation.erf(x * 0.7071067811865476))
        case .geluTanh:
            return 0.5 * x * (1 + Foundation.tanh(geluTanhScale * (x + 0.044715 * x * x * x)))
        case .quickGelu: return x / (1 + Foundation.exp(-1.702 * x))
        case .asin: return Foundation.asin(x)
        }
    }

    /// d f / d x at input `x` with output `y`.
    static func derivative(_ function: PointwiseFunction, _ x: Float, _ y: Float) -> Float {
        switch function {
        case .exp: return y
        case .log: return 1 / x
        case .sqrt: return 0.5 / y
        case .rsqrt: return -0.5 * y * y * y
        case .abs: return x > 0 ? 1 : (x < 0 ? -1 : 0)
        case .sin: return Foundation.cos(x)
        case .cos: return -Foundation.sin(x)
        case .tanh: return 1 - y * y
        case .sigmoid: return y * (1 - y)
        case .relu: return x > 0 ? 1 : 0
        case .silu:
            let s = 1 / (1 + Foundation.exp(-x))
            return s * (1 + x * (1 - s))
        case .geluExact:
            let cdf = 0.5 * (1 + Foundation.erf(x * 0.7071067811865476))
            let pdf = Foundation.exp(-0.5 * x * x) * 0.3989422804014327
            return cdf + x * pdf
        case .geluTanh:
            let inner = geluTanhScale * (x + 0.044715 * x * x * x)
            let t = Foundation.tanh(inner)
            return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * geluTanhScale * (1 + 3 * 0.044715 * x * x)
        case .quickGelu:
            let s = 1 / (1 + Foundation.exp(-1.702 * x))
            return s + 1.702 * x * s * (1 - s)
        case .asin: return 1 / (1 - x * x).squareRoot()
        }
    }
}

/// Vectorised versions of the hot functions (exp, sigmoid, SiLU, the exact GELU in `VectorMath+Normal.swift`).
enum VectorMath {
    typealias Vector = SIMD8<Float>

    /// exp(x) with a Cephes-style polynomial, about 1 ulp on [-87, 88].
    @inline(__always)
    static func exp(_ input: Vector) -> Vector {
        // Masked selects: SIMD `clamped(lowerBound:upperBound:)` compiles to a slow scalar loop.
        var x = input.replacing(with: -87.33, where: input .< -87.33)
        x.replace(with: 88.72, where: x .> 88.72)
        var n = x * 1.44269504088896341
        n.round(.toNearestOrEven)
        var r = x - n * 0.693359375
        r = r - n * -2.12194440e-4
        var p = Vector(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let y = p * (r * r) + r + 1
        // 2^n through the float's exponent bits (n + 1.5·2^23 puts n in the low bits).
        let magic = n + 12582912.0
        let exponentBits = (unsafeBitCast(magic, to: SIMD8<UInt32>.self) &- 0x4B40_0000 &+ 127) &<< 23
        var result = y * unsafeBitCast(exponentBits, to: Vector.self)
        result.replace(with: Vector(repeating: .infinity), where: input .> 88.72)
        result.replace(with: Vector(repeating: 0), where: input .< -87.33)
        result.replace(with: input, where: input .!= input)
        return result
    }

    /// 1 / (1 + e⁻ˣ), within 3·10⁻⁷ relative of the exact value where that is a normal float:
    /// e⁻ˣ with −x clamped to [−86, 88] (so it stays finite and its exponent field valid; below
    /// x = −87 the result is 0 or a denormal, above x = 86 it is 1 to an ulp), by `exp`'s range
    /// reduction and a degree-6 polynomial with none of `exp`'s edge handling (about 20
    /// vector operations instead of 35: SiLU over every ResNet activation is a tenth of a
    /// UNet forward pass). NaN stays NaN. `sigmoidReference` is the plain formula.
    @inline(__always)
    static func sigmoid(_ x: Vector) -> Vector {
        var argument = -x
        argument = argument.replacing(with: 88, where: argument .> 88)
        argument = argument.replacing(with: -86, where: argument .< -86)
        return reciprocal(1 + exponential(argument)).replacing(with: x, where: x .!= x)
    }

    /// 2ˣ with no edge handling, for −126 < x ≤ 0: x = n + f with n = round(x), 2ᶠ by a degree-5
    /// polynomial on [−½, ½] (relative error under 2·10⁻⁷ in float32, fitted on Chebyshev nodes),
    /// 2ⁿ added to the exponent bits. The attention kernels clamp or replace out-of-range inputs.
    @inline(__always)
    static func exp2Polynomial(_ x: Vector) -> Vector {
        let biased = x + roundingShifter
        let f = x - (biased - roundingShifter)
        var p = Vector(repeating: 1.3264722656458616e-3)
        p = Vector(repeating: 9.671512991189957e-3).addingProduct(p, f)
        p = Vector(repeating: 5.550733581185341e-2).addingProduct(p, f)
        p = Vector(repeating: 2.4022242426872253e-1).addingProduct(p, f)
        p = Vector(repeating: 6.931470036506653e-1).addingProduct(p, f)
        p = Vector(repeating: 1).addingProduct(p, f)
        return timesPowerOfTwo(p, biased: biased)
    }

    /// 1.5·2²³: adding it to a float of magnitude below 2²² rounds it to an integer n and leaves
    /// n in the low mantissa bits (`timesPowerOfTwo` reads them).
    static var roundingShifter: Vector {
        @inline(__always) get { Vector(repeating: 12582912) }
    }

    /// p · 2ⁿ where `biased` = n + `roundingShifter`: n added to p's exponent field (shifted left
    /// by 23, the shifter's own bits shift out). p · 2ⁿ must be a normal float.
    @inline(__always)
    static func timesPowerOfTwo(_ p: Vector, biased: Vector) -> Vector {
        let exponent = unsafeBitCast(biased, to: SIMD8<Int32>.self) &<< 23
        return unsafeBitCast(unsafeBitCast(p, to: SIMD8<Int32>.self) &+ exponent, to: Vector.self)
    }

    /// eᵃ for a already clamped to [−86, 88] (see `sigmoid`): a = n·ln 2 + r with |r| ≤ ln 2 / 2,
    /// eʳ by the polynomial, times 2ⁿ.
    @inline(__always)
    static func exponential(_ argument: Vector) -> Vector {
        let shifter = roundingShifter
        let biased = shifter.addingProduct(argument, Vector(repeating: 1.44269504088896341))
        let n = biased - shifter
        var r = argument.addingProduct(n, Vector(repeating: -0.693359375))
        r = r.addingProduct(n, Vector(repeating: 2.12194440e-4))
        var p = Vector(repeating: 1.3751407386735082e-3)
        p = Vector(repeating: 8.368915878236294e-3).addingProduct(p, r)
        p = Vector(repeating: 4.166953265666962e-2).addingProduct(p, r)
        p = Vector(repeating: 1.66665181517601e-1).addingProduct(p, r)
        p = Vector(repeating: 4.9999988079071045e-1).addingProduct(p, r)
        p = Vector(repeating: 1).addingProduct(p, r)
        p = Vector(repeating: 1).addingProduct(p, r)
        return timesPowerOfTwo(p, biased: biased)
    }

    /// 1/x for finite x ≥ 1 to about 1 ulp without a division: the hardware estimate
    /// (12 bits) and one Newton step (`sigmoidReference` divides instead; the tests compare the two).
    /// A vector division stalls the sigmoid loops: its latency is most of theirs.
    @inline(__always)
    static func reciprocal(_ x: Vector) -> Vector {
        #if arch(x86_64)
        let estimate = _mm256_rcp_ps(x)
        // e + e·(1 − x·e): the residual by one fused multiply-add rounds better than e·(2 − x·e).
        let residual = Vector(repeating: 1).addingProduct(-x, estimate)
        return estimate.addingProduct(estimate, residual)
        #else
        return 1 / x
        #endif
    }

    /// The plain sigmoid, 1 / (1 + e⁻ˣ) with a division: the reference for `sigmoid`.
    static func sigmoidReference(_ x: Vector) -> Vector {
        1 / (1 + exp(-x))
    }

    /// Applies `body` to `count` floats in chunks of 8, the tail padded.
    @inline(__always)
    static func map(_ source: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>, _ count: Int, _ body: (Vector) -> Vector) {
        var index = 0
        while index + 8 <= count {
            let value = UnsafeRawPointer(source + index).loadUnaligned(as: Vector.self)
            UnsafeMutableRawPointer(output + index).storeBytes(of: body(value), as: Vector.self)
            index += 8
        }
        if index < count {
            var padded = Vector(repeating: 0)
            for lane in 0..<(count - index) { padded[lane] = source[index + lane] }
            let value = body(padded)
            for lane in 0..<(count - index) { output[index + lane] = value[lane] }
        }
    }
}

extension Tensor {
    /// Applies a pointwise function, keeping this tensor's layout.
    public func apply(_ function: PointwiseFunction) -> Tensor {
        let input = denseData()
        let result = Tensor(uninitializedShape: shape, strides: input.strides)
        Tensor.pointwiseKernel(function, UnsafePointer(input.floatPointer), result.floatPointer, count)
        // Keep only what the derivative reads: the output for exp, sqrt, rsqrt, tanh and
        // sigmoid, the input for the rest.
        let savesOutput = function.derivativeUsesOutput
        return Tensor.record(result, .pointwise(function, input: savesOutput ? nil : input.detach(), output: savesOutput ? result.detach() : nil), inputs: [self])
    }

    static func pointwiseKernel(_ function: PointwiseFunction, _ source: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>, _ count: Int) {
        Parallel.forEach(count, grain: 8192) { range in
            let input = source + range.lowerBound
            let out = output + range.lowerBound
            let length = range.count
            switch function {
            case .exp: VectorMath.map(input, out, length) { VectorMath.exp($0) }
            case .sigmoid: VectorMath.map(input, out, length) { VectorMath.sigmoid($0) }
            case .silu: VectorMath.map(input, out, length) { $0 * VectorMath.sigmoid($0) }
            case .quickGelu: VectorMath.map(input, out, length) { $0 * VectorMath.sigmoid(1.702 * $0) }
            case .relu: VectorMath.map(input, out, length) { $0.replacing(with: 0, where: $0 .< 0) }
            case .geluExact: VectorMath.map(input, out, length) { VectorMath.geluExact($0) }
            default:
                for index in 0..<length { out[index] = PointwiseReference.value(function, input[index]) }
            }
        }
    }

    /// Gradient of a pointwise function: `gradient · f'(input)`.
    static func pointwiseBackward(_ function: PointwiseFunction, input: Tensor?, output: Tensor?, gradient: Tensor) -> Tensor {
        guard let saved = input ?? output else { fatalError("pointwise backward: nothing was saved") }
        let grad = gradient.strides == saved.strides && gradient.dataType == .float32 && gradient.isDense ? gradient : {
            let copy = Tensor(uninitializedShape: saved.shape, strides: saved.strides)
            copyElements(from: gradient, into: copy)
            return copy
        }()
        let result = Tensor(uninitializedShape: saved.shape, strides: saved.strides)
        // The missing one of x and y is never read by `derivative` for this function.
        let x = UnsafePointer((input ?? saved).floatPointer), y = UnsafePointer((output ?? saved).floatPointer)
        let (g, out) = (UnsafePointer(grad.floatPointer), result.floatPointer)
        Parallel.forEach(saved.count, grain: 8192) { range in
            switch function {
            case .silu:
                var index = range.lowerBound
                while index + 8 <= range.upperBound {
                    let value = UnsafeRawPointer(x + index).loadUnaligned(as: SIMD8<Float>.self)
                    let upstream = UnsafeRawPointer(g + index).loadUnaligned(as: SIMD8<Float>.self)
                    let sigmoid = VectorMath.sigmoid(value)
                    let result = upstream * sigmoid * (1 + value * (1 - sigmoid))
                    UnsafeMutableRawPointer(out + index).storeBytes(of: result, as: SIMD8<Float>.self)
                    index += 8
                }
                while index < range.upperBound {
                    let s = 1 / (1 + Foundation.exp(-x[index]))
                    out[index] = g[index] * s * (1 + x[index] * (1 - s))
                    index += 1
                }
            case .geluExact:
                var index = range.lowerBound
                while index + 8 <= range.upperBound {
                    let value = UnsafeRawPointer(x + index).loadUnaligned(as: SIMD8<Float>.self)
                    let upstream = UnsafeRawPointer(g + index).loadUnaligned(as: SIMD8<Float>.self)
                    UnsafeMutableRawPointer(out + index).storeBytes(of: upstream * VectorMath.geluExactDerivative(value), as: SIMD8<Float>.self)
                    index += 8
                }
                while index < range.upperBound {
                    out[index] = g[index] * PointwiseReference.derivative(function, x[index], y[index])
                    index += 1
                }
            case .sigmoid:
                for index in range { out[index] = g[index] * y[index] * (1 - y[index]) }
            case .relu:
                for index in range { out[index] = x[index] > 0 ? g[index] : 0 }
            default:
                for index in range { out[index] = g[index] * PointwiseReference.derivative(function, x[index], y[index]) }
            }
        }
        return result
    }

    public func exp() -> Tensor { apply(.exp) }
    public func log() -> Tensor { apply(.log) }
    public func sqrt() -> Tensor { apply(.sqrt) }
    public func rsqrt() -> Tensor { apply(.rsqrt) }
    public func abs() -> Tensor { apply(.abs) }
    public func sin() -> Tensor { apply(.sin) }
    public func cos() -> Tensor { apply(.cos) }
    public func tanh() -> Tensor { apply(.tanh) }
    public func sigmoid() -> Tensor { apply(.sigmoid) }
    public func relu() -> Tensor { apply(.relu) }
    public func silu() -> Tensor { apply(.silu) }
    /// GELU; `approximate: true` uses the tanh form.
    public func gelu(approximate: Bool = false) -> Tensor { apply(approximate ? .geluTanh : .geluExact) }
    public func quickGelu() -> Tensor { apply(.quickGelu) }
    /// arcsin, elementwise; the gradient 1/√(1 − x²) is infinite at ±1.
    public func asin() -> Tensor { apply(.asin) }
    public func square() -> Tensor { pow(2) }
}
