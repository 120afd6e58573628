import Foundation
@testable import Tensors
import XCTest

/// The bfloat16 inference path of `conv2d` (oneDNN's convolution, or its matrix product for
/// 1×1) against the float64 reference convolution of the same bfloat16-rounded input and
/// weight: they differ only by float32 accumulation. Shapes cover the ways the work is split
/// (groups of images; bands of rows of one image, with the padding only on the outer bands),
/// strides, kernels and channel counts. Runs only where the CPU has AVX512-BF16 (it says so otherwise).
final class BFloat16ConvolutionTests: XCTestCase {
    override func setUpWithError() throws {
        guard CPUFeatures.hasAVX512BF16 else {
            print("BFloat16ConvolutionTests: skipped, this CPU (\(CPUFeatures.modelName)) has no AVX512-BF16")
            throw XCTSkip("no AVX512-BF16 on this CPU")
        }
        print("BFloat16ConvolutionTests: running on \(CPUFeatures.modelName) (\(CPUFeatures.summary))")
    }

    override func tearDown() {
        ComputeMode.precision = .float32
        Convolution.preferBFloat16 = nil
    }

    static func roundedToBFloat16(_ tensor: Tensor) -> Tensor {
        Tensor(tensor.toArray().map { HalfPrecision.float(fromBFloat16: HalfPrecision.bfloat16Bits($0)) }, shape: tensor.shape)
    }

    func testConvolutionsMatchTheRoundedInputs() {
        var generator = RandomGenerator(seed: 5)
        // (batch, in, out, size, kernel, stride, padding, bias)
        let cases: [(Int, Int, Int, Int, Int, Int, Int, Bool)] = [
            (2, 16, 24, 12, 3, 1, 1, true),   // one image per worker
            (1, 16, 8, 13, 3, 1, 1, true),    // bands of rows of one image, odd height
            (1, 8, 16, 9, 3, 2, 1, false),    // stride 2 (a downsampler)
            (3, 8, 8, 10, 3, 2, 0, true),     // stride 2, no padding (the VAE's, after its own padding)
            (1, 12, 20, 7, 1, 1, 0, true),    // 1×1: the matrix product
            (2, 4, 6, 11, 5, 1, 2, true),     // 5×5
            (1, 3, 8, 6, 3, 1, 0, false),     // unpadded 3×3, few channels
        ]
        for (batch, inChannels, outChannels, size, kernel, stride, padding, hasBias) in cases {
            let input = Tensor.randn([batch, inChannels, size, size], generator: &generator)
            let weight = Tensor.randn([outChannels, inChannels, kernel, kernel], generator: &generator) * 0.2
            let bias = hasBias ? Tensor.randn([outChannels], generator: &generator) : nil
            ComputeMode.precision = .bfloat16
            Convolution.preferBFloat16 = true
            let fast = noGrad { input.conv2d(weight: weight, bias: bias, stride: stride, padding: padding) }
            ComputeMode.precision = .float32
            Convolution.preferBFloat16 = nil
            let expected = Tensor.conv2dReference(input: Self.roundedToBFloat16(input), weight: Self.roundedToBFloat16(weight), bias: bias,
                                                  stride: stride, padding: padding)
            let unrounded = Tensor.conv2dReference(input: input, weight: weight, bias: bias, stride: stride, padding: padding)
            XCTAssertEqual(fast.shape, expected.shape)
            let (a, b, c) = (fast.contiguous().toArray(), expected.toArray(), unrounded.toArray())
            let scale = b.map(abs).max() ?? 1
            let error = zip(a, b).map { abs($0 - $1) }.max() ?? 0
            let roundingEffect = zip(b, c).map { abs($0 - $1) }.max() ?? 0
            let label = "batch \(batch), \(inChannels)→\(outChannels), \(size)×\(size), k\(kernel) s\(stride) p\(padding)"
            // float32 accumulation of at most 9·16 products: well under 1e-5 of the scale; bfloat16's own effect is ~1e-3.
            XCTAssertLessThan(error / scale, 1e-5, label)
            XCTAssertGreaterThan(roundingEffect / scale, 1e-4, "\(label): the inputs were not rounded, the test cannot tell")
        }
    }

    /// The shape rule sends 3×3 images larger than 16×16 to the float32 Winograd kernels and the
    /// rest (small images, strided and other kernels) to oneDNN; a weight changed by an optimizer step is re-read.
    func testShapeRuleAndWeightChanges() {
        XCTAssertFalse(Convolution.bfloat16Suits(ConvolutionGeometry(input: [1, 128, 512, 512], weight: [128, 128, 3, 3], bias: nil, stride: 1, padding: 1)))
        XCTAssertFalse(Convolution.bfloat16Suits(ConvolutionGeometry(input: [2, 320, 64, 64], weight: [320, 320, 3, 3], bias: nil, stride: 1, padding: 1)))
        XCTAssertTrue(Convolution.bfloat16Suits(ConvolutionGeometry(input: [2, 320, 64, 64], weight: [320, 320, 3, 3], bias: nil, stride: 2, padding: 1)))
        XCTAssertTrue(Convolution.bfloat16Suits(ConvolutionGeometry(input: [2, 1280, 16, 16], weight: [1280, 1280, 3, 3], bias: nil, stride: 1, padding: 1)))
        var generator = RandomGenerator(seed: 6)
        let input = Tensor.randn([2, 8, 8, 8], generator: &generator)
        let weight = Tensor.randn([8, 8, 3, 3], generator: &generator)
        ComputeMode.precision = .bfloat16
        let before = noGrad { input.conv2d(weight: weight, padding: 1) }.contiguous().toArray()
        weight.copyValues(from: weight * 2)
        let after = noGrad { input.conv2d(weight: weight, padding: 1) }.contiguous().toArray()
        for (first, second) in zip(before, after) { XCTAssertEqual(second, 2 * first, accuracy: 1e-4 * max(1, abs(first))) }
    }

    /// A weight mapped from a file: once reordered into oneDNN's layout, its pages leave the process
    /// (`MappedPages`); the results stay those of the same weight in ordinary memory, also after the
    /// copies are released (`ComputeMode.releaseWeightCopies`, as the pipeline does before decoding) and made again.
    func testMappedWeightPagesAreReleasedAfterPacking() throws {
        var generator = RandomGenerator(seed: 7)
        let input = Tensor.randn([1, 64, 8, 8], generator: &generator)
        let values = Tensor.randn([64, 64, 3, 3], generator: &generator).toArray()  // 144 KB: whole pages inside
        let file = try MappedPagesTests.MappedFile(values)
        let mapped = file.tensor(count: values.count).reshaped([64, 64, 3, 3])
        let ordinary = Tensor(values, shape: [64, 64, 3, 3])
        ComputeMode.precision = .bfloat16
        Convolution.preferBFloat16 = true
        let expected = noGrad { input.conv2d(weight: ordinary, padding: 1) }.contiguous().toArray()
        _ = mapped.toArray()
        XCTAssertGreaterThan(MappedPages.residentPages(file.bytes, byteCount: file.byteCount), 30)
        let first = noGrad { input.conv2d(weight: mapped, padding: 1) }.contiguous().toArray()
        XCTAssertLessThanOrEqual(MappedPages.residentPages(file.bytes, byteCount: file.byteCount), 2, "only the partial pages at the ends may stay")
        ComputeMode.releaseWeightCopies()
        let second = noGrad { input.conv2d(weight: mapped, padding: 1) }.contiguous().toArray()
        XCTAssertEqual(first, expected)
        XCTAssertEqual(second, expected)
    }
}
