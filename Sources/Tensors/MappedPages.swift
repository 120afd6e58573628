import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Gives the pages of a mapped file's tensor back to the system once the tensor lives on in another form.
///
/// The bfloat16 paths keep some weights as copies of their own: a convolution's weight reordered into
/// oneDNN's blocked layout (1.1 GB for Stable Diffusion 1.5's UNet), a float16 matrix rounded to
/// bfloat16. When the original is mapped from a checkpoint, its pages are then resident twice over
/// for nothing; `release` drops this process's copies of them (`MADV_DONTNEED`), and the next read
/// of the tensor, if any, maps them again from the file (from the page cache when still there).
///
/// It only ever drops pages that still are the file's: a private mapping's page that was written
/// (an optimizer step on mapped weights) is the process's own copy, and dropping it would lose
/// the write. So the range is first checked in `/proc/self/pagemap`, and left alone when any of
/// its resident pages is not a file page. Pages only partly inside the range are kept.
public enum MappedPages {
    /// Whether `release` drops pages (`DIFFUSE_KEEP_MAPPED_PAGES=1` turns it off).
    public nonisolated(unsafe) static var isEnabled = ProcessInfo.processInfo.environment["DIFFUSE_KEEP_MAPPED_PAGES"] != "1"

    /// Bytes dropped so far (for tests and reports).
    public private(set) nonisolated(unsafe) static var releasedBytes = 0
    private static let lock = NSLock()
    private static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Drops the whole pages of `tensor`'s elements when its storage is mapped from a file and
    /// none of them was written; returns the bytes dropped.
    @discardableResult
    public static func release(_ tensor: Tensor) -> Int {
        let storage = tensor.storage
        guard isEnabled, storage.isBorrowed, tensor.isContiguous else { return 0 }
        let size = storage.dataType.byteSize
        return release(storage.bytes + tensor.offset * size, byteCount: tensor.count * size)
    }

    /// Drops the whole pages inside `byteCount` bytes from `start` when every resident one is a
    /// page of a file; returns the bytes dropped (0 when some page was the process's own).
    @discardableResult
    public static func release(_ start: UnsafeMutableRawPointer, byteCount: Int) -> Int {
        let first = (Int(bitPattern: start) + pageSize - 1) / pageSize * pageSize
        let end = (Int(bitPattern: start) + byteCount) / pageSize * pageSize
        guard end > first, onlyFilePages(from: first, to: end) else { return 0 }
        guard madvise(UnsafeMutableRawPointer(bitPattern: first), end - first, MADV_DONTNEED) == 0 else { return 0 }
        lock.lock()
        releasedBytes += end - first
        lock.unlock()
        return end - first
    }

    /// True when every resident page in `[first, end)` (page-aligned) is a file page, by
    /// `/proc/self/pagemap`: bit 63 present, bit 62 swapped, bit 61 file page or shared anonymous.
    static func onlyFilePages(from first: Int, to end: Int) -> Bool {
        var onlyFiles = true
        let complete = forEachPagemapEntry(from: first, to: end) { entry in
            let present = entry & (1 << 63) != 0, swapped = entry & (1 << 62) != 0, file = entry & (1 << 61) != 0
            if swapped || (present && !file) { onlyFiles = false }
            return onlyFiles
        }
        return complete && onlyFiles
    }

    /// How many pages in `[start, start + byteCount)` this process has resident (for tests; -1 when
    /// `/proc/self/pagemap` cannot be read).
    public static func residentPages(_ start: UnsafeRawPointer, byteCount: Int) -> Int {
        let first = Int(bitPattern: start) / pageSize * pageSize
        let end = (Int(bitPattern: start) + byteCount + pageSize - 1) / pageSize * pageSize
        var resident = 0
        let complete = forEachPagemapEntry(from: first, to: end) { entry in
            if entry & (1 << 63) != 0 { resident += 1 }
            return true
        }
        return complete ? resident : -1
    }

    /// Calls `body` with the `/proc/self/pagemap` entry of every page in `[first, end)` (page-aligned),
    /// read 4,096 at a time, until it returns false; false when the file could not be read.
    private static func forEachPagemapEntry(from first: Int, to end: Int, _ body: (UInt64) -> Bool) -> Bool {
        let descriptor = open("/proc/self/pagemap", O_RDONLY)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        let pages = (end - first) / pageSize
        var entries = [UInt64](repeating: 0, count: Swift.min(4096, pages))
        var page = 0
        while page < pages {
            let count = Swift.min(entries.count, pages - page)
            let offset = off_t((first / pageSize + page) * 8)
            let read = entries.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, count * 8, offset) }
            guard read == count * 8 else { return false }
            for entry in entries[0..<count] where !body(entry) { return true }
            page += count
        }
        return true
    }
}
