import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import Tensors
import XCTest

/// `MappedPages.release` drops a mapped file's pages from the process (they read back the same, from the file),
/// leaves alone a range where a page was written (a private mapping's own copy), and anonymous memory.
final class MappedPagesTests: XCTestCase {
    /// A private, writable mapping of a temporary file holding `values`, as checkpoints are mapped.
    final class MappedFile {
        let bytes: UnsafeMutableRawPointer
        let byteCount: Int

        init(_ values: [Float]) throws {
            let url = FileManager.default.temporaryDirectory.appendingPathComponent("mapped-pages-\(UUID().uuidString)")
            try values.withUnsafeBytes { Data($0) }.write(to: url)
            defer { try? FileManager.default.removeItem(at: url) }
            let descriptor = open(url.path, O_RDONLY)
            guard descriptor >= 0 else { throw CocoaError(.fileReadUnknown) }
            defer { close(descriptor) }
            byteCount = values.count * 4
            guard let mapping = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_PRIVATE, descriptor, 0), mapping != MAP_FAILED else {
                throw CocoaError(.fileReadUnknown)
            }
            bytes = mapping
        }

        deinit { munmap(bytes, byteCount) }

        func tensor(offset: Int = 0, count: Int) -> Tensor {
            Tensor(storage: Storage(borrowing: bytes, count: byteCount / 4, dataType: .float32, owner: self), shape: [byteCount / 4])
                .narrowed(axis: 0, start: offset, length: count)
        }
    }

    let pageFloats = Int(sysconf(Int32(_SC_PAGESIZE))) / 4

    func testReleasesReadPagesWhichReadBackTheSame() throws {
        let values = (0..<(pageFloats * 16)).map { Float($0 % 1000) * 0.5 }
        let file = try MappedFile(values)
        let whole = file.tensor(count: values.count)
        XCTAssertEqual(whole.toArray(), values)  // reads every page in
        XCTAssertEqual(MappedPages.residentPages(file.bytes, byteCount: file.byteCount), 16)
        // A tensor from the middle of a page to the middle of another: only the whole pages between go.
        let part = file.tensor(offset: pageFloats / 2, count: pageFloats * 10)
        XCTAssertEqual(MappedPages.release(part), 9 * pageFloats * 4)
        XCTAssertEqual(MappedPages.residentPages(file.bytes, byteCount: file.byteCount), 7)
        XCTAssertEqual(whole.toArray(), values, "released pages must read back from the file")
        XCTAssertEqual(MappedPages.residentPages(file.bytes, byteCount: file.byteCount), 16)
    }

    func testKeepsARangeWithAWrittenPage() throws {
        let values = (0..<(pageFloats * 8)).map(Float.init)
        let file = try MappedFile(values)
        let tensor = file.tensor(count: values.count)
        _ = tensor.toArray()
        tensor.storage.floats[pageFloats * 3 + 1] = -7  // the process's own copy of page 3 now
        XCTAssertEqual(MappedPages.release(tensor), 0)
        XCTAssertEqual(tensor.toArray()[pageFloats * 3 + 1], -7, "a written page must not be dropped")
        XCTAssertEqual(MappedPages.residentPages(file.bytes, byteCount: file.byteCount), 8)
        // Without the written page, the rest goes.
        XCTAssertEqual(MappedPages.release(file.tensor(offset: pageFloats * 4, count: pageFloats * 4)), pageFloats * 4 * 4)
        XCTAssertEqual(MappedPages.residentPages(file.bytes, byteCount: file.byteCount), 4)
    }

    func testLeavesAnonymousMemory() {
        let tensor = Tensor((0..<(pageFloats * 8)).map(Float.init), shape: [pageFloats * 8])
        XCTAssertEqual(MappedPages.release(tensor), 0)
        XCTAssertEqual(tensor.toArray()[5], 5)
    }
}
