import Foundation

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
                               scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, silu: Bool = false) {
        for row in pixels {
            let values = x + row * channels, out = y + row * channels
            var channel = 0
            while channel + 8 <= channels {
                let value = UnsafeRawPointer(values + channel).loadUnaligned(as: Vector.self)
                let a = UnsafeRawPointer(scale + channel).loadUnaligned(as: Vector.self)
                let b = UnsafeRawPointer(shift + channel).loadUnaligned(as: Vector.self)
                let result = b.addingProduct(value, a)
                UnsafeMutableRawPointer(out + channel).storeBytes(of: silu ? result * VectorMath.sigmoid(result) : result, as: Vector.self)
                channel += 8
            }
            while channel < channels {
                let result = values[channel] * scale[channel] + shift[channel]
                out[channel] = silu ? result / (1 + Foundation.exp(-result)) : result
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
