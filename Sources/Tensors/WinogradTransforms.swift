import Foundation

extension Winograd {
    /// Where the input transforms read a tile: channels-last memory directly, or a
    /// row-major `[N][C][H][W]` input through a small per-worker buffer holding the
    /// rows of the current tile row channels-last (transposed 8×8 blocks at a
    /// time), so a row-major input needs no full-size copy.
    struct WinogradReader {
        let input: UnsafePointer<Float>
        let channelsLast: Bool
        let plan: WinogradPlan
        /// `[outputTile + 2][width][inPadded]` for a row-major input.
        let staging: UnsafeMutablePointer<Float>?
        var stagedItem = -1, stagedRow = Int.min

        init(input: UnsafePointer<Float>, channelsLast: Bool, plan: WinogradPlan) {
            self.input = input
            self.channelsLast = channelsLast
            self.plan = plan
            staging = channelsLast ? nil : ScratchMemory.floats((plan.outputTile + 2) * plan.width * plan.inPadded, zeroed: true)
        }

        func deallocate() { staging.map(ScratchMemory.release) }

        /// The memory of the tile whose rows start at `firstRow` in image `item`: image
        /// row y, column x, channel c is at `base + (y − firstRow)·rowStride + x·pixelStride + c`.
        @inline(__always)
        mutating func window(item: Int, firstRow: Int) -> (base: UnsafePointer<Float>, firstRow: Int, rowStride: Int, pixelStride: Int) {
            let (height, width, channels) = (plan.height, plan.width, plan.inChannels)
            guard let staging else {
                return (input + item * height * width * channels, 0, width * channels, channels)
            }
            if item != stagedItem || firstRow != stagedRow {
                stage(item: item, firstRow: firstRow, into: staging)
                stagedItem = item
                stagedRow = firstRow
            }
            return (UnsafePointer(staging), firstRow, width * plan.inPadded, plan.inPadded)
        }

        /// Copies rows `firstRow ..< firstRow + outputTile + 2` (those inside the image) of
        /// image `item` into `staging`, channels-last.
        private func stage(item: Int, firstRow: Int, into staging: UnsafeMutablePointer<Float>) {
            let (height, width, channels, padded) = (plan.height, plan.width, plan.inChannels, plan.inPadded)
            let image = input + item * channels * height * width
            for r in 0..<(plan.outputTile + 2) {
                let y = firstRow + r
                if y < 0 || y >= height { continue }
                let target = staging + r * width * padded
                var channel = 0
                while channel < channels {
                    let lanes = Swift.min(8, channels - channel)
                    let source = image + (channel * height + y) * width
                    var x = 0
                    if lanes == 8 {
                        let step = height * width
                        while x + 8 <= width {
                            MicroKernels.transposeBlock(from: source + x, stride: step, to: target + x * padded + channel, stride: padded)
                            x += 8
                        }
                    }
                    for column in x..<width {
                        for lane in 0..<lanes { target[column * padded + channel + lane] = source[lane * height * width + column] }
                    }
                    channel += 8
                }
            }
        }
    }

    /// `Bᵀ d B` of tiles `first ..< first + count` for the plan's tile size.
    static func transformInput(_ reader: inout WinogradReader, plan: WinogradPlan, first: Int, count: Int, into transformed: UnsafeMutablePointer<Float>) {
        if plan.outputTile == 2 {
            transformInput2(&reader, plan: plan, first: first, count: count, into: transformed)
        } else {
            transformInput4(&reader, plan: plan, first: first, count: count, into: transformed)
        }
    }

    /// `A g Aᵀ` of tiles `first ..< first + count` of the output gradient, for the plan's tile size.
    static func transformGradient(_ gradient: UnsafePointer<Float>, plan: WinogradPlan, first: Int, count: Int, into transformed: UnsafeMutablePointer<Float>) {
        if plan.outputTile == 2 {
            transformGradient2(gradient, plan: plan, first: first, count: count, into: transformed)
        } else {
            transformGradient4(gradient, plan: plan, first: first, count: count, into: transformed)
        }
    }

    /// `Aᵀ m A` (+ bias) of tiles `first ..< first + count` into the output, for the plan's tile size.
    static func transformOutput(_ products: UnsafePointer<Float>, plan: WinogradPlan, first: Int, count: Int,
                                bias: UnsafePointer<Float>?, into output: UnsafeMutablePointer<Float>) {
        if plan.outputTile == 2 {
            transformOutput2(products, plan: plan, first: first, count: count, bias: bias, into: output)
        } else {
            transformOutput4(products, plan: plan, first: first, count: count, bias: bias, into: output)
        }
    }

    /// Walks tiles in order: image, tile row, tile column.
    struct TileCursor {
        let plan: WinogradPlan
        var item: Int, tileY: Int, tileX: Int

        init(plan: WinogradPlan, tile: Int) {
            self.plan = plan
            let perImage = plan.tilesHigh * plan.tilesWide
            item = tile / perImage
            tileY = (tile % perImage) / plan.tilesWide
            tileX = tile % plan.tilesWide
        }

        @inline(__always)
        mutating func advance() {
            tileX += 1
            if tileX == plan.tilesWide {
                tileX = 0; tileY += 1
                if tileY == plan.tilesHigh { tileY = 0; item += 1 }
            }
        }
    }

    /// `Bᵀ d B` (F(2×2, 3×3)) for tiles `first ..< first + count`, written to `[16][blockTiles][inStride]`.
    static func transformInput2(_ reader: inout WinogradReader, plan: WinogradPlan, first: Int, count: Int, into transformed: UnsafeMutablePointer<Float>) {
        let (height, width, channels) = (plan.height, plan.width, plan.inChannels)
        let plane = plan.inPlane
        let chunks = plan.inPadded / 8
        var cursor = TileCursor(plan: plan, tile: first)
        for index in 0..<count {
            let y0 = 2 * cursor.tileY - plan.padding, x0 = 2 * cursor.tileX - plan.padding
            let window = reader.window(item: cursor.item, firstRow: y0)
            // Offsets of the tile's rows and columns; −1 marks one outside the image.
            var rows = SIMD4<Int>(repeating: -1), columns = SIMD4<Int>(repeating: -1)
            for r in 0..<4 where y0 + r >= 0 && y0 + r < height { rows[r] = (y0 + r - window.firstRow) * window.rowStride }
            for s in 0..<4 where x0 + s >= 0 && x0 + s < width { columns[s] = (x0 + s) * window.pixelStride }
            let image = window.base
            let target = transformed + index * plan.inStride
            for chunk in 0..<chunks {
                let channel = chunk * 8
                let lanes = Swift.min(8, channels - channel)
                let base = image + channel
                @inline(__always) func element(_ r: Int, _ s: Int) -> Vector {
                    if rows[r] < 0 || columns[s] < 0 { return Vector() }
                    return MicroKernels.load(base + rows[r] + columns[s], count: lanes)
                }
                @inline(__always) func row(_ r: Int) -> (Vector, Vector, Vector, Vector) {
                    (element(r, 0), element(r, 1), element(r, 2), element(r, 3))
                }
                // One row of Bᵀ d (given as its four columns), then Bᵀ along it: the
                // four transformed values of row `r` of the tile.
                @inline(__always) func emit(_ r: Int, _ t: (Vector, Vector, Vector, Vector)) {
                    let out = target + channel + 4 * r * plane
                    MicroKernels.store(t.0 - t.2, out)
                    MicroKernels.store(t.1 + t.2, out + plane)
                    MicroKernels.store(t.2 - t.1, out + 2 * plane)
                    MicroKernels.store(t.1 - t.3, out + 3 * plane)
                }
                let d1 = row(1), d2 = row(2)
                emit(1, (d1.0 + d2.0, d1.1 + d2.1, d1.2 + d2.2, d1.3 + d2.3))
                emit(2, (d2.0 - d1.0, d2.1 - d1.1, d2.2 - d1.2, d2.3 - d1.3))
                let d0 = row(0)
                emit(0, (d0.0 - d2.0, d0.1 - d2.1, d0.2 - d2.2, d0.3 - d2.3))
                let d3 = row(3)
                emit(3, (d1.0 - d3.0, d1.1 - d3.1, d1.2 - d3.2, d1.3 - d3.3))
            }
            cursor.advance()
        }
    }

    /// `Aᵀ m A` (+ bias) (F(2×2, 3×3)) for tiles `first ..< first + count` from
    /// `[16][blockTiles][outStride]` into the channels-last output.
    static func transformOutput2(_ products: UnsafePointer<Float>, plan: WinogradPlan, first: Int, count: Int,
                                 bias: UnsafePointer<Float>?, into output: UnsafeMutablePointer<Float>) {
        let (outHeight, outWidth, channels) = (plan.outHeight, plan.outWidth, plan.outChannels)
        let rowStride = outWidth * channels
        let plane = plan.outPlane
        let chunks = plan.outPadded / 8
        var cursor = TileCursor(plan: plan, tile: first)
        for index in 0..<count {
            let y0 = 2 * cursor.tileY, x0 = 2 * cursor.tileX
            let hasSecondRow = y0 + 1 < outHeight, hasSecondColumn = x0 + 1 < outWidth
            let corner = output + cursor.item * outHeight * rowStride + y0 * rowStride + x0 * channels
            let source = products + index * plan.outStride
            for chunk in 0..<chunks {
                let channel = chunk * 8
                let lanes = Swift.min(8, channels - channel)
                let m = source + channel
                @inline(__always) func value(_ position: Int) -> Vector { MicroKernels.load(m + position * plane) }
                // Aᵀ down each column j: (m0 + m1 + m2, m1 − m2 − m3).
                @inline(__always) func column(_ j: Int) -> (Vector, Vector) {
                    let (a0, a1, a2, a3) = (value(j), value(4 + j), value(8 + j), value(12 + j))
                    return (a0 + a1 + a2, a1 - a2 - a3)
                }
                let c0 = column(0), c1 = column(1), c2 = column(2), c3 = column(3)
                let shift = bias.map { MicroKernels.load($0 + channel, count: lanes) } ?? Vector()
                let y00 = c0.0 + c1.0 + c2.0 + shift, y01 = c1.0 - c2.0 - c3.0 + shift
                let y10 = c0.1 + c1.1 + c2.1 + shift, y11 = c1.1 - c2.1 - c3.1 + shift
                let target = corner + channel
                MicroKernels.store(y00, target, count: lanes)
                if hasSecondColumn { MicroKernels.store(y01, target + channels, count: lanes) }
                if hasSecondRow {
                    MicroKernels.store(y10, target + rowStride, count: lanes)
                    if hasSecondColumn { MicroKernels.store(y11, target + rowStride + channels, count: lanes) }
                }
            }
            cursor.advance()
        }
    }

    /// `A g Aᵀ` (F(2×2, 3×3)) of each 2×2 tile of the channels-last output gradient
    /// (zeros past the edge), written to `[16][blockTiles][outStride]`.
    static func transformGradient2(_ gradient: UnsafePointer<Float>, plan: WinogradPlan, first: Int, count: Int, into transformed: UnsafeMutablePointer<Float>) {
        let (outHeight, outWidth, channels) = (plan.outHeight, plan.outWidth, plan.outChannels)
        let rowStride = outWidth * channels
        let plane = plan.outPlane
        let chunks = plan.outPadded / 8
        var cursor = TileCursor(plan: plan, tile: first)
        for index in 0..<count {
            let y0 = 2 * cursor.tileY, x0 = 2 * cursor.tileX
            let hasSecondRow = y0 + 1 < outHeight, hasSecondColumn = x0 + 1 < outWidth
            let corner = gradient + cursor.item * outHeight * rowStride + y0 * rowStride + x0 * channels
            let target = transformed + index * plan.outStride
            for chunk in 0..<chunks {
                let channel = chunk * 8
                let lanes = Swift.min(8, channels - channel)
                let source = corner + channel
                let g00 = MicroKernels.load(source, count: lanes)
                let g01 = hasSecondColumn ? MicroKernels.load(source + channels, count: lanes) : Vector()
                let g10 = hasSecondRow ? MicroKernels.load(source + rowStride, count: lanes) : Vector()
                let g11 = hasSecondRow && hasSecondColumn ? MicroKernels.load(source + rowStride + channels, count: lanes) : Vector()
                let out = target + channel
                // A (4×2) down the columns gives rows (g0, g0 + g1, g0 − g1, −g1); then along each row.
                @inline(__always) func row(_ r: Int, _ a: Vector, _ b: Vector) {
                    let base = out + 4 * r * plane
                    MicroKernels.store(a, base)
                    MicroKernels.store(a + b, base + plane)
                    MicroKernels.store(a - b, base + 2 * plane)
                    MicroKernels.store(-b, base + 3 * plane)
                }
                row(0, g00, g01)
                row(1, g00 + g10, g01 + g11)
                row(2, g00 - g10, g01 - g11)
                row(3, -g10, -g11)
            }
            cursor.advance()
        }
    }

    /// `A g Aᵀ` (F(4×4, 3×3)) of each 4×4 tile of the channels-last output gradient
    /// (zeros past the edge), written to `[36][blockTiles][outStride]`.
    static func transformGradient4(_ gradient: UnsafePointer<Float>, plan: WinogradPlan, first: Int, count: Int, into transformed: UnsafeMutablePointer<Float>) {
        let (outHeight, outWidth, channels) = (plan.outHeight, plan.outWidth, plan.outChannels)
        let rowStride = outWidth * channels
        let plane = plan.outPlane
        let chunks = plan.outPadded / 8
        let zeros = ScratchMemory.floats(plan.outPadded, zeroed: true)
        defer { ScratchMemory.release(zeros) }
        var cursor = TileCursor(plan: plan, tile: first)
        withUnsafeTemporaryAllocation(of: Vector.self, capacity: 24) { scratchBuffer in
            withUnsafeTemporaryAllocation(of: UnsafePointer<Float>.self, capacity: 16) { pixelBuffer in
                let scratch = scratchBuffer.baseAddress!, pixels = pixelBuffer.baseAddress!
                for index in 0..<count {
                    let y0 = 4 * cursor.tileY, x0 = 4 * cursor.tileX
                    let validRows = Swift.min(4, outHeight - y0), validColumns = Swift.min(4, outWidth - x0)
                    let corner = gradient + cursor.item * outHeight * rowStride + y0 * rowStride + x0 * channels
                    // The tile's 16 pixel addresses, those past the edge pointing at zeros (as in transformInput4).
                    for r in 0..<4 {
                        for j in 0..<4 { pixels[4 * r + j] = r < validRows && j < validColumns ? corner + r * rowStride + j * channels : UnsafePointer(zeros) }
                    }
                    let target = transformed + index * plan.outStride
                    for chunk in 0..<chunks {
                        let channel = chunk * 8
                        let lanes = Swift.min(8, channels - channel)
                        // A down each column j, into scratch[4·i + j].
                        for j in 0..<4 {
                            @inline(__always) func element(_ r: Int) -> Vector { pixel(pixels[4 * r + j], channel, lanes) }
                            let (z0, z1, z2, z3, z4, z5) = expand4(element(0), element(1), element(2), element(3))
                            scratch[j] = z0; scratch[4 + j] = z1; scratch[8 + j] = z2
                            scratch[12 + j] = z3; scratch[16 + j] = z4; scratch[20 + j] = z5
                        }
                        // … then along each row i.
                        let out = target + channel
                        for i in 0..<6 {
                            let row = scratch + 4 * i
                            storeRow(expand4(row[0], row[1], row[2], row[3]), at: out + 6 * i * plane, plane: plane)
                        }
                    }
                    cursor.advance()
                }
            }
        }
    }

    /// Channels `channel ..< channel + lanes` of the pixel at `address` (zeros past `lanes`).
    @inline(__always)
    static func pixel(_ address: UnsafePointer<Float>, _ channel: Int, _ lanes: Int) -> Vector {
        lanes == 8 ? MicroKernels.load(address + channel) : MicroKernels.load(address + channel, count: lanes)
    }

    /// One row of a transformed 6×6 tile: its six values into six consecutive planes.
    @inline(__always)
    static func storeRow(_ values: (Vector, Vector, Vector, Vector, Vector, Vector), at base: UnsafeMutablePointer<Float>, plane: Int) {
        MicroKernels.store(values.0, base)
        MicroKernels.store(values.1, base + plane)
        MicroKernels.store(values.2, base + 2 * plane)
        MicroKernels.store(values.3, base + 3 * plane)
        MicroKernels.store(values.4, base + 4 * plane)
        MicroKernels.store(values.5, base + 5 * plane)
    }

    /// A (the transpose of Aᵀ) of F(4×4, 3×3) applied to four values.
    @inline(__always)
    static func expand4(_ g0: Vector, _ g1: Vector, _ g2: Vector, _ g3: Vector) -> (Vector, Vector, Vector, Vector, Vector, Vector) {
        let four = Vector(repeating: 4), two = Vector(repeating: 2), eight = Vector(repeating: 8)
        let even = g0 + g2, odd = g1 + g3
        let even2 = g0.addingProduct(four, g2), odd2 = (two * g1).addingProduct(eight, g3)
        return (g0, even + odd, even - odd, even2 + odd2, even2 - odd2, g3)
    }

    /// `Bᵀ d B` (F(4×4, 3×3)) for tiles `first ..< first + count`, written to `[36][blockTiles][inStride]`.
    ///
    /// Each tile first gets a table of its 36 pixels' addresses, those outside the image
    /// pointing at a row of zeros, so the loop over channels reads without a test
    /// (most tiles of a small image touch its border: 24 of 49 at 28×28, 12 of 16 at 14×14).
    static func transformInput4(_ reader: inout WinogradReader, plan: WinogradPlan, first: Int, count: Int, into transformed: UnsafeMutablePointer<Float>) {
        let (height, width, channels) = (plan.height, plan.width, plan.inChannels)
        let plane = plan.inPlane
        let chunks = plan.inPadded / 8
        let zeros = ScratchMemory.floats(plan.inPadded, zeroed: true)
        defer { ScratchMemory.release(zeros) }
        var cursor = TileCursor(plan: plan, tile: first)
        withUnsafeTemporaryAllocation(of: Vector.self, capacity: 36) { scratchBuffer in
            withUnsafeTemporaryAllocation(of: UnsafePointer<Float>.self, capacity: 36) { pixelBuffer in
                let scratch = scratchBuffer.baseAddress!, pixels = pixelBuffer.baseAddress!
                for index in 0..<count {
                    let y0 = 4 * cursor.tileY - plan.padding, x0 = 4 * cursor.tileX - plan.padding
                    let window = reader.window(item: cursor.item, firstRow: y0)
                    for r in 0..<6 {
                        let y = y0 + r
                        let row = window.base + (y - window.firstRow) * window.rowStride
                        for s in 0..<6 {
                            let x = x0 + s
                            pixels[6 * r + s] = y >= 0 && y < height && x >= 0 && x < width ? row + x * window.pixelStride : UnsafePointer(zeros)
                        }
                    }
                    let target = transformed + index * plan.inStride
                    for chunk in 0..<chunks {
                        let channel = chunk * 8
                        let lanes = Swift.min(8, channels - channel)
                        // Bᵀ down each column s, into scratch[6·r + s].
                        for s in 0..<6 {
                            @inline(__always) func element(_ r: Int) -> Vector { pixel(pixels[6 * r + s], channel, lanes) }
                            let (t0, t1, t2, t3, t4, t5) = transform6(element(0), element(1), element(2), element(3), element(4), element(5))
                            scratch[s] = t0; scratch[6 + s] = t1; scratch[12 + s] = t2
                            scratch[18 + s] = t3; scratch[24 + s] = t4; scratch[30 + s] = t5
                        }
                        // … then Bᵀ along each row r.
                        let out = target + channel
                        for r in 0..<6 {
                            let row = scratch + 6 * r
                            storeRow(transform6(row[0], row[1], row[2], row[3], row[4], row[5]), at: out + 6 * r * plane, plane: plane)
                        }
                    }
                    cursor.advance()
                }
            }
        }
    }

    /// Bᵀ of F(4×4, 3×3) applied to six values.
    @inline(__always)
    static func transform6(_ d0: Vector, _ d1: Vector, _ d2: Vector, _ d3: Vector, _ d4: Vector, _ d5: Vector)
        -> (Vector, Vector, Vector, Vector, Vector, Vector) {
        // Fused multiply-adds: 12 vector operations instead of 19 (on this kernel's hot path,
        // a third of a 32-channel convolution's time is the transforms).
        let four = Vector(repeating: 4), minusFour = Vector(repeating: -4), minusFive = Vector(repeating: -5)
        let two = Vector(repeating: 2), minusTwo = Vector(repeating: -2)
        let a = d4.addingProduct(minusFour, d2), b = d3.addingProduct(minusFour, d1)
        let c = d4 - d2, e = d3 - d1
        return (d4.addingProduct(four, d0).addingProduct(minusFive, d2), a + b, a - b,
                c.addingProduct(two, e), c.addingProduct(minusTwo, e), d5.addingProduct(four, d1).addingProduct(minusFive, d3))
    }

    /// `Aᵀ m A` (+ bias) (F(4×4, 3×3)) for tiles `first ..< first + count` from
    /// `[36][blockTiles][outStride]` into the channels-last output.
    static func transformOutput4(_ products: UnsafePointer<Float>, plan: WinogradPlan, first: Int, count: Int,
                                 bias: UnsafePointer<Float>?, into output: UnsafeMutablePointer<Float>) {
        let (outHeight, outWidth, channels) = (plan.outHeight, plan.outWidth, plan.outChannels)
        let rowStride = outWidth * channels
        let plane = plan.outPlane
        let chunks = plan.outPadded / 8
        var cursor = TileCursor(plan: plan, tile: first)
        withUnsafeTemporaryAllocation(of: Vector.self, capacity: 24) { scratchBuffer in
            let scratch = scratchBuffer.baseAddress!
            for index in 0..<count {
                let y0 = 4 * cursor.tileY, x0 = 4 * cursor.tileX
                let validRows = Swift.min(4, outHeight - y0), validColumns = Swift.min(4, outWidth - x0)
                let corner = output + cursor.item * outHeight * rowStride + y0 * rowStride + x0 * channels
                let source = products + index * plan.outStride
                for chunk in 0..<chunks {
                    let channel = chunk * 8
                    let lanes = Swift.min(8, channels - channel)
                    let m = source + channel
                    // Aᵀ down each column j, into scratch[6·i + j].
                    for j in 0..<6 {
                        @inline(__always) func value(_ i: Int) -> Vector { MicroKernels.load(m + (6 * i + j) * plane) }
                        let (y0, y1, y2, y3) = inverse6(value(0), value(1), value(2), value(3), value(4), value(5))
                        scratch[j] = y0; scratch[6 + j] = y1; scratch[12 + j] = y2; scratch[18 + j] = y3
                    }
                    let shift = bias.map { MicroKernels.load($0 + channel, count: lanes) } ?? Vector()
                    // … then along each row i.
                    for i in 0..<validRows {
                        let row = scratch + 6 * i
                        let (y0, y1, y2, y3) = inverse6(row[0], row[1], row[2], row[3], row[4], row[5])
                        let target = corner + i * rowStride + channel
                        if validColumns == 4 && lanes == 8 {
                            MicroKernels.store(y0 + shift, target)
                            MicroKernels.store(y1 + shift, target + channels)
                            MicroKernels.store(y2 + shift, target + 2 * channels)
                            MicroKernels.store(y3 + shift, target + 3 * channels)
                        } else {
                            // Edge tile: only the columns inside the output.
                            MicroKernels.store(y0 + shift, target, count: lanes)
                            if validColumns > 1 { MicroKernels.store(y1 + shift, target + channels, count: lanes) }
                            if validColumns > 2 { MicroKernels.store(y2 + shift, target + 2 * channels, count: lanes) }
                            if validColumns > 3 { MicroKernels.store(y3 + shift, target + 3 * channels, count: lanes) }
                        }
                    }
                }
                cursor.advance()
            }
        }
    }

    /// Aᵀ of F(4×4, 3×3) applied to six values.
    @inline(__always)
    static func inverse6(_ m0: Vector, _ m1: Vector, _ m2: Vector, _ m3: Vector, _ m4: Vector, _ m5: Vector)
        -> (Vector, Vector, Vector, Vector) {
        let sum1 = m1 + m2, difference1 = m1 - m2, sum2 = m3 + m4, difference2 = m3 - m4
        let two = Vector(repeating: 2), four = Vector(repeating: 4), eight = Vector(repeating: 8)
        return (m0 + sum1 + sum2, difference1.addingProduct(two, difference2), sum1.addingProduct(four, sum2),
                (difference1 + m5).addingProduct(eight, difference2))
    }
}
