import Diffusion
import Foundation
import NN
import Tensors
import XCTest

/// Helpers for the single-file tests: the fixtures of Scripts/make-single-file-goldens and a hash of
/// every parameter as the script computes it.
enum SingleFileFixtures {
    static let directory = UNetParityTests.fixtures.deletingLastPathComponent().appendingPathComponent("single-file")

    /// `<name>.safetensors`, written by diffusers' convert_diffusers_to_original_stable_diffusion.py.
    static func file(_ name: String) -> URL { directory.appendingPathComponent("\(name).safetensors") }

    /// The diffusers folder the file was converted from, without its weights (configurations and tokenizer).
    static func folder(_ name: String) -> URL { directory.appendingPathComponent("\(name)-folder") }

    /// FNV-1a (64 bits) of the values as little-endian float32 bytes, as the script's `fnv1a64`.
    static func hash(_ tensor: Tensor) -> String {
        let values = tensor.converted(to: .float32).contiguous().toArray()
        var value: UInt64 = 0xCBF2_9CE4_8422_2325
        for number in values {
            var bits = number.bitPattern.littleEndian
            withUnsafeBytes(of: &bits) { bytes in
                for byte in bytes { value = (value ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
            }
        }
        return String(format: "%016llx", value)
    }

    /// `{component: {name: [shape, hash]}}` of the diffusers folder.
    static func manifest(_ name: String) throws -> [String: [String: (shape: [Int], hash: String)]] {
        let data = try Data(contentsOf: directory.appendingPathComponent("\(name)-manifest.json"))
        let root = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: [String: [Any]]])
        var result: [String: [String: (shape: [Int], hash: String)]] = [:]
        for (component, entries) in root {
            var parsed: [String: (shape: [Int], hash: String)] = [:]
            for (key, entry) in entries {
                parsed[key] = (try XCTUnwrap(entry[0] as? [Int]), try XCTUnwrap(entry[1] as? String))
            }
            result[component] = parsed
        }
        return result
    }

    /// Compares every parameter of `module` with the folder's manifest entry of the same name.
    static func compare(_ module: Module, with entries: [String: (shape: [Int], hash: String)], label: String,
                        file: StaticString = #filePath, line: UInt = #line) -> Int {
        let parameters = module.namedParameters()
        XCTAssertEqual(Set(parameters.map(\.name)), Set(entries.keys), "\(label): parameter names", file: file, line: line)
        var matched = 0
        for (name, tensor) in parameters {
            guard let entry = entries[name] else { continue }
            XCTAssertEqual(tensor.shape, entry.shape, "\(label): \(name) shape", file: file, line: line)
            XCTAssertEqual(hash(tensor), entry.hash, "\(label): \(name) values", file: file, line: line)
            if tensor.shape == entry.shape && hash(tensor) == entry.hash { matched += 1 }
        }
        return matched
    }
}
