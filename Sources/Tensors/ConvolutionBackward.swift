import Foundation

/// Hands out consecutive block indices to worker threads.
final class BlockDispenser: @unchecked Sendable {
    private let count: Int
    private var nextBlock = 0
    private let lock = NSLock()

    init(count: Int) { self.count = count }

    /// The next unclaimed block, or nil when all are taken.
    func claim() -> Int? {
        lock.lock()
        defer { lock.unlock() }
        guard nextBlock < count else { return nil }
        nextBlock += 1
        return nextBlock - 1
    }
}

/// What `conv2d` keeps for its backward pass.
struct ConvolutionBackward: BackwardContext {
    let geometry: ConvolutionGeometry
    let algorithm: ConvolutionAlgorithm
    /// The float32 input, kept when the weight needs a gradient.
    let input: Tensor?
    /// Whether `input` is channels-last (else row-major, read by the Winograd path).
    let inputIsChannelsLast: Bool
    /// The contiguous float32 weight, kept when the input needs a gradient.
    let weight: Tensor?
    /// The weight's pixel map (`.pixelMap`), kept with the weight.
    var pixelMap: Tensor? = nil
    /// The layout the input came in; its gradient is returned the same way.
    let inputLayout: TensorLayout
    let hasBias: Bool

    var name: String { "conv2d" }

    func mappingSavedActivations(_ transform: (Tensor) -> Tensor) -> any BackwardContext {
        ConvolutionBackward(geometry: geometry, algorithm: algorithm, input: input.map(transform), inputIsChannelsLast: inputIsChannelsLast, weight: weight, pixelMap: pixelMap,
                            inputLayout: inputLayout, hasBias: hasBias)
    }

    func backward(_ gradient: Tensor, inputs: [Tensor?]) -> [Tensor?] {
        let upstream = Convolution.channelsLast(gradient)
        var result: [Tensor?] = Array(repeating: nil, count: inputs.count)
        if inputs[0] != nil, let weight {
            var inputGradient: Tensor
            switch algorithm {
            case .winograd:
                // A stride-1 convolution's data gradient is the convolution of dY with the
                // flipped, transposed kernel and padding 2 − p.
                let tile = Convolution.winogradTile
                let (plan, schedule) = Convolution.winogradPlan(batch: geometry.batch, height: geometry.outHeight, width: geometry.outWidth,
                                                                inChannels: geometry.outChannels, outChannels: geometry.inChannels,
                                                                padding: 2 - geometry.padding, outputTile: tile, blockBytes: Convolution.forwardBlockBytes)
                let transformed = Winograd.transformWeight(weight.floatPointer, outChannels: geometry.outChannels, inChannels: geometry.inChannels,
                                                           outputTile: tile, forDataGradient: true)
                defer { ScratchMemory.release(transformed) }
                inputGradient = Convolution.channelsLastTensor(geometry.inputShape)
                Winograd.convolve(input: upstream.floatPointer, inputIsChannelsLast: true, plan: plan, schedule: schedule,
                                  transformedWeight: transformed, bias: nil, output: inputGradient.floatPointer)
            case .smallImage:
                inputGradient = Convolution.smallImageDataGradient(gradient: upstream.floatPointer, weight: weight.floatPointer, geometry: geometry)
            case .pixelMap:
                let map = pixelMap ?? Convolution.pixelMap(weight: weight.floatPointer, geometry: geometry)
                inputGradient = Convolution.pixelMapDataGradient(gradient: upstream.floatPointer, map: map, geometry: geometry)
            case .pointwise, .im2col:
                let matrix = Convolution.weightMatrix(weight, geometry)
                inputGradient = withExtendedLifetime(matrix) {
                    Convolution.im2colDataGradient(gradient: upstream.floatPointer, weight: matrix.floatPointer, geometry: geometry)
                }
            }
            if inputLayout == .contiguous { inputGradient = Convolution.contiguous(fromChannelsLast: inputGradient) }
            result[0] = inputGradient
        }
        if inputs[1] != nil, let input {
            switch algorithm {
            case .winograd:
                let (plan, schedule) = Convolution.winogradPlan(batch: geometry.batch, height: geometry.height, width: geometry.width,
                                                                inChannels: geometry.inChannels, outChannels: geometry.outChannels,
                                                                padding: geometry.padding, outputTile: Convolution.weightGradientTile,
                                                                blockBytes: Convolution.weightGradientBlockBytes)
                result[1] = Winograd.weightGradient(input: input.floatPointer, inputIsChannelsLast: inputIsChannelsLast,
                                                    gradient: upstream.floatPointer, plan: plan, schedule: schedule)
            case .smallImage:
                result[1] = Convolution.smallImageWeightGradient(input: input.floatPointer, inputIsChannelsLast: inputIsChannelsLast,
                                                                 gradient: upstream.floatPointer, geometry: geometry)
            case .pixelMap:
                result[1] = Convolution.pixelMapWeightGradient(input: input.floatPointer, gradient: upstream.floatPointer, geometry: geometry)
            case .pointwise, .im2col:
                result[1] = Convolution.im2colWeightGradient(input: input.floatPointer, gradient: upstream.floatPointer, geometry: geometry)
            }
        }
        if hasBias && inputs[2] != nil {
            result[2] = Convolution.biasGradient(upstream, channels: geometry.outChannels)
        }
        return result
    }
}
