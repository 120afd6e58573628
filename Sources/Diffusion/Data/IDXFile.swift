import CZlib
import Foundation
import Tensors

/// An IDX file (the MNIST format): unsigned-byte data with its dimensions.
/// Reads plain files and gzip-compressed `.gz` files.
public struct IDXFile: Sendable {
    /// Sizes of each dimension, outermost first.
    public let dimensions: [Int]
    /// The values, row-major.
    public let bytes: [UInt8]

    /// Reads and validates an IDX file of unsigned bytes (type code 0x08).
    public init(path: String) throws {
        let data = try IDXFile.readAll(path: path)
        guard data.count >= 4 else { throw DatasetError.malformed(path: path, reason: "IDX file shorter than its 4-byte magic number") }
        guard data[0] == 0, data[1] == 0 else { throw DatasetError.malformed(path: path, reason: "IDX magic number does not start with two zero bytes") }
        guard data[2] == 0x08 else { throw DatasetError.malformed(path: path, reason: "IDX element type 0x\(String(data[2], radix: 16)) is not unsigned byte (0x08)") }
        let rank = Int(data[3])
        guard rank >= 1, data.count >= 4 + 4 * rank else { throw DatasetError.malformed(path: path, reason: "IDX header too short for \(rank) dimensions") }
        var dimensions: [Int] = []
        for axis in 0..<rank {
            let start = 4 + 4 * axis
            dimensions.append(Int(data[start]) << 24 | Int(data[start + 1]) << 16 | Int(data[start + 2]) << 8 | Int(data[start + 3]))
        }
        let expected = dimensions.reduce(1, *)
        let available = data.count - 4 - 4 * rank
        guard available == expected else {
            throw DatasetError.malformed(path: path, reason: "IDX dimensions \(dimensions) need \(expected) bytes of data, the file has \(available)")
        }
        self.dimensions = dimensions
        self.bytes = Array(data[(4 + 4 * rank)...])
    }

    /// The whole file, decompressed when it is gzip (by magic bytes, not by name).
    static func readAll(path: String) throws -> [UInt8] {
        guard let file = gzopen(path, "rb") else {
            throw DatasetError.unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        defer { gzclose(file) }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let read = chunk.withUnsafeMutableBytes { gzread(file, $0.baseAddress, UInt32($0.count)) }
            if read < 0 {
                var code: Int32 = 0
                let message = gzerror(file, &code).map { String(cString: $0) } ?? "read error"
                throw DatasetError.unreadable(path: path, reason: message)
            }
            if read == 0 { break }
            result.append(contentsOf: chunk[0..<Int(read)])
        }
        return result
    }
}
