import Foundation

/// A seeded random number generator whose numbers are the same on every run
/// and platform.
///
/// Algorithm (fixed; changing it breaks reproducibility):
/// - state: xoshiro256** (Blackman & Vigna), its four 64-bit words filled from
///   the seed by SplitMix64;
/// - `uniform()`: the top 24 bits of the next 64-bit output times 2⁻²⁴, in [0, 1);
/// - `normal()`: Box–Muller on two uniforms u1, u2 drawn from 53-bit doubles,
///   `sqrt(-2 ln(1 - u1)) · cos(2π u2)` then `… · sin(2π u2)`, computed in Double,
///   the second value kept for the next call;
/// - `integer(below:)`: Lemire's multiply-shift with rejection, unbiased.
public struct RandomGenerator: RandomNumberGenerator, Sendable, Equatable {
    private var words: (UInt64, UInt64, UInt64, UInt64)
    private var spareNormal: Double?

    /// A generator started from `seed`.
    public init(seed: UInt64) {
        var splitMix = seed
        func nextSplitMix() -> UInt64 {
            splitMix &+= 0x9E37_79B9_7F4A_7C15
            var z = splitMix
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        words = (nextSplitMix(), nextSplitMix(), nextSplitMix(), nextSplitMix())
        spareNormal = nil
    }

    public static func == (lhs: RandomGenerator, rhs: RandomGenerator) -> Bool {
        lhs.state == rhs.state
    }

    /// The full state, to save in a checkpoint: four words, then a flag and the spare normal's bits.
    public var state: [UInt64] {
        get { [words.0, words.1, words.2, words.3, spareNormal == nil ? 0 : 1, spareNormal?.bitPattern ?? 0] }
        set {
            precondition(newValue.count == 6, "RandomGenerator.state needs 6 words, got \(newValue.count)")
            words = (newValue[0], newValue[1], newValue[2], newValue[3])
            spareNormal = newValue[4] == 0 ? nil : Double(bitPattern: newValue[5])
        }
    }

    @inline(__always)
    private static func rotate(_ value: UInt64, _ count: UInt64) -> UInt64 {
        (value << count) | (value >> (64 - count))
    }

    /// The next 64 random bits (xoshiro256**).
    public mutating func next() -> UInt64 {
        let result = RandomGenerator.rotate(words.1 &* 5, 7) &* 9
        let shifted = words.1 << 17
        words.2 ^= words.0
        words.3 ^= words.1
        words.1 ^= words.2
        words.0 ^= words.3
        words.2 ^= shifted
        words.3 = RandomGenerator.rotate(words.3, 45)
        return result
    }

    /// A uniform Float in [0, 1).
    public mutating func uniform() -> Float {
        Float(next() >> 40) * 0x1p-24
    }

    /// A uniform Double in [0, 1).
    public mutating func uniformDouble() -> Double {
        Double(next() >> 11) * 0x1p-53
    }

    /// A standard normal number.
    public mutating func normal() -> Float {
        if let spare = spareNormal {
            spareNormal = nil
            return Float(spare)
        }
        let u1 = uniformDouble(), u2 = uniformDouble()
        let radius = (-2 * Foundation.log(1 - u1)).squareRoot()
        let angle = 2 * Double.pi * u2
        spareNormal = radius * Foundation.sin(angle)
        return Float(radius * Foundation.cos(angle))
    }

    /// A uniform integer in `0 ..< bound`.
    public mutating func integer(below bound: Int) -> Int {
        precondition(bound > 0, "RandomGenerator.integer(below:): bound must be positive, got \(bound)")
        let range = UInt64(bound)
        var product = next().multipliedFullWidth(by: range)
        if product.low < range {
            let threshold = (0 &- range) % range
            while product.low < threshold { product = next().multipliedFullWidth(by: range) }
        }
        return Int(product.high)
    }
}

extension Tensor {
    /// Standard normal values.
    public static func randn(_ shape: [Int], generator: inout RandomGenerator) -> Tensor {
        Shape.validate(shape, op: "randn")
        let result = Tensor(uninitializedShape: shape)
        let pointer = result.floatPointer
        RandomReplay.draw(&generator) { generator in
            for index in 0..<result.count { pointer[index] = generator.normal() }
        }
        return result
    }

    /// Uniform values in `[low, high)`.
    public static func rand(_ shape: [Int], low: Float = 0, high: Float = 1, generator: inout RandomGenerator) -> Tensor {
        Shape.validate(shape, op: "rand")
        let result = Tensor(uninitializedShape: shape)
        let pointer = result.floatPointer
        RandomReplay.draw(&generator) { generator in
            for index in 0..<result.count { pointer[index] = low + (high - low) * generator.uniform() }
        }
        return result
    }

    /// Uniform integers in `[low, high)`, stored as floats.
    public static func randint(_ low: Int, _ high: Int, _ shape: [Int], generator: inout RandomGenerator) -> Tensor {
        guard high > low else { fatalError("randint: high \(high) must be greater than low \(low)") }
        Shape.validate(shape, op: "randint")
        let result = Tensor(uninitializedShape: shape)
        let pointer = result.floatPointer
        RandomReplay.draw(&generator) { generator in
            for index in 0..<result.count { pointer[index] = Float(low + generator.integer(below: high - low)) }
        }
        return result
    }

    /// Standard normal values shaped like this tensor.
    public func randnLike(generator: inout RandomGenerator) -> Tensor { Tensor.randn(shape, generator: &generator) }
}
