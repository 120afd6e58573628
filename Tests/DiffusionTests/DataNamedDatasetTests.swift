import TestSupport
import Diffusion
import Foundation
import Tensors
import XCTest

final class DataNamedDatasetTests: XCTestCase {
    func testFashionMNISTByName() throws {
        try XCTSkipUnless(FileManager.default.fileExists(atPath: FashionMNIST.directory + "/t10k-images-idx3-ubyte.gz"),
                          "dataset-fashion-mnist is not installed")
        let dataset = try Datasets.open("fashion-mnist", training: false, limit: 50)
        XCTAssertEqual(dataset.count, 50)
        XCTAssertEqual(dataset.classNames.count, 10)
        XCTAssertEqual(dataset.classNames[9], "Ankle boot")
        let first = try dataset.example(at: 0)
        XCTAssertEqual(first.image.shape, [1, 28, 28])
        XCTAssertEqual(first.label, 9)
        XCTAssertNil(first.caption)
        let values = first.image.toArray()
        XCTAssertEqual(values.min(), -1)
        XCTAssertLessThanOrEqual(values.max() ?? 2, 1)
        // The same pixels as the bulk loader.
        let bulk = try FashionMNIST.load(training: false, limit: 2)
        XCTAssertEqual(Array(bulk.images.toArray().prefix(784)), values)

        let loader = DataLoader(dataset: dataset, batchSize: 16, seed: 3, dropLast: true)
        let batches = try loader.remainingBatches()
        XCTAssertEqual(batches.count, 3)
        XCTAssertEqual(batches[0].images.shape, [16, 1, 28, 28])
        XCTAssertEqual(batches[0].classLabels?.count, 16)
    }

    func testMissingMNISTTellsTheUserToRunMakeData() throws {
        let empty = try temporaryFolderPath("data")
        XCTAssertThrowsError(try MNIST.dataset(directory: empty)) { error in
            let message = "\(error)"
            XCTAssertTrue(message.contains("make data"), message)
            XCTAssertTrue(message.contains("mnist"), message)
            XCTAssertTrue(message.contains(empty + "/train-images-idx3-ubyte.gz"), message)
        }
        setenv(MNIST.dataEnvironmentVariable, empty, 1)
        defer { unsetenv(MNIST.dataEnvironmentVariable) }
        XCTAssertEqual(MNIST.directory, empty + "/mnist")
        XCTAssertThrowsError(try Datasets.open("mnist")) { error in
            XCTAssertTrue("\(error)".contains("make data"), "\(error)")
        }
    }

    func testMNISTByNameAfterMakeData() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let directory = root.appendingPathComponent("data/mnist").path
        try XCTSkipUnless(FileManager.default.fileExists(atPath: directory + "/t10k-images-idx3-ubyte.gz"),
                          "MNIST is not fetched (run `make data`)")
        let dataset = try MNIST.dataset(training: false, limit: 10, directory: directory)
        XCTAssertEqual(dataset.count, 10)
        // The first MNIST test digits are 7, 2, 1, 0, 4.
        XCTAssertEqual(Array(dataset.labels.prefix(5)), [7, 2, 1, 0, 4])
        XCTAssertEqual(try dataset.example(at: 0).image.shape, [1, 28, 28])
    }

    func testIDXDatasetFromPlainFiles() throws {
        let folder = try temporaryFolderPath("data")
        // Three 2×2 images and their labels, uncompressed.
        try writeFile([0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2] + (0..<12).map { UInt8($0 * 20) }, to: folder + "/train-images-idx3-ubyte")
        try writeFile([0, 0, 8, 1, 0, 0, 0, 3, 2, 0, 1], to: folder + "/train-labels-idx1-ubyte")
        let dataset = try MNIST.dataset(directory: folder)
        XCTAssertEqual(dataset.count, 3)
        XCTAssertEqual(dataset.labels, [2, 0, 1])
        let example = try dataset.example(at: 1)
        XCTAssertEqual(example.image.toArray(), [80, 100, 120, 140].map { Float($0) / 127.5 - 1 })
        XCTAssertEqual(example.label, 0)
        XCTAssertEqual(dataset.allImages().shape, [3, 1, 2, 2])
        XCTAssertEqual(dataset.source(of: 1), "mnist example 1")
        // Mismatched label count.
        try writeFile([0, 0, 8, 1, 0, 0, 0, 2, 2, 0], to: folder + "/train-labels-idx1-ubyte")
        XCTAssertThrowsError(try MNIST.dataset(directory: folder))
    }
}
