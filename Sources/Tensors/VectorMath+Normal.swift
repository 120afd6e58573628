/// The standard normal distribution for the exact GELU, in vectors of 8.
///
/// Φ(x) comes from erfc, computed as t·exp(−z² + P(t)) with t = 1 / (1 + z/2) and a degree-9
/// polynomial P (the Chebyshev fit of Numerical Recipes' `erfcc`, relative error under
/// 1.2·10⁻⁷ for every z ≥ 0), so Φ keeps its relative accuracy far into the negative tail
/// where GELU(x) = x·Φ(x) is tiny (within 2·10⁻⁶ of Double for x ≥ −3; beyond, the float32
/// z² adds about x²·6·10⁻⁸: 1.3·10⁻⁵ at x = −13, where GELU is 10⁻³⁷). `Foundation.erf`
/// (the plain reference) is a scalar call per element, 5–10 times slower.
extension VectorMath {
    /// erfc(z) for z ≥ 0 (NaN stays NaN; z above 10 gives 0, as erfc(10) ≈ 2·10⁻⁴⁵ does in float32).
    @inline(__always)
    static func complementaryErrorFunction(nonNegative input: Vector) -> Vector {
        let z = input.replacing(with: 10, where: input .> 10)
        // 1 + z/2 ≥ 1 and finite, as `reciprocal` needs.
        let t = reciprocal(Vector(repeating: 1).addingProduct(z, Vector(repeating: 0.5)))
        var p = Vector(repeating: 0.17087277)
        p = Vector(repeating: -0.82215223).addingProduct(p, t)
        p = Vector(repeating: 1.48851587).addingProduct(p, t)
        p = Vector(repeating: -1.13520398).addingProduct(p, t)
        p = Vector(repeating: 0.27886807).addingProduct(p, t)
        p = Vector(repeating: -0.18628806).addingProduct(p, t)
        p = Vector(repeating: 0.09678418).addingProduct(p, t)
        p = Vector(repeating: 0.37409196).addingProduct(p, t)
        p = Vector(repeating: 1.00002368).addingProduct(p, t)
        p = Vector(repeating: -1.26551223).addingProduct(p, t)
        return t * exp(p - z * z)
    }

    /// Φ(x), the standard normal distribution function: ½ erfc(−x/√2).
    @inline(__always)
    static func normalDistribution(_ x: Vector) -> Vector {
        let half = 0.5 * complementaryErrorFunction(nonNegative: abs(x) * 0.7071067811865476)
        // x ≥ 0: 1 − ½ erfc(x/√2); x < 0 (and NaN): ½ erfc(|x|/√2).
        return half.replacing(with: 1 - half, where: x .>= 0)
    }

    /// The exact GELU, x·Φ(x).
    @inline(__always)
    static func geluExact(_ x: Vector) -> Vector { x * normalDistribution(x) }

    /// d GELU / dx = Φ(x) + x·φ(x), φ(x) = e^(−x²/2) / √(2π).
    @inline(__always)
    static func geluExactDerivative(_ x: Vector) -> Vector { geluExactAndDerivative(x).derivative }

    /// GELU(x) and its derivative from one evaluation of Φ(x) (the fused GEGLU's backward needs both),
    /// each exactly as `geluExact` and `geluExactDerivative` give it.
    @inline(__always)
    static func geluExactAndDerivative(_ x: Vector) -> (value: Vector, derivative: Vector) {
        geluExactAndDerivative(x, distribution: normalDistribution(x))
    }

    /// The same from Φ(x) already known (kept by the forward pass): only the density's exponential left.
    @inline(__always)
    static func geluExactAndDerivative(_ x: Vector, distribution: Vector) -> (value: Vector, derivative: Vector) {
        let density = exp(-0.5 * x * x) * 0.3989422804014327
        return (x * distribution, distribution.addingProduct(x, density))
    }

    /// |x| lane by lane (clears the sign bit).
    @inline(__always)
    static func abs(_ x: Vector) -> Vector {
        unsafeBitCast(unsafeBitCast(x, to: SIMD8<UInt32>.self) & 0x7FFF_FFFF, to: Vector.self)
    }
}
