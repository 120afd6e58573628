import TestSupport
import Diffusion
import Foundation
import Tensors
import XCTest

final class DataImageFolderTests: XCTestCase {
    /// root/
    ///   zebra/z1.png            (class "zebra")
    ///   cat/b.png, cat/a.jpg    (class "cat")
    ///   cat/kittens/c.png       (class "cat", nested)
    ///   loose.png               (no class)
    ///   notes.txt, .hidden.png, .cache/x.png   (ignored)
    ///   metadata.jsonl, cat/metadata.jsonl
    private func makeFolder() throws -> String {
        let root = try temporaryFolderPath("data")
        try writeFlatPNG(to: root + "/zebra/z1.png", color: [10, 20, 30])
        try writeFlatPNG(to: root + "/cat/b.png", color: [200])
        try writeFlatPNG(to: root + "/cat/kittens/c.png", color: [1, 2, 3])
        try writeFlatPNG(to: root + "/loose.png", color: [9, 9, 9])
        try writeFlatPNG(to: root + "/.hidden.png", color: [0])
        try writeFlatPNG(to: root + "/.cache/x.png", color: [0])
        let jpeg = try [UInt8](XCTUnwrap(FileManager.default.contents(atPath: DataFixtures.image("grey.jpg"))))
        try writeFile(jpeg, to: root + "/cat/a.JPG")
        try writeFile(Array("not an image".utf8), to: root + "/notes.txt")
        try writeFile(Array("""
        {"file_name": "zebra/z1.png", "text": "a striped horse", "score": 3, "flag": true, "none": null}
        {"file_name": "loose.png", "text": "a loose one"}

        """.utf8), to: root + "/metadata.jsonl")
        try writeFile(Array("""
        {"file_name": "kittens/c.png", "text": "small cats", "source": {"site": "x"}}
        {"file_name": "a.JPG", "caption": "only another column"}
        """.utf8), to: root + "/cat/metadata.jsonl")
        return root
    }

    func testLabelsFromSortedSubfoldersAndCaptionsFromMetadata() throws {
        let root = try makeFolder()
        let dataset = try ImageFolderDataset(directory: root)
        XCTAssertEqual(dataset.relativePaths, ["cat/a.JPG", "cat/b.png", "cat/kittens/c.png", "loose.png", "zebra/z1.png"])
        XCTAssertEqual(dataset.classNames, ["cat", "zebra"])
        XCTAssertEqual(dataset.labels, [0, 0, 0, nil, 1])
        XCTAssertEqual(dataset.captions, [nil, nil, "small cats", "a loose one", "a striped horse"])
        XCTAssertEqual(dataset.metadata[0], ["caption": "only another column"])
        XCTAssertEqual(dataset.metadata[4], ["text": "a striped horse", "score": "3", "flag": "true"])
        XCTAssertEqual(dataset.metadata[2]["source"], #"{"site": "x"}"#)

        let zebra = try dataset.example(at: 4)
        XCTAssertEqual(zebra.image.shape, [3, 4, 4])
        XCTAssertEqual(zebra.image[2, 1, 1], Float(30) / 127.5 - 1, accuracy: 1e-6)
        XCTAssertEqual(zebra.label, 1)
        XCTAssertEqual(zebra.caption, "a striped horse")
        XCTAssertEqual(try dataset.example(at: 0).image.shape, [1, 16, 16], "the JPEG, by content")

        let byCaption = try ImageFolderDataset(directory: root, captionColumn: "caption")
        XCTAssertEqual(byCaption.captions, ["only another column", nil, nil, nil, nil])
        XCTAssertTrue(try Datasets.open(root) is ImageFolderDataset)
    }

    func testFolderWithoutSubfoldersHasNoClasses() throws {
        let root = try temporaryFolderPath("data")
        try writeFlatPNG(to: root + "/b.png", color: [1])
        try writeFlatPNG(to: root + "/a.png", color: [2])
        let dataset = try ImageFolderDataset(directory: root)
        XCTAssertEqual(dataset.classNames, [])
        XCTAssertEqual(dataset.labels, [nil, nil])
        XCTAssertEqual(dataset.relativePaths, ["a.png", "b.png"])
    }

    func testFolderErrors() throws {
        let empty = try temporaryFolderPath("data")
        try writeFile(Array("x".utf8), to: empty + "/readme.txt")
        XCTAssertThrowsError(try ImageFolderDataset(directory: empty)) { error in
            XCTAssertTrue("\(error)".contains("no PNG or JPEG images"), "\(error)")
        }
        XCTAssertThrowsError(try ImageFolderDataset(directory: empty + "/nowhere"))
        XCTAssertThrowsError(try Datasets.open(empty + "/nowhere")) { error in
            XCTAssertTrue("\(error)".contains("neither a known dataset"), "\(error)")
        }
        for (contents, problem) in [("{\"text\": \"no file\"}", "file_name"), ("[1, 2]", "not a JSON object"), ("{broken", "not valid JSON")] {
            let root = try temporaryFolderPath("data")
            try writeFlatPNG(to: root + "/a.png", color: [1])
            try writeFile(Array("{\"file_name\": \"a.png\"}\n\(contents)\n".utf8), to: root + "/metadata.jsonl")
            XCTAssertThrowsError(try ImageFolderDataset(directory: root)) { error in
                XCTAssertTrue("\(error)".contains("metadata.jsonl line 2"), "\(error)")
                XCTAssertTrue("\(error)".contains(problem), "\(error)")
            }
        }
    }
}
