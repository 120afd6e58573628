import TestSupport
import Diffusion
import Foundation
import Tensors
import XCTest

final class DataImageCodecTests: XCTestCase {
    private func expectations() throws -> [String: [String: Any]] {
        try XCTUnwrap(try DataFixtures.json("expected.json") as? [String: [String: Any]])
    }

    private func check(_ name: String, tolerance: Int) throws {
        let expected = try XCTUnwrap(try expectations()[name], name)
        let image = try ImageFile.read(DataFixtures.image(name))
        XCTAssertEqual(image.width, expected["width"] as? Int, name)
        XCTAssertEqual(image.height, expected["height"] as? Int, name)
        XCTAssertEqual(image.channels, expected["channels"] as? Int, name)
        let samples = try XCTUnwrap(expected["samples"] as? [Int], name)
        XCTAssertEqual(image.samples.count, samples.count, name)
        let worst = zip(image.samples, samples).map { abs(Int($0) - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(worst, tolerance, "\(name): largest sample difference \(worst)")
    }

    func testEightBitPNGsDecodeExactly() throws {
        for name in ["grey8.png", "rgb8.png", "interlaced.png"] { try check(name, tolerance: 0) }
    }

    func testAlphaIsDropped() throws {
        try check("rgba8.png", tolerance: 0)
        try check("grey-alpha8.png", tolerance: 0)
    }

    func testPalettesExpandToRGB() throws {
        try check("palette.png", tolerance: 0)
        try check("palette-trns.png", tolerance: 0)
    }

    func testLowAndHighBitDepths() throws {
        try check("grey1.png", tolerance: 0)
        try check("grey16.png", tolerance: 0)
        try check("rgb16.png", tolerance: 0)
    }

    func testJPEGDecodesCloseToPillow() throws {
        try check("grey.jpg", tolerance: 2)
        try check("rgb.jpg", tolerance: 2)
        try check("cmyk.jpg", tolerance: 3)
        // And close to the colours that were encoded.
        let rgb = try ImageFile.read(DataFixtures.image("rgb.jpg"))
        XCTAssertEqual(rgb.channels, 3)
        for (row, column, color) in [(2, 2, [220, 30, 30]), (3, 12, [30, 200, 40]), (12, 3, [20, 40, 210]), (13, 13, [240, 240, 240])] {
            for channel in 0..<3 {
                XCTAssertLessThanOrEqual(abs(Int(rgb[row, column, channel]) - color[channel]), 4, "(\(row), \(column))")
            }
        }
    }

    func testWrittenPNGReadsBackExactly() throws {
        var generator = RandomGenerator(seed: 7)
        for channels in [1, 3] {
            let (width, height) = (13, 6)
            let samples = (0..<(width * height * channels)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            let image = PixelImage(width: width, height: height, channels: channels, samples: samples)
            let path = try temporaryFolderPath("data") + "/written.png"
            try PNG.write(image, to: path)
            XCTAssertEqual(try ImageFile.read(path), image)
        }
    }

    func testTensorConversionRoundTrips() throws {
        let image = PixelImage(width: 3, height: 2, channels: 3, samples: (0..<18).map { UInt8($0 * 14) })
        let tensor = image.tensor()
        XCTAssertEqual(tensor.shape, [3, 2, 3])
        XCTAssertEqual(tensor[0, 0, 0], -1)
        XCTAssertEqual(tensor[1, 0, 0], Float(14) / 127.5 - 1, accuracy: 1e-6)
        XCTAssertEqual(PixelImage(tensor: tensor), image)
        // Out-of-range values are clamped.
        let clamped = PixelImage(tensor: Tensor([-3, 2, 0], shape: [1, 1, 3]))
        XCTAssertEqual(clamped.samples, [0, 255, 128])
    }

    func testSavePNGIsAtomicAndReplaces() throws {
        let folder = try temporaryFolderPath("data")
        let path = folder + "/sample.png"
        try savePNG(Tensor.full(1, [3, 4, 5]), path: path)
        try savePNG(Tensor.full(-1, [1, 4, 5]), path: path)
        let image = try ImageFile.read(path)
        XCTAssertEqual([image.channels, image.height, image.width], [1, 4, 5])
        XCTAssertEqual(Set(image.samples), [0])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder), ["sample.png"], "no temporary file left")
        XCTAssertThrowsError(try savePNG(Tensor.zeros([1, 2, 2]), path: folder + "/missing/folder/x.png"))
    }

    func testGridLayout() throws {
        // Five 1×2×2 images with values -1, -0.5, 0, 0.5, 1 in 3 columns, padding 1.
        let images = Tensor((0..<5).flatMap { index in [Float](repeating: Float(index) / 2 - 1, count: 4) }, shape: [5, 1, 2, 2])
        let grid = makeGrid(images: images, columns: 3, padding: 1, paddingValue: 0.25)
        XCTAssertEqual([grid.width, grid.height, grid.channels], [3 * 3 + 1, 2 * 3 + 1, 1])
        XCTAssertEqual(grid[0, 0, 0], 159, "padding (0.25 → 159.375)")
        XCTAssertEqual(grid[3, 2, 0], 159, "padding between rows")
        XCTAssertEqual(grid[1, 1, 0], 0, "image 0 at the top left")
        XCTAssertEqual(grid[2, 5, 0], 64, "image 1 (-0.5 → 63.75 → 64)")
        XCTAssertEqual(grid[4, 1, 0], 191, "image 3 starts the second row (0.5 → 191.25)")
        XCTAssertEqual(grid[5, 5, 0], 255, "image 4")
        XCTAssertEqual(grid[5, 8, 0], 159, "the missing sixth image is background")
        let path = try temporaryFolderPath("data") + "/grid.png"
        try savePNG(images, path: path, columns: 3, padding: 1)
        XCTAssertEqual(try ImageFile.read(path).width, 10)
    }

    func testCorruptFilesThrowNamingTheFile() throws {
        let folder = try temporaryFolderPath("data")
        let png = try [UInt8](XCTUnwrap(FileManager.default.contents(atPath: DataFixtures.image("rgb8.png"))))
        let jpeg = try [UInt8](XCTUnwrap(FileManager.default.contents(atPath: DataFixtures.image("rgb.jpg"))))
        var badCRC = png
        badCRC[png.count - 20] ^= 0xFF   // inside the IDAT data
        let cases: [(String, [UInt8])] = [
            ("truncated.png", Array(png.prefix(png.count / 2))),
            ("bad-crc.png", badCRC),
            ("truncated.jpg", Array(jpeg.prefix(jpeg.count / 2))),
            ("garbage.jpg", [0xFF, 0xD8, 0xFF] + [UInt8](repeating: 7, count: 40)),
            ("text.png", Array("hello".utf8)),
            ("empty.png", []),
        ]
        for (name, bytes) in cases {
            let path = folder + "/" + name
            try writeFile(bytes, to: path)
            XCTAssertThrowsError(try ImageFile.read(path), name) { error in
                XCTAssertTrue("\(error)".contains(path), "\(name): \(error)")
            }
        }
        XCTAssertThrowsError(try ImageFile.read(folder + "/missing.png")) { error in
            XCTAssertTrue("\(error)".contains("missing.png"), "\(error)")
        }
    }
}
