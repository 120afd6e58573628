import Foundation

extension Tensor {
    /// Max pooling over `[N, C, H, W]` (PyTorch's `F.max_pool2d`); `stride` defaults to `kernelSize`.
    ///
    /// Padding counts as −∞; windows never start past the padded edge (floor
    /// rounding). The gradient goes to the first maximum of each window (a NaN
    /// counts as the maximum), as in PyTorch. A channels-last input gives a
    /// channels-last result; any other layout gives a row-major one.
    public func maxPool2d(kernelSize: Int, stride: Int? = nil, padding: Int = 0) -> Tensor {
        let window = PoolingWindow(op: "maxPool2d", shape: shape, kernelSize: kernelSize, stride: stride ?? kernelSize, padding: padding)
        let source = PoolingMemory(self)
        let output = source.output(height: window.outHeight, width: window.outWidth)
        var argmax = [Int32](repeating: 0, count: output.count)
        argmax.withUnsafeMutableBufferPointer { indices in
            Pooling.maxForward(source: source, window: window, output: output.floatPointer, indices: indices.baseAddress!)
        }
        return Tensor.record(output, .kernel(MaxPoolingBackward(window: window, channelsLast: source.channelsLast, indices: argmax)), inputs: [self])
    }

    /// Average pooling over `[N, C, H, W]` (PyTorch's `F.avg_pool2d`, count_include_pad = true):
    /// every window is divided by `kernelSize²`, padding counting as zeros.
    /// `stride` defaults to `kernelSize`.
    public func avgPool2d(kernelSize: Int, stride: Int? = nil, padding: Int = 0) -> Tensor {
        let window = PoolingWindow(op: "avgPool2d", shape: shape, kernelSize: kernelSize, stride: stride ?? kernelSize, padding: padding)
        let source = PoolingMemory(self)
        let output = source.output(height: window.outHeight, width: window.outWidth)
        Pooling.averageForward(source: source, window: window, output: output.floatPointer)
        return Tensor.record(output, .kernel(AveragePoolingBackward(window: window, channelsLast: source.channelsLast)), inputs: [self])
    }

    /// Nearest-neighbour upsampling by an integer factor (PyTorch's
    /// `F.interpolate(mode="nearest", scale_factor=k)`): output pixel (y, x)
    /// copies input pixel (y / k, x / k).
    public func upsampleNearest(scaleFactor: Int) -> Tensor {
        guard rank == 4 else { fatalError("upsampleNearest: input must be 4-d [N, C, H, W], got shape \(shape)") }
        guard scaleFactor >= 1 else { fatalError("upsampleNearest: scale factor must be at least 1, got \(scaleFactor) (input \(shape))") }
        let source = PoolingMemory(self)
        let output = source.output(height: shape[2] * scaleFactor, width: shape[3] * scaleFactor)
        Pooling.nearestForward(source: source, factor: scaleFactor, output: output.floatPointer)
        return Tensor.record(output, .kernel(NearestUpsamplingBackward(shape: shape, factor: scaleFactor, channelsLast: source.channelsLast)), inputs: [self])
    }

    /// Bilinear resize to `height × width` (PyTorch's `F.interpolate(mode="bilinear",
    /// size=(height, width), align_corners=…)`, antialias off), up or down.
    public func resizedBilinear(height: Int, width: Int, alignCorners: Bool = false) -> Tensor {
        guard rank == 4 else { fatalError("resizedBilinear: input must be 4-d [N, C, H, W], got shape \(shape)") }
        guard height >= 1, width >= 1, shape[2] >= 1, shape[3] >= 1 else {
            fatalError("resizedBilinear: sizes must be positive (input \(shape), requested \(height)×\(width))")
        }
        let rows = BilinearAxis(inputSize: shape[2], outputSize: height, alignCorners: alignCorners)
        let columns = BilinearAxis(inputSize: shape[3], outputSize: width, alignCorners: alignCorners)
        let source = PoolingMemory(self)
        let output = source.output(height: height, width: width)
        Pooling.bilinearForward(source: source, rows: rows, columns: columns, output: output.floatPointer)
        return Tensor.record(output, .kernel(BilinearBackward(shape: shape, rows: rows, columns: columns, channelsLast: source.channelsLast)), inputs: [self])
    }
}

/// The window geometry of a pooling op, validated.
struct PoolingWindow {
    let batch: Int, channels: Int, height: Int, width: Int
    let kernelSize: Int, stride: Int, padding: Int
    let outHeight: Int, outWidth: Int

    init(op: String, shape: [Int], kernelSize: Int, stride: Int, padding: Int) {
        func stop(_ problem: String) -> Never {
            fatalError("\(op): \(problem) (input \(shape), kernel size \(kernelSize), stride \(stride), padding \(padding))")
        }
        guard shape.count == 4 else { stop("input must be 4-d [N, C, H, W]") }
        guard kernelSize >= 1 else { stop("kernel size must be at least 1") }
        guard stride >= 1 else { stop("stride must be at least 1") }
        guard padding >= 0, padding <= kernelSize / 2 else { stop("padding must be between 0 and half the kernel size") }
        guard shape[2] + 2 * padding >= kernelSize, shape[3] + 2 * padding >= kernelSize else {
            stop("kernel is larger than the padded input")
        }
        batch = shape[0]; channels = shape[1]; height = shape[2]; width = shape[3]
        self.kernelSize = kernelSize; self.stride = stride; self.padding = padding
        outHeight = (height + 2 * padding - kernelSize) / stride + 1
        outWidth = (width + 2 * padding - kernelSize) / stride + 1
    }

    var inputShape: [Int] { [batch, channels, height, width] }
}

/// Source indices and weights of bilinear interpolation along one axis, computed
/// in Float exactly as PyTorch does (`area_pixel_compute_source_index`).
struct BilinearAxis {
    let inputSize: Int, outputSize: Int
    let first: [Int], second: [Int]
    let firstWeight: [Float], secondWeight: [Float]

    init(inputSize: Int, outputSize: Int, alignCorners: Bool) {
        self.inputSize = inputSize
        self.outputSize = outputSize
        var first = [Int](repeating: 0, count: outputSize), second = first
        var firstWeight = [Float](repeating: 1, count: outputSize), secondWeight = [Float](repeating: 0, count: outputSize)
        let scale: Float = alignCorners
            ? (outputSize > 1 ? Float(inputSize - 1) / Float(outputSize - 1) : 0)
            : Float(inputSize) / Float(outputSize)
        for index in 0..<outputSize {
            if inputSize == outputSize {
                first[index] = index; second[index] = index
                continue
            }
            var source = alignCorners ? scale * Float(index) : scale * (Float(index) + 0.5) - 0.5
            if source < 0 { source = 0 }
            let lower = Swift.min(Int(source.rounded(.down)), inputSize - 1)
            let lambda = Swift.min(Swift.max(source - Float(lower), 0), 1)
            first[index] = lower
            second[index] = lower + (lower < inputSize - 1 ? 1 : 0)
            firstWeight[index] = 1 - lambda
            secondWeight[index] = lambda
        }
        self.first = first; self.second = second
        self.firstWeight = firstWeight; self.secondWeight = secondWeight
    }
}

/// An `[N, C, H, W]` tensor seen as channels-last memory `[images][H][W][lanes]`:
/// a channels-last tensor is itself (images = N, lanes = C); a row-major one is
/// `[N·C][H][W][1]`. Pooling kernels only deal with this form.
struct PoolingMemory {
    let tensor: Tensor
    let channelsLast: Bool
    let images: Int, lanes: Int, height: Int, width: Int
    /// The `[N, C, H, W]` shape.
    let shape: [Int]

    init(_ input: Tensor) {
        if input.layout == .channelsLast && input.dataType == .float32 {
            tensor = input
            channelsLast = true
        } else {
            tensor = input.contiguousData()
            channelsLast = false
        }
        (height, width) = (input.shape[2], input.shape[3])
        images = channelsLast ? input.shape[0] : input.shape[0] * input.shape[1]
        lanes = channelsLast ? input.shape[1] : 1
        shape = input.shape
    }

    /// A new tensor of this one's batch and channels, in the same layout.
    func output(height: Int, width: Int) -> Tensor {
        Pooling.allocate([shape[0], shape[1], height, width], channelsLast: channelsLast)
    }
}

/// The pooling and resizing kernels. Work is split over (image, block of
/// channels) pairs, so backward scatters never race.
enum Pooling {
    static func allocate(_ shape: [Int], channelsLast: Bool, zeroed: Bool = false) -> Tensor {
        let result = channelsLast ? Tensor(uninitializedShape: shape, strides: Shape.channelsLastStrides(shape)) : Tensor(uninitializedShape: shape)
        if zeroed { result.floatPointer.update(repeating: 0, count: result.count) }
        return result
    }

    /// The gradient in the memory form the forward output had.
    static func memory(ofGradient gradient: Tensor, channelsLast: Bool) -> Tensor {
        channelsLast ? Convolution.channelsLast(gradient) : gradient.contiguousData()
    }

    /// Calls `body(image, lanes)` for every image and block of lanes, spread over the workers.
    static func forEachSlice(images: Int, lanes: Int, work: Int, _ body: (Int, Range<Int>) -> Void) {
        let blocksPerImage = images >= Parallel.threadCount ? 1 : Swift.max(1, Swift.min(lanes / 8, Parallel.threadCount))
        let units = images * blocksPerImage
        let blockSize = Swift.max(1, 32_768 / Swift.max(work / Swift.max(units, 1), 1))
        Convolution.forEachRange(units, blockSize: blockSize) { range in
            for unit in range {
                let image = unit / blocksPerImage, block = unit % blocksPerImage
                body(image, (lanes * block / blocksPerImage)..<(lanes * (block + 1) / blocksPerImage))
            }
        }
    }

    // MARK: Max pooling

    static func maxForward(source: PoolingMemory, window: PoolingWindow, output: UnsafeMutablePointer<Float>, indices: UnsafeMutablePointer<Int32>) {
        let (height, width, lanes) = (source.height, source.width, source.lanes)
        let (outHeight, outWidth) = (window.outHeight, window.outWidth)
        let input = UnsafePointer(source.tensor.floatPointer)
        forEachSlice(images: source.images, lanes: lanes, work: source.tensor.count) { image, laneRange in
            // One lane (a row-major input) gets its own copy, compiled with the lane loops removed.
            @inline(__always) func run(_ laneRange: Range<Int>, _ lanes: Int) {
                let base = input + image * height * width * lanes
                for outY in 0..<outHeight {
                    let y0 = outY * window.stride - window.padding
                    let yStart = Swift.max(y0, 0), yEnd = Swift.min(y0 + window.kernelSize, height)
                    for outX in 0..<outWidth {
                        let x0 = outX * window.stride - window.padding
                        let xStart = Swift.max(x0, 0), xEnd = Swift.min(x0 + window.kernelSize, width)
                        let position = ((image * outHeight + outY) * outWidth + outX) * lanes
                        let best = output + position, bestIndex = indices + position
                        let firstIndex = Int32(truncatingIfNeeded: yStart * width + xStart)
                        for lane in laneRange {
                            best[lane] = -Float.infinity
                            bestIndex[lane] = firstIndex
                        }
                        // Scanned row by row like PyTorch: the first maximum wins, a NaN always wins.
                        for y in yStart..<yEnd {
                            for x in xStart..<xEnd {
                                let values = base + (y * width + x) * lanes
                                let index = Int32(truncatingIfNeeded: y * width + x)
                                for lane in laneRange {
                                    let value = values[lane]
                                    if value > best[lane] || value.isNaN {
                                        best[lane] = value
                                        bestIndex[lane] = index
                                    }
                                }
                            }
                        }
                    }
                }
            }
            if lanes == 1 { run(0..<1, 1) } else { run(laneRange, lanes) }
        }
    }

    static func maxBackward(gradient: UnsafePointer<Float>, indices: UnsafePointer<Int32>, window: PoolingWindow,
                            images: Int, lanes: Int, into result: UnsafeMutablePointer<Float>) {
        let pixels = window.outHeight * window.outWidth, inputPixels = window.height * window.width
        forEachSlice(images: images, lanes: lanes, work: images * pixels * lanes) { image, laneRange in
            // One lane (a row-major input) gets its own copy, compiled with the lane loops removed.
            @inline(__always) func run(_ laneRange: Range<Int>, _ lanes: Int) {
                let target = result + image * inputPixels * lanes
                for pixel in 0..<pixels {
                    let position = (image * pixels + pixel) * lanes
                    for lane in laneRange {
                        target[Int(indices[position + lane]) * lanes + lane] += gradient[position + lane]
                    }
                }
            }
            if lanes == 1 { run(0..<1, 1) } else { run(laneRange, lanes) }
        }
    }

    // MARK: Average pooling

    static func averageForward(source: PoolingMemory, window: PoolingWindow, output: UnsafeMutablePointer<Float>) {
        let (height, width, lanes) = (source.height, source.width, source.lanes)
        let (outHeight, outWidth) = (window.outHeight, window.outWidth)
        let input = UnsafePointer(source.tensor.floatPointer)
        let divisor = Float(window.kernelSize * window.kernelSize)
        forEachSlice(images: source.images, lanes: lanes, work: source.tensor.count) { image, laneRange in
            // One lane (a row-major input) gets its own copy, compiled with the lane loops removed.
            @inline(__always) func run(_ laneRange: Range<Int>, _ lanes: Int) {
                let base = input + image * height * width * lanes
                for outY in 0..<outHeight {
                    let y0 = outY * window.stride - window.padding
                    let yStart = Swift.max(y0, 0), yEnd = Swift.min(y0 + window.kernelSize, height)
                    for outX in 0..<outWidth {
                        let x0 = outX * window.stride - window.padding
                        let xStart = Swift.max(x0, 0), xEnd = Swift.min(x0 + window.kernelSize, width)
                        let target = output + ((image * outHeight + outY) * outWidth + outX) * lanes
                        for lane in laneRange { target[lane] = 0 }
                        for y in yStart..<yEnd {
                            for x in xStart..<xEnd {
                                let values = base + (y * width + x) * lanes
                                for lane in laneRange { target[lane] += values[lane] }
                            }
                        }
                        for lane in laneRange { target[lane] /= divisor }
                    }
                }
            }
            if lanes == 1 { run(0..<1, 1) } else { run(laneRange, lanes) }
        }
    }

    static func averageBackward(gradient: UnsafePointer<Float>, window: PoolingWindow, images: Int, lanes: Int, into result: UnsafeMutablePointer<Float>) {
        let (height, width) = (window.height, window.width)
        let (outHeight, outWidth) = (window.outHeight, window.outWidth)
        let divisor = Float(window.kernelSize * window.kernelSize)
        forEachSlice(images: images, lanes: lanes, work: images * outHeight * outWidth * lanes) { image, laneRange in
            // One lane (a row-major input) gets its own copy, compiled with the lane loops removed.
            @inline(__always) func run(_ laneRange: Range<Int>, _ lanes: Int) {
                let target = result + image * height * width * lanes
                for outY in 0..<outHeight {
                    let y0 = outY * window.stride - window.padding
                    let yStart = Swift.max(y0, 0), yEnd = Swift.min(y0 + window.kernelSize, height)
                    for outX in 0..<outWidth {
                        let x0 = outX * window.stride - window.padding
                        let xStart = Swift.max(x0, 0), xEnd = Swift.min(x0 + window.kernelSize, width)
                        let values = gradient + ((image * outHeight + outY) * outWidth + outX) * lanes
                        for y in yStart..<yEnd {
                            for x in xStart..<xEnd {
                                let destination = target + (y * width + x) * lanes
                                for lane in laneRange { destination[lane] += values[lane] / divisor }
                            }
                        }
                    }
                }
            }
            if lanes == 1 { run(0..<1, 1) } else { run(laneRange, lanes) }
        }
    }

    // MARK: Nearest upsampling

    static func nearestForward(source: PoolingMemory, factor: Int, output: UnsafeMutablePointer<Float>) {
        let (height, width, lanes) = (source.height, source.width, source.lanes)
        let (outHeight, outWidth) = (height * factor, width * factor)
        let input = UnsafePointer(source.tensor.floatPointer)
        forEachSlice(images: source.images, lanes: lanes, work: source.tensor.count * factor * factor) { image, laneRange in
            // One lane (a row-major input) gets its own copy, compiled with the lane loops removed.
            @inline(__always) func run(_ laneRange: Range<Int>, _ lanes: Int) {
                let base = input + image * height * width * lanes
                for outY in 0..<outHeight {
                    let row = base + (outY / factor) * width * lanes
                    let targetRow = output + (image * outHeight + outY) * outWidth * lanes
                    for x in 0..<width {
                        let values = row + x * lanes
                        for copy in 0..<factor {
                            let target = targetRow + (x * factor + copy) * lanes
                            for lane in laneRange { target[lane] = values[lane] }
                        }
                    }
                }
            }
            if lanes == 1 { run(0..<1, 1) } else { run(laneRange, lanes) }
        }
    }

    static func nearestBackward(gradient: UnsafePointer<Float>, shape: [Int], factor: Int, images: Int, lanes: Int, into result: UnsafeMutablePointer<Float>) {
        let (height, width) = (shape[2], shape[3])
        let (outHeight, outWidth) = (height * factor, width * factor)
        forEachSlice(images: images, lanes: lanes, work: images * outHeight * outWidth * lanes) { image, laneRange in
            // One lane (a row-major input) gets its own copy, compiled with the lane loops removed.
            @inline(__always) func run(_ laneRange: Range<Int>, _ lanes: Int) {
                let target = result + image * height * width * lanes
                for outY in 0..<outHeight {
                    let targetRow = target + (outY / factor) * width * lanes
                    let sourceRow = gradient + (image * outHeight + outY) * outWidth * lanes
                    for x in 0..<width {
                        let destination = targetRow + x * lanes
                        for copy in 0..<factor {
                            let values = sourceRow + (x * factor + copy) * lanes
                            for lane in laneRange { destination[lane] += values[lane] }
                        }
                    }
                }
            }
            if lanes == 1 { run(0..<1, 1) } else { run(laneRange, lanes) }
        }
    }

    // MARK: Bilinear resizing

    static func bilinearForward(source: PoolingMemory, rows: BilinearAxis, columns: BilinearAxis, output: UnsafeMutablePointer<Float>) {
        let (height, width, lanes) = (source.height, source.width, source.lanes)
        let (outHeight, outWidth) = (rows.outputSize, columns.outputSize)
        let input = UnsafePointer(source.tensor.floatPointer)
        forEachSlice(images: source.images, lanes: lanes, work: source.images * outHeight * outWidth * lanes) { image, laneRange in
            // One lane (a row-major input) gets its own copy, compiled with the lane loops removed.
            @inline(__always) func run(_ laneRange: Range<Int>, _ lanes: Int) {
                let base = input + image * height * width * lanes
                for outY in 0..<outHeight {
                    let top = base + rows.first[outY] * width * lanes, bottom = base + rows.second[outY] * width * lanes
                    let (topWeight, bottomWeight) = (rows.firstWeight[outY], rows.secondWeight[outY])
                    let targetRow = output + (image * outHeight + outY) * outWidth * lanes
                    for outX in 0..<outWidth {
                        let left = columns.first[outX] * lanes, right = columns.second[outX] * lanes
                        let (leftWeight, rightWeight) = (columns.firstWeight[outX], columns.secondWeight[outX])
                        let target = targetRow + outX * lanes
                        for lane in laneRange {
                            target[lane] = topWeight * (leftWeight * top[left + lane] + rightWeight * top[right + lane])
                                + bottomWeight * (leftWeight * bottom[left + lane] + rightWeight * bottom[right + lane])
                        }
                    }
                }
            }
            if lanes == 1 { run(0..<1, 1) } else { run(laneRange, lanes) }
        }
    }

    static func bilinearBackward(gradient: UnsafePointer<Float>, rows: BilinearAxis, columns: BilinearAxis,
                                 images: Int, lanes: Int, into result: UnsafeMutablePointer<Float>) {
        let (height, width) = (rows.inputSize, columns.inputSize)
        let (outHeight, outWidth) = (rows.outputSize, columns.outputSize)
        forEachSlice(images: images, lanes: lanes, work: images * outHeight * outWidth * lanes) { image, laneRange in
            // One lane (a row-major input) gets its own copy, compiled with the lane loops removed.
            @inline(__always) func run(_ laneRange: Range<Int>, _ lanes: Int) {
                let base = result + image * height * width * lanes
                for outY in 0..<outHeight {
                    let top = base + rows.first[outY] * width * lanes, bottom = base + rows.second[outY] * width * lanes
                    let (topWeight, bottomWeight) = (rows.firstWeight[outY], rows.secondWeight[outY])
                    let sourceRow = gradient + (image * outHeight + outY) * outWidth * lanes
                    for outX in 0..<outWidth {
                        let left = columns.first[outX] * lanes, right = columns.second[outX] * lanes
                        let (leftWeight, rightWeight) = (columns.firstWeight[outX], columns.secondWeight[outX])
                        let values = sourceRow + outX * lanes
                        for lane in laneRange {
                            let value = values[lane]
                            top[left + lane] += topWeight * leftWeight * value
                            top[right + lane] += topWeight * rightWeight * value
                            bottom[left + lane] += bottomWeight * leftWeight * value
                            bottom[right + lane] += bottomWeight * rightWeight * value
                        }
                    }
                }
            }
            if lanes == 1 { run(0..<1, 1) } else { run(laneRange, lanes) }
        }
    }
}

/// What `maxPool2d` keeps for its backward pass: where each maximum came from.
struct MaxPoolingBackward: BackwardContext {
    let window: PoolingWindow
    let channelsLast: Bool
    /// Per output element, the input pixel `y · W + x` of its window's maximum.
    let indices: [Int32]

    var name: String { "maxPool2d" }

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        let upstream = Pooling.memory(ofGradient: gradient, channelsLast: channelsLast)
        let result = Pooling.allocate(window.inputShape, channelsLast: channelsLast, zeroed: true)
        let (images, lanes) = channelsLast ? (window.batch, window.channels) : (window.batch * window.channels, 1)
        indices.withUnsafeBufferPointer { indices in
            Pooling.maxBackward(gradient: upstream.floatPointer, indices: indices.baseAddress!, window: window,
                                images: images, lanes: lanes, into: result.floatPointer)
        }
        return [result]
    }
}

/// What `avgPool2d` keeps for its backward pass.
struct AveragePoolingBackward: BackwardContext {
    let window: PoolingWindow
    let channelsLast: Bool

    var name: String { "avgPool2d" }

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        let upstream = Pooling.memory(ofGradient: gradient, channelsLast: channelsLast)
        let result = Pooling.allocate(window.inputShape, channelsLast: channelsLast, zeroed: true)
        let (images, lanes) = channelsLast ? (window.batch, window.channels) : (window.batch * window.channels, 1)
        Pooling.averageBackward(gradient: upstream.floatPointer, window: window, images: images, lanes: lanes, into: result.floatPointer)
        return [result]
    }
}

/// What `upsampleNearest` keeps for its backward pass.
struct NearestUpsamplingBackward: BackwardContext {
    let shape: [Int]
    let factor: Int
    let channelsLast: Bool

    var name: String { "upsampleNearest" }

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        let upstream = Pooling.memory(ofGradient: gradient, channelsLast: channelsLast)
        let result = Pooling.allocate(shape, channelsLast: channelsLast, zeroed: true)
        let (images, lanes) = channelsLast ? (shape[0], shape[1]) : (shape[0] * shape[1], 1)
        Pooling.nearestBackward(gradient: upstream.floatPointer, shape: shape, factor: factor, images: images, lanes: lanes, into: result.floatPointer)
        return [result]
    }
}

/// What `resizedBilinear` keeps for its backward pass.
struct BilinearBackward: BackwardContext {
    let shape: [Int]
    let rows: BilinearAxis, columns: BilinearAxis
    let channelsLast: Bool

    var name: String { "resizedBilinear" }

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        let upstream = Pooling.memory(ofGradient: gradient, channelsLast: channelsLast)
        let result = Pooling.allocate(shape, channelsLast: channelsLast, zeroed: true)
        let (images, lanes) = channelsLast ? (shape[0], shape[1]) : (shape[0] * shape[1], 1)
        Pooling.bilinearBackward(gradient: upstream.floatPointer, rows: rows, columns: columns, images: images, lanes: lanes, into: result.floatPointer)
        return [result]
    }
}
