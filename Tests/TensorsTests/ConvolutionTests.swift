@testable import Tensors
import TestSupport
import XCTest

final class ConvolutionTests: XCTestCase {
    override func tearDown() {
        Convolution.preferredAlgorithm = nil
        Convolution.winogradTile = 4
        Convolution.weightGradientTile = 4
        Convolution.forwardBlockBytes = 262_144
        Convolution.weightGradientBlockBytes = 1_048_576
        Convolution.im2colBlockBytes = 524_288
        Convolution.preferredWinogradSchedule = nil
        Convolution.positionChunkBytes = 8 << 20
        Convolution.usesPixelMap = true
        super.tearDown()
    }

    /// A way to compute the convolution: the algorithm (nil: automatic) and the Winograd tile.
    struct Path: CustomStringConvertible {
        let algorithm: ConvolutionAlgorithm?
        let tile: Int
        /// Blocks (or chunks) of a few tiles, so every pass runs several and a partial one.
        let smallBlocks: Bool
        /// The Winograd loop order (nil: automatic).
        var schedule: WinogradSchedule? = nil

        func activate() {
            Convolution.preferredAlgorithm = algorithm
            Convolution.winogradTile = tile
            Convolution.weightGradientTile = tile
            Convolution.forwardBlockBytes = smallBlocks ? 1 : 262_144
            Convolution.weightGradientBlockBytes = smallBlocks ? 1 : 1_048_576
            Convolution.im2colBlockBytes = smallBlocks ? 1 : 524_288
            Convolution.preferredWinogradSchedule = schedule
            Convolution.positionChunkBytes = smallBlocks ? 1 : 8 << 20
        }

        var description: String {
            "\(algorithm.map { "\($0)" } ?? "automatic") tile \(tile)\(smallBlocks ? " small blocks" : "")\(schedule.map { " \($0)" } ?? "")"
        }
    }

    private let paths: [Path] = [
        Path(algorithm: nil, tile: 4, smallBlocks: false),
        Path(algorithm: .im2col, tile: 4, smallBlocks: false),
        Path(algorithm: .pointwise, tile: 4, smallBlocks: false),
        Path(algorithm: .im2col, tile: 4, smallBlocks: true),
        Path(algorithm: .pointwise, tile: 4, smallBlocks: true),
        Path(algorithm: .smallImage, tile: 4, smallBlocks: false),
        Path(algorithm: .pixelMap, tile: 4, smallBlocks: false),
        Path(algorithm: .winograd, tile: 2, smallBlocks: false),
        Path(algorithm: .winograd, tile: 4, smallBlocks: false),
        Path(algorithm: .winograd, tile: 2, smallBlocks: true),
        Path(algorithm: .winograd, tile: 4, smallBlocks: true),
        Path(algorithm: .winograd, tile: 2, smallBlocks: false, schedule: .positions),
        Path(algorithm: .winograd, tile: 4, smallBlocks: false, schedule: .positions),
        Path(algorithm: .winograd, tile: 2, smallBlocks: true, schedule: .positions),
        Path(algorithm: .winograd, tile: 4, smallBlocks: true, schedule: .positions),
    ]

    private func random(_ shape: [Int], seed: UInt64, scale: Float = 1) -> Tensor {
        var generator = RandomGenerator(seed: seed)
        return Tensor.randn(shape, generator: &generator) * scale
    }

    /// Compares with a tolerance scaled by the largest expected magnitude.
    private func assertMatches(_ actual: Tensor, _ expected: Tensor, tolerance: Float = 2e-5, _ message: String,
                               file: StaticString = #filePath, line: UInt = #line) {
        let scale = expected.toArray().reduce(Float(0)) { Swift.max($0, Swift.abs($1)) }
        assertClose(actual, expected, relative: 0, absolute: tolerance * Swift.max(scale, 1), message, file: file, line: line)
    }

    /// One convolution case: input `[N, C, H, W]`, `O` output channels, `k×k` kernel.
    struct Case {
        let batch: Int, channels: Int, size: (Int, Int), outChannels: Int, kernel: Int, stride: Int, padding: Int
    }

    private let cases: [Case] = [
        Case(batch: 1, channels: 3, size: (7, 9), outChannels: 5, kernel: 3, stride: 1, padding: 1),
        Case(batch: 3, channels: 13, size: (11, 10), outChannels: 11, kernel: 3, stride: 1, padding: 1),
        Case(batch: 2, channels: 16, size: (9, 9), outChannels: 24, kernel: 3, stride: 1, padding: 0),
        Case(batch: 2, channels: 9, size: (8, 7), outChannels: 20, kernel: 3, stride: 1, padding: 2),
        Case(batch: 3, channels: 5, size: (9, 11), outChannels: 7, kernel: 3, stride: 2, padding: 1),
        Case(batch: 2, channels: 8, size: (10, 10), outChannels: 8, kernel: 3, stride: 2, padding: 0),
        Case(batch: 1, channels: 6, size: (12, 9), outChannels: 10, kernel: 5, stride: 1, padding: 2),
        Case(batch: 3, channels: 4, size: (9, 9), outChannels: 3, kernel: 5, stride: 2, padding: 1),
        Case(batch: 3, channels: 17, size: (5, 6), outChannels: 9, kernel: 1, stride: 1, padding: 0),
        Case(batch: 2, channels: 7, size: (7, 8), outChannels: 12, kernel: 1, stride: 2, padding: 1),
        Case(batch: 1, channels: 33, size: (6, 6), outChannels: 40, kernel: 3, stride: 1, padding: 1),
        Case(batch: 2, channels: 10, size: (3, 3), outChannels: 12, kernel: 3, stride: 1, padding: 0),
        Case(batch: 2, channels: 16, size: (23, 30), outChannels: 16, kernel: 3, stride: 1, padding: 1),
        Case(batch: 1, channels: 1, size: (6, 5), outChannels: 1, kernel: 3, stride: 1, padding: 1),
        Case(batch: 2, channels: 64, size: (14, 14), outChannels: 64, kernel: 3, stride: 1, padding: 1),
        // Tiny images at a training batch: the pixel map's own choice.
        Case(batch: 9, channels: 12, size: (2, 2), outChannels: 10, kernel: 3, stride: 1, padding: 1),
        Case(batch: 8, channels: 5, size: (1, 1), outChannels: 7, kernel: 3, stride: 1, padding: 1),
        Case(batch: 8, channels: 9, size: (3, 2), outChannels: 6, kernel: 3, stride: 2, padding: 1),
    ]

    func testForwardMatchesReferenceOnEveryPath() {
        for (index, item) in cases.enumerated() {
            let input = random([item.batch, item.channels, item.size.0, item.size.1], seed: UInt64(index))
            let weight = random([item.outChannels, item.channels, item.kernel, item.kernel], seed: 100 + UInt64(index), scale: 0.3)
            let bias = random([item.outChannels], seed: 200 + UInt64(index))
            let expected = Tensor.conv2dReference(input: input, weight: weight, bias: bias, stride: item.stride, padding: item.padding)
            let unbiased = Tensor.conv2dReference(input: input, weight: weight, stride: item.stride, padding: item.padding)
            for path in paths {
                path.activate()
                let output = input.conv2d(weight: weight, bias: bias, stride: item.stride, padding: item.padding)
                XCTAssertEqual(output.strides, Shape.channelsLastStrides(output.shape), "case \(index)")
                assertMatches(output, expected, "case \(index) \(path)")
                assertMatches(input.conv2d(weight: weight, stride: item.stride, padding: item.padding), unbiased,
                              "case \(index) \(path) without bias")
            }
        }
    }

    /// Large Winograd convolutions run in groups of output channels (the transformed weights stay
    /// under a budget); here a tiny budget forces groups on small shapes, odd channel counts included.
    func testWinogradInOutputChannelGroups() {
        let saved = Convolution.winogradWeightBudgetBytes
        defer { Convolution.winogradWeightBudgetBytes = saved }
        for (index, (channels, outChannels, size)) in [(16, 136, 9), (33, 200, 12), (8, 128, 5)].enumerated() {
            let input = random([2, channels, size, size], seed: 300 + UInt64(index))
            let weight = random([outChannels, channels, 3, 3], seed: 400 + UInt64(index), scale: 0.3)
            let bias = random([outChannels], seed: 500 + UInt64(index))
            let expected = Tensor.conv2dReference(input: input, weight: weight, bias: bias, padding: 1)
            Convolution.winogradWeightBudgetBytes = 4096
            let geometry = ConvolutionGeometry(input: input.shape, weight: weight.shape, bias: bias.shape, stride: 1, padding: 1)
            XCTAssertGreaterThan(Convolution.winogradOutputGroups(geometry), 1, "case \(index) must run in groups")
            assertMatches(noGrad { input.conv2d(weight: weight, bias: bias, padding: 1) }, expected, "case \(index) in groups")
            Convolution.winogradWeightBudgetBytes = saved
            assertMatches(noGrad { input.conv2d(weight: weight, bias: bias, padding: 1) }, expected, "case \(index) whole")
        }
    }

    func testAlgorithmChoice() {
        func choice(_ channels: Int, _ kernel: Int, stride: Int, padding: Int) -> ConvolutionAlgorithm {
            Convolution.algorithm(for: ConvolutionGeometry(input: [2, channels, 8, 8], weight: [channels, channels, kernel, kernel],
                                                           bias: nil, stride: stride, padding: padding))
        }
        XCTAssertEqual(choice(32, 3, stride: 1, padding: 1), .winograd)
        XCTAssertEqual(choice(3, 3, stride: 1, padding: 1), .im2col)
        XCTAssertEqual(choice(32, 3, stride: 2, padding: 1), .im2col)
        XCTAssertEqual(choice(32, 1, stride: 1, padding: 0), .pointwise)
        XCTAssertEqual(choice(32, 5, stride: 1, padding: 2), .im2col)
        // Few output pixels against the weight, or 2×2 images: the weight is read in place.
        func pixels(_ batch: Int, _ channels: Int, _ size: Int) -> ConvolutionAlgorithm {
            Convolution.algorithm(for: ConvolutionGeometry(input: [batch, channels, size, size], weight: [channels, channels, 3, 3],
                                                           bias: nil, stride: 1, padding: 1))
        }
        XCTAssertEqual(pixels(1, 1280, 4), .smallImage)
        XCTAssertEqual(pixels(1, 1280, 8), .smallImage)
        // 2×2 images at a training batch: one dense map of the pixels (at batch 1 laying it out costs more than it saves).
        XCTAssertEqual(pixels(32, 128, 2), .pixelMap)
        XCTAssertEqual(pixels(8, 256, 1), .pixelMap)
        XCTAssertEqual(pixels(1, 1280, 2), .smallImage)
        XCTAssertEqual(pixels(4, 128, 2), .smallImage)
        Convolution.usesPixelMap = false
        XCTAssertEqual(pixels(32, 128, 2), .smallImage)
        Convolution.usesPixelMap = true
        XCTAssertEqual(pixels(32, 128, 4), .winograd)
        XCTAssertEqual(pixels(2, 320, 64), .winograd)
        Convolution.preferredAlgorithm = .winograd
        XCTAssertEqual(choice(32, 5, stride: 1, padding: 2), .im2col, "Winograd only applies to 3×3 stride 1")
    }

    func testWinogradScheduleChoice() {
        func schedule(batch: Int, channels: Int, size: Int) -> WinogradSchedule {
            Convolution.winogradPlan(batch: batch, height: size, width: size, inChannels: channels, outChannels: channels, padding: 1,
                                     outputTile: 4, blockBytes: Convolution.forwardBlockBytes).schedule
        }
        // Wide layers on small images read their transformed weights once per chunk…
        XCTAssertEqual(schedule(batch: 64, channels: 256, size: 4), .positions)
        XCTAssertEqual(schedule(batch: 16, channels: 256, size: 4), .positions)
        // … narrow layers (weights in cache) and many tiles keep the tile blocks.
        XCTAssertEqual(schedule(batch: 64, channels: 64, size: 32), .tileBlocks)
        XCTAssertEqual(schedule(batch: 64, channels: 128, size: 32), .tileBlocks)
        XCTAssertEqual(schedule(batch: 1, channels: 64, size: 4), .tileBlocks)
        let (plan, chosen) = Convolution.winogradPlan(batch: 64, height: 4, width: 4, inChannels: 512, outChannels: 256, padding: 1,
                                                      outputTile: 4, blockBytes: Convolution.forwardBlockBytes)
        XCTAssertEqual(chosen, .positions)
        XCTAssertEqual(plan.blockTiles, 64, "one chunk holds every tile")
        XCTAssertEqual(plan.inStride, 528, "rows a multiple of 32 floats get one more cache line")
    }

    func testAcceptsStridedAndChannelsLastInputs() {
        let weight = random([6, 5, 3, 3], seed: 1, scale: 0.3)
        let bias = random([6], seed: 2)
        // A permuted view: stored [N, H, C, W].
        let stored = random([2, 7, 5, 9], seed: 3)
        let permuted = stored.permuted(0, 2, 1, 3)
        XCTAssertEqual(permuted.layout, .strided)
        let channelsLast = permuted.withLayout(.channelsLast)
        XCTAssertEqual(channelsLast.layout, .channelsLast)
        // A narrowed view (not dense).
        let wide = random([2, 5, 7, 13], seed: 4)
        let narrowed = wide.narrowed(axis: 3, start: 2, length: 9)
        for path in paths {
            path.activate()
            for stride in [1, 2] {
                let expected = Tensor.conv2dReference(input: permuted, weight: weight, bias: bias, stride: stride, padding: 1)
                assertMatches(permuted.conv2d(weight: weight, bias: bias, stride: stride, padding: 1), expected, "permuted")
                assertMatches(channelsLast.conv2d(weight: weight, bias: bias, stride: stride, padding: 1), expected, "channels-last")
                assertMatches(permuted.contiguous().conv2d(weight: weight, bias: bias, stride: stride, padding: 1), expected, "contiguous")
                let narrowExpected = Tensor.conv2dReference(input: narrowed, weight: weight, bias: bias, stride: stride, padding: 1)
                assertMatches(narrowed.conv2d(weight: weight, bias: bias, stride: stride, padding: 1), narrowExpected, "narrowed")
            }
        }
    }

    func testHalfPrecisionInputIsConverted() {
        let input = random([1, 8, 6, 6], seed: 5).converted(to: .bfloat16)
        let weight = random([8, 8, 3, 3], seed: 6, scale: 0.3)
        let expected = Tensor.conv2dReference(input: input, weight: weight, padding: 1)
        assertMatches(input.conv2d(weight: weight, padding: 1), expected, "bfloat16 input")
    }

    // MARK: Gradients

    func testGradientsByFiniteDifferences() {
        let gradientCases: [Case] = [
            Case(batch: 2, channels: 3, size: (5, 6), outChannels: 4, kernel: 3, stride: 1, padding: 1),
            Case(batch: 2, channels: 8, size: (5, 5), outChannels: 9, kernel: 3, stride: 1, padding: 1),
            Case(batch: 1, channels: 9, size: (6, 5), outChannels: 8, kernel: 3, stride: 1, padding: 0),
            Case(batch: 2, channels: 3, size: (7, 6), outChannels: 2, kernel: 3, stride: 2, padding: 1),
            Case(batch: 1, channels: 2, size: (6, 6), outChannels: 3, kernel: 5, stride: 1, padding: 2),
            Case(batch: 2, channels: 5, size: (3, 4), outChannels: 3, kernel: 1, stride: 1, padding: 0),
            Case(batch: 1, channels: 3, size: (5, 5), outChannels: 2, kernel: 1, stride: 2, padding: 1),
            Case(batch: 8, channels: 3, size: (2, 2), outChannels: 4, kernel: 3, stride: 1, padding: 1),
        ]
        for (index, item) in gradientCases.enumerated() {
            let input = random([item.batch, item.channels, item.size.0, item.size.1], seed: 10 + UInt64(index))
            let weight = random([item.outChannels, item.channels, item.kernel, item.kernel], seed: 20 + UInt64(index), scale: 0.3)
            let bias = random([item.outChannels], seed: 30 + UInt64(index))
            for path in paths {
                path.activate()
                GradientCheck.check([input, weight, bias], step: 1e-2, tolerance: 1e-2) { xs in
                    xs[0].conv2d(weight: xs[1], bias: xs[2], stride: item.stride, padding: item.padding)
                }
            }
        }
    }

    /// Gradients from nested loops in Double, for larger shapes than finite differences allow.
    private func referenceGradients(input: Tensor, weight: Tensor, upstream: Tensor, stride: Int, padding: Int) -> (Tensor, Tensor, Tensor) {
        let (n, c, h, w) = (input.shape[0], input.shape[1], input.shape[2], input.shape[3])
        let (o, k) = (weight.shape[0], weight.shape[2])
        let (oh, ow) = (upstream.shape[2], upstream.shape[3])
        let x = input.toArray(), wt = weight.toArray(), g = upstream.toArray()
        var dx = [Double](repeating: 0, count: x.count), dw = [Double](repeating: 0, count: wt.count), db = [Double](repeating: 0, count: o)
        for item in 0..<n {
            for out in 0..<o {
                for outY in 0..<oh {
                    for outX in 0..<ow {
                        let gradient = Double(g[((item * o + out) * oh + outY) * ow + outX])
                        db[out] += gradient
                        for channel in 0..<c {
                            for ky in 0..<k {
                                let y = outY * stride - padding + ky
                                if y < 0 || y >= h { continue }
                                for kx in 0..<k {
                                    let xx = outX * stride - padding + kx
                                    if xx < 0 || xx >= w { continue }
                                    let inputIndex = ((item * c + channel) * h + y) * w + xx
                                    let weightIndex = ((out * c + channel) * k + ky) * k + kx
                                    dx[inputIndex] += gradient * Double(wt[weightIndex])
                                    dw[weightIndex] += gradient * Double(x[inputIndex])
                                }
                            }
                        }
                    }
                }
            }
        }
        return (Tensor(dx.map { Float($0) }, shape: input.shape), Tensor(dw.map { Float($0) }, shape: weight.shape), Tensor(db.map { Float($0) }))
    }

    func testGradientsMatchReferenceOnEveryPath() {
        for (index, item) in cases.enumerated() {
            let input = random([item.batch, item.channels, item.size.0, item.size.1], seed: 40 + UInt64(index))
            let weight = random([item.outChannels, item.channels, item.kernel, item.kernel], seed: 50 + UInt64(index), scale: 0.3)
            let bias = random([item.outChannels], seed: 60 + UInt64(index))
            let outputShape = Tensor.conv2dReference(input: input, weight: weight, stride: item.stride, padding: item.padding).shape
            let upstream = random(outputShape, seed: 70 + UInt64(index))
            let (expectedInput, expectedWeight, expectedBias) = referenceGradients(input: input, weight: weight, upstream: upstream,
                                                                                   stride: item.stride, padding: item.padding)
            for path in paths {
                path.activate()
                for layout in [TensorLayout.contiguous, .channelsLast] {
                    let x = input.withLayout(layout).detach(), w = weight.detach(), b = bias.detach()
                    x.requiresGrad = true; w.requiresGrad = true; b.requiresGrad = true
                    x.conv2d(weight: w, bias: b, stride: item.stride, padding: item.padding).backward(upstream)
                    let label = "case \(index) \(path) \(layout)"
                    assertMatches(x.grad!, expectedInput, label + " input")
                    assertMatches(w.grad!, expectedWeight, label + " weight")
                    assertMatches(b.grad!, expectedBias, label + " bias")
                }
            }
        }
    }

    func testOnlyRequestedGradientsAreComputed() {
        let input = random([2, 8, 6, 6], seed: 80)
        let weight = random([8, 8, 3, 3], seed: 81, scale: 0.3)
        weight.requiresGrad = true
        input.conv2d(weight: weight, padding: 1).sum().backward()
        XCTAssertNotNil(weight.grad)
        XCTAssertNil(input.grad)
        let frozen = random([8, 8, 3, 3], seed: 82)
        let leaf = random([2, 8, 6, 6], seed: 83)
        leaf.requiresGrad = true
        leaf.conv2d(weight: frozen, padding: 1).sum().backward()
        XCTAssertNotNil(leaf.grad)
        XCTAssertNil(frozen.grad)
    }

    func testBatchOneDataGradientUsesEveryWorker() {
        // Fewer images than workers: the im2col data gradient scatters into private copies.
        Convolution.preferredAlgorithm = .im2col
        Convolution.im2colBlockBytes = 4096
        let input = random([1, 4, 40, 40], seed: 90)
        let weight = random([6, 4, 3, 3], seed: 91, scale: 0.3)
        let upstream = random([1, 6, 40, 40], seed: 92)
        let (expected, _, _) = referenceGradients(input: input, weight: weight, upstream: upstream, stride: 1, padding: 1)
        let x = input.detach()
        x.requiresGrad = true
        x.conv2d(weight: weight, padding: 1).backward(upstream)
        assertMatches(x.grad!, expected, "batch 1")
    }
}
