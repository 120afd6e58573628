import Foundation
import NN
import Tensors
import XCTest

/// Feeds seeded mutations of valid safetensors files to the parser: each one
/// must either load (and then every tensor must materialise with the declared
/// shape) or throw a `SafetensorsError`; nothing may crash or read out of bounds.
final class SafetensorsFuzzTests: XCTestCase {
    static let caseCount = 12_000

    /// SplitMix64, so every run sees the same inputs.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var value = state
            value = (value ^ (value >> 30)) &* 0xBF58_476D_1CE4_E5B9
            value = (value ^ (value >> 27)) &* 0x94D0_49BB_1331_11EB
            return value ^ (value >> 31)
        }
    }

    static let dataTypeNames = ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "I8", "I16", "U16", "U32", "U64", "F8_E4M3", "F8_E5M2"]
    static let bogusValues = ["\"F4\"", "\"f32\"", "\"\"", "null", "17", "-1", "1.5", "1e3", "[]", "{}", "true", "\"F32\\u0000\"",
                              "18446744073709551616", "9223372036854775807", "4294967296", "0", "1", "2", "7", "\"x\""]

    /// Valid files to start from: written by this package and by Python.
    static func seeds() throws -> [[UInt8]] {
        var generator = RandomGenerator(seed: 3)
        let mixed: [String: Tensor] = [
            "f32": Tensor.randn([3, 4], generator: &generator),
            "f16": Tensor.randn([5], generator: &generator).converted(to: .float16),
            "bf16": Tensor.randn([2, 1, 3], generator: &generator).converted(to: .bfloat16),
            "scalar": Tensor(scalar: 1),
            "empty": Tensor.zeros([2, 0]),
        ]
        let fixtures = SafetensorsTests.fixtures
        return [
            try Safetensors.serialize(mixed, metadata: ["format": "pt", "k": "v"]),
            try Safetensors.serialize(["only": Tensor([1, 2, 3])]),
            try [UInt8](Data(contentsOf: fixtures.appendingPathComponent("dtypes.safetensors"))),
            try [UInt8](Data(contentsOf: fixtures.appendingPathComponent("sharded/model-00001-of-00002.safetensors"))),
        ]
    }

    /// The header-length field, clamped to `Int`.
    static func headerLength(_ bytes: [UInt8]) -> Int {
        Int(clamping: bytes.prefix(8).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
    }

    static func withLength(_ header: [UInt8], _ data: [UInt8]) -> [UInt8] {
        var bytes: [UInt8] = []
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { bytes.append(contentsOf: $0) }
        return bytes + header + data
    }

    /// A header built from random entries, then bent in one or two places.
    static func structuredHeader(_ random: inout SeededGenerator) -> [UInt8] {
        var entries: [(name: String, fields: [(String, String)])] = []
        var offset = 0
        for index in 0..<Int.random(in: 0...5, using: &random) {
            let dtype = dataTypeNames.randomElement(using: &random) ?? "F32"
            let size = ["BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
                        "F32": 4, "I32": 4, "U32": 4, "F64": 8, "I64": 8, "U64": 8][dtype] ?? 4
            let shape = (0..<Int.random(in: 0...3, using: &random)).map { _ in Int.random(in: 0...4, using: &random) }
            let bytes = shape.reduce(1, *) * size
            entries.append(("t\(index)", [("dtype", "\"\(dtype)\""), ("shape", "[" + shape.map(String.init).joined(separator: ",") + "]"),
                                          ("data_offsets", "[\(offset),\(offset + bytes)]")]))
            offset += bytes
        }
        var metadata: [(String, String)]? = Bool.random(using: &random) ? [("format", "\"pt\"")] : nil
        for _ in 0..<Int.random(in: 0...2, using: &random) {
            let bogus = bogusValues.randomElement(using: &random) ?? "0"
            switch Int.random(in: 0..<8, using: &random) {
            case 0 where !entries.isEmpty: // replace a field value
                let entry = Int.random(in: 0..<entries.count, using: &random)
                guard !entries[entry].fields.isEmpty else { continue }
                let field = Int.random(in: 0..<entries[entry].fields.count, using: &random)
                entries[entry].fields[field].1 = bogus
            case 1 where !entries.isEmpty: // nudge an offset or a dimension
                let entry = Int.random(in: 0..<entries.count, using: &random)
                let field = Int.random(in: 1...2, using: &random)
                guard field < entries[entry].fields.count else { continue }
                let numbers = entries[entry].fields[field].1.dropFirst().dropLast().split(separator: ",").compactMap { Int($0) }
                guard !numbers.isEmpty else { continue }
                var changed = numbers
                let position = Int.random(in: 0..<changed.count, using: &random)
                changed[position] = Swift.max(-2, changed[position] + Int.random(in: -9...9, using: &random))
                entries[entry].fields[field].1 = "[" + changed.map(String.init).joined(separator: ",") + "]"
            case 2 where !entries.isEmpty: // duplicate or rename an entry
                if Bool.random(using: &random), let first = entries.first { entries.append(first) } else { entries[0].name = "__metadata__" }
            case 3 where !entries.isEmpty: // drop or add a field
                let entry = Int.random(in: 0..<entries.count, using: &random)
                if Bool.random(using: &random), !entries[entry].fields.isEmpty { entries[entry].fields.removeLast() } else { entries[entry].fields.append(("extra", bogus)) }
            case 4: metadata = [("format", bogus)]
            case 5: metadata = (metadata ?? []) + [("format", "\"pt\"")]
            case 6 where entries.count > 1: entries.swapAt(0, entries.count - 1) // order must not matter
            case 7 where !entries.isEmpty: // move a whole tensor: overlaps and gaps
                let entry = Int.random(in: 0..<entries.count, using: &random)
                let shift = Int.random(in: -6...6, using: &random)
                guard let field = entries[entry].fields.firstIndex(where: { $0.0 == "data_offsets" }) else { continue }
                let numbers = entries[entry].fields[field].1.dropFirst().dropLast().split(separator: ",").compactMap { Int($0) }
                entries[entry].fields[field].1 = "[" + numbers.map { String(Swift.max(0, $0 + shift)) }.joined(separator: ",") + "]"
            default: break
            }
        }
        var members: [String] = []
        if let metadata { members.append("\"__metadata__\":{" + metadata.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}") }
        for entry in entries {
            members.append("\"\(entry.name)\":{" + entry.fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}")
        }
        let data = (0..<Swift.max(0, offset + (Int.random(in: 0..<4, using: &random) == 0 ? Int.random(in: -3...3, using: &random) : 0)))
            .map { _ in UInt8.random(in: 0...255, using: &random) }
        return withLength(Array(("{" + members.joined(separator: ",") + "}").utf8), data)
    }

    /// One mutation of `bytes`; `kind` says which (for the tally).
    static func mutate(_ bytes: [UInt8], seeds: [[UInt8]], random: inout SeededGenerator) -> (kind: String, bytes: [UInt8]) {
        var result = bytes
        let headerEnd = Swift.min(result.count, 8 + Swift.max(0, Swift.min(headerLength(result), result.count)))
        switch Int.random(in: 0..<9, using: &random) {
        case 0:
            for _ in 0..<Int.random(in: 1...4, using: &random) where headerEnd > 0 {
                let position = Int.random(in: 0..<headerEnd, using: &random)
                result[position] = Bool.random(using: &random) ? UInt8.random(in: 0...255, using: &random) : result[position] ^ (1 << UInt8.random(in: 0...7, using: &random))
            }
            return ("header bytes", result)
        case 1:
            let original = UInt64(headerLength(result))
            let length: UInt64 = [original &+ UInt64(Int.random(in: 1...9, using: &random)), original &- UInt64(Int.random(in: 1...9, using: &random)),
                                  UInt64.random(in: 0...UInt64.max, using: &random), UInt64.random(in: 0...200, using: &random), 0, 100_000_001][Int.random(in: 0..<6, using: &random)]
            withUnsafeBytes(of: length.littleEndian) { for index in 0..<Swift.min(8, result.count) { result[index] = $0[index] } }
            return ("length field", result)
        case 2:
            return ("structured JSON", structuredHeader(&random))
        case 3:
            // Replace a run of digits in the header (an offset, a dimension) with an interesting number.
            guard headerEnd > 8 else { return ("numbers", result) }
            let digits = (8..<headerEnd).filter { result[$0] >= 48 && result[$0] <= 57 }
            guard let start = digits.randomElement(using: &random) else { return ("numbers", result) }
            var end = start
            while end < headerEnd && result[end] >= 48 && result[end] <= 57 { end += 1 }
            let replacement = ["0", "1", "3", "7", "8", "16", "4294967296", "9223372036854775807", "18446744073709551615",
                               "99999999999999999999999999", "-1", "1.5", "1e2", String(Int.random(in: 0...300, using: &random))].randomElement(using: &random) ?? "0"
            result.replaceSubrange(start..<end, with: Array(replacement.utf8))
            let header = Array(result[8..<(headerEnd + replacement.utf8.count - (end - start))])
            return ("numbers", Bool.random(using: &random) ? withLength(header, Array(result[(8 + header.count)...])) : result)
        case 4:
            return ("truncate", Array(result.prefix(Int.random(in: 0..<Swift.max(1, result.count), using: &random))))
        case 5:
            let other = seeds.randomElement(using: &random) ?? bytes
            let cut = Int.random(in: 0...result.count, using: &random)
            let otherCut = Int.random(in: 0...other.count, using: &random)
            return ("splice", Array(result.prefix(cut)) + Array(other.suffix(from: otherCut)))
        case 6:
            let position = Int.random(in: 0...result.count, using: &random)
            if Bool.random(using: &random) || position == result.count {
                result.insert(contentsOf: (0..<Int.random(in: 1...8, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }, at: position)
            } else {
                result.removeSubrange(position..<Swift.min(result.count, position + Int.random(in: 1...8, using: &random)))
            }
            return ("insert/delete", result)
        case 7:
            // Data bytes only: the file stays valid, the values become anything (NaN, subnormal…).
            for _ in 0..<8 where result.count > headerEnd { result[Int.random(in: headerEnd..<result.count, using: &random)] = UInt8.random(in: 0...255, using: &random) }
            return ("data bytes", result)
        default:
            // A dtype swapped for another (valid or not).
            guard headerEnd >= 8, var header = String(validating: result[8..<headerEnd], as: UTF8.self) else { return ("dtype swap", result) }
            let replacement = (dataTypeNames + ["F4", "C64", "f16"]).randomElement(using: &random) ?? "F32"
            if let range = dataTypeNames.compactMap({ header.range(of: "\"\($0)\"") }).randomElement(using: &random) {
                header.replaceSubrange(range, with: "\"\(replacement)\"")
            }
            return ("dtype swap", withLength(Array(header.utf8), Array(result[headerEnd...])))
        }
    }

    func testMutatedFilesLoadOrThrowButNeverCrash() throws {
        let seeds = try Self.seeds()
        for seed in seeds { XCTAssertNoThrow(try SafetensorsFile(bytes: seed)) }
        var random = SeededGenerator(state: 20_240_601)
        var loaded = 0, threw = 0, materialised = 0
        var tally: [String: (loaded: Int, threw: Int)] = [:]
        var errorKinds: [String: Int] = [:]
        let start = Date()
        for index in 0..<Self.caseCount {
            var (kind, bytes) = Self.mutate(seeds[index % seeds.count], seeds: seeds, random: &random)
            if Int.random(in: 0..<4, using: &random) == 0 { // stack a second mutation
                let second = Self.mutate(bytes, seeds: seeds, random: &random)
                kind += " + " + second.kind
                bytes = second.bytes
            }
            let label = String(kind.split(separator: "+").first ?? "").trimmingCharacters(in: .whitespaces)
            do {
                let file = try SafetensorsFile(bytes: bytes, path: "fuzz case \(index)")
                loaded += 1
                tally[label, default: (0, 0)].loaded += 1
                XCTAssertEqual(file.tensorInfos.reduce(0) { $0 + $1.byteCount }, file.fileSize - file.dataStart, "case \(index)")
                for info in file.tensorInfos {
                    let native = try file.tensor(info.name)
                    let floats = try file.tensor(info.name, as: .float32)
                    let rounded = try file.tensor(info.name, as: .bfloat16)
                    XCTAssertEqual(native.shape, info.shape, "case \(index) \(info.name)")
                    XCTAssertEqual(native.dataType, info.dataType.engineDataType ?? .float32)
                    XCTAssertEqual(floats.count, info.elementCount)
                    // (toArray on an empty tensor such as [2, 0] trips an engine bug, so only read non-empty ones.)
                    if info.elementCount > 0 { XCTAssertEqual(floats.toArray().count, info.elementCount) }
                    XCTAssertEqual(rounded.count, info.elementCount)
                    materialised += 1
                }
            } catch let error as SafetensorsError {
                threw += 1
                tally[label, default: (0, 0)].threw += 1
                errorKinds[Mirror(reflecting: error).children.first?.label ?? "\(error)", default: 0] += 1
                XCTAssertTrue(error.description.contains("fuzz case \(index)"), "error does not name the file: \(error)")
            } catch {
                XCTFail("case \(index) (\(kind)) threw a non-SafetensorsError: \(error)")
            }
        }
        let seconds = Date().timeIntervalSince(start)
        print("safetensors fuzz: \(Self.caseCount) cases in \(String(format: "%.2f", seconds)) s: \(loaded) loaded (\(materialised) tensors materialised), \(threw) threw")
        for (kind, counts) in tally.sorted(by: { $0.key < $1.key }) {
            print("  \(kind.padding(toLength: 16, withPad: " ", startingAt: 0)) loaded \(counts.loaded), threw \(counts.threw)")
        }
        print("  errors: " + errorKinds.sorted { $0.value > $1.value }.map { "\($0.key) ×\($0.value)" }.joined(separator: "; "))
        XCTAssertEqual(loaded + threw, Self.caseCount)
        XCTAssertGreaterThan(loaded, Self.caseCount / 20, "too few mutations stay valid to exercise materialisation")
        XCTAssertGreaterThan(threw, Self.caseCount / 2)
    }
}
