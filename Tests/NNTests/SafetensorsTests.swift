import Foundation
import NN
import Tensors
import XCTest

/// Interop with the Python `safetensors` package (fixtures written by
/// `Scripts/make-safetensors-fixtures`), round trips, sharding, atomic writes,
/// and one crafted file per strictness rule.
final class SafetensorsTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").appendingPathComponent("safetensors")

    var temporaryDirectory: URL!

    override func setUpWithError() throws {
        temporaryDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("safetensors-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: temporaryDirectory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: temporaryDirectory)
        temporaryDirectory = nil // XCTest keeps test-case instances alive
    }

    func fixture(_ name: String) -> String { Self.fixtures.appendingPathComponent(name).path }
    func temporary(_ name: String) -> String { temporaryDirectory.appendingPathComponent(name).path }

    /// `expected.json[group]`: metadata and, per tensor, dtype, shape, float32 bits, raw 16-bit words.
    func expected(_ group: String) throws -> (metadata: [String: String], tensors: [String: [String: Any]]) {
        let data = try Data(contentsOf: Self.fixtures.appendingPathComponent("expected.json"))
        let root = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        let entry = try XCTUnwrap(root[group] as? [String: Any])
        return ((entry["metadata"] as? [String: String]) ?? [:], try XCTUnwrap(entry["tensors"] as? [String: [String: Any]]))
    }

    /// Checks every tensor of `source` against the expected values, bit for bit.
    func assertMatchesExpected(_ names: [String], info: (String) throws -> SafetensorsTensorInfo,
                               tensor: (String, DataType?) throws -> Tensor, expected: [String: [String: Any]]) throws {
        XCTAssertEqual(names, expected.keys.sorted())
        for name in names {
            let want = try XCTUnwrap(expected[name])
            let header = try info(name)
            XCTAssertEqual(header.dataType.rawValue, want["dtype"] as? String, name)
            XCTAssertEqual(header.shape, want["shape"] as? [Int], name)
            let floats = try tensor(name, .float32)
            XCTAssertEqual(floats.dataType, .float32)
            XCTAssertEqual(floats.shape, header.shape)
            let bits = try XCTUnwrap(want["float32_bits"] as? [NSNumber]).map { UInt32(truncating: $0) }
            let got = floats.toArray()
            XCTAssertEqual(got.count, bits.count, name)
            for (index, (value, expectedBits)) in zip(got, bits).enumerated() {
                let expectedValue = Float(bitPattern: expectedBits)
                if expectedValue.isNaN {
                    XCTAssertTrue(value.isNaN, "\(name)[\(index)]")
                } else {
                    XCTAssertEqual(value.bitPattern, expectedBits, "\(name)[\(index)]: \(value) vs \(expectedValue)")
                }
            }
            // Half precision is kept as stored by default: the words themselves must match.
            if let raw = want["raw_bits"] as? [NSNumber] {
                let kept = try tensor(name, nil)
                XCTAssertEqual(kept.dataType, header.dataType == .float16 ? .float16 : .bfloat16, name)
                XCTAssertEqual(Array(UnsafeBufferPointer(start: kept.storage.halfWords + kept.offset, count: kept.count)),
                               raw.map { UInt16(truncating: $0) }, name)
            } else if header.dataType != .float32 {
                XCTAssertEqual(try tensor(name, nil).dataType, .float32, "\(name): other types load as float32")
            }
        }
    }

    // MARK: - Python interop

    func testReadsEveryDataTypeWrittenByPython() throws {
        let file = try SafetensorsFile(path: fixture("dtypes.safetensors"))
        let want = try expected("dtypes.safetensors")
        XCTAssertEqual(file.metadata, want.metadata)
        XCTAssertEqual(Set(file.tensorInfos.map(\.dataType.rawValue)), ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL"])
        try assertMatchesExpected(file.names, info: file.info, tensor: { try file.tensor($0, as: $1) }, expected: want.tensors)
        // The one-call loader agrees.
        let all = try Safetensors.load(path: fixture("dtypes.safetensors"), as: .float32)
        XCTAssertEqual(all["int32.count"]?.toArray(), [7, -8, 2_147_483_648, -2_147_483_648])
        XCTAssertEqual(all["bool.mask"]?.toArray(), [1, 0, 1, 0, 0, 1])
        XCTAssertEqual(all["scalar"]?.shape, [])
        XCTAssertEqual(all["empty"]?.shape, [0, 3])
    }

    func testReadsShardedCheckpointWrittenByPython() throws {
        let want = try expected("sharded")
        for path in [fixture("sharded/model.safetensors.index.json"), fixture("sharded")] {
            let checkpoint = try SafetensorsCheckpoint(path: path)
            XCTAssertTrue(checkpoint.isSharded)
            XCTAssertEqual(checkpoint.files.count, 2)
            XCTAssertEqual(checkpoint.metadata, want.metadata)
            XCTAssertEqual(checkpoint.files.map(\.metadata), [["format": "pt"], ["format": "pt"]])
            try assertMatchesExpected(checkpoint.names, info: checkpoint.info, tensor: { try checkpoint.tensor($0, as: $1) }, expected: want.tensors)
        }
        XCTAssertEqual(try Safetensors.load(path: fixture("sharded")).count, 4)
    }

    /// The values `Scripts/make-safetensors-fixtures --verify` expects (keep the two in step).
    static func diffuseWrittenTensors() -> (tensors: [String: Tensor], metadata: [String: String]) {
        let tensors: [String: Tensor] = [
            "weights.f32": Tensor((0..<24).map { (Float($0) - 12) * 0.125 }, shape: [2, 3, 4]),
            "weights.f16": Tensor([1, -2, 0.5, 65504, Float(sign: .plus, exponent: -24, significand: 1), -0.0]).converted(to: .float16),
            "weights.bf16": Tensor([1, -3.140625, Float(sign: .plus, exponent: 100, significand: 1), 0], shape: [2, 2]).converted(to: .bfloat16),
            "a.scalar": Tensor(scalar: 42),
            "empty": Tensor.zeros([0, 4]),
            "z.transposed": Tensor([1, 2, 3, 4, 5, 6], shape: [2, 3]).transposed(0, 1),
        ]
        return (tensors, ["format": "pt", "writer": "diffuse", "note": "quotes \" and \\ and ünïcode"])
    }

    /// Writes (with `DIFFUSE_WRITE_FIXTURES=1`) or checks `written-by-diffuse.safetensors`,
    /// which `Scripts/make-safetensors-fixtures --verify` loads with the Python package.
    func testWrittenByDiffuseFixture() throws {
        let (tensors, metadata) = Self.diffuseWrittenTensors()
        let path = fixture("written-by-diffuse.safetensors")
        let bytes = try Safetensors.serialize(tensors, metadata: metadata)
        if ProcessInfo.processInfo.environment["DIFFUSE_WRITE_FIXTURES"] == "1" {
            try Safetensors.save(tensors, to: path, metadata: metadata)
        }
        let committed = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        XCTAssertEqual(committed, bytes, "written-by-diffuse.safetensors is stale: rerun with DIFFUSE_WRITE_FIXTURES=1, then Scripts/make-safetensors-fixtures --verify")
        // Names in the Python package's order: descending dtype alignment (F32 before BF16 before F16), then name.
        XCTAssertEqual(try SafetensorsFile(path: path).tensorInfos.map(\.name), ["a.scalar", "empty", "weights.f32", "z.transposed", "weights.bf16", "weights.f16"])
        let verification = try String(contentsOfFile: fixture("python-verification.txt"), encoding: .utf8)
        XCTAssertTrue(verification.contains("RESULT: PASS"), verification)
    }

    // MARK: - Round trips

    func testRoundTripsFloat32Float16BFloat16() throws {
        var generator = RandomGenerator(seed: 11)
        let original: [String: Tensor] = [
            "f32": Tensor.randn([3, 5, 2], generator: &generator) * 100,
            "f16": Tensor.randn([7], generator: &generator).converted(to: .float16),
            "bf16": Tensor.randn([4, 4], generator: &generator).converted(to: .bfloat16),
            "strided": Tensor.randn([4, 6], generator: &generator).sliced(axis: 1, start: 1, end: 6, step: 2),
            "special": Tensor([.infinity, -.infinity, .nan, -0.0, .leastNonzeroMagnitude, .greatestFiniteMagnitude]),
        ]
        let path = temporary("round.safetensors")
        try Safetensors.save(original, to: path, metadata: ["epoch": "3", "empty value": ""])
        XCTAssertEqual(try Safetensors.metadata(path: path), ["epoch": "3", "empty value": ""])
        let loaded = try Safetensors.load(path: path)
        XCTAssertEqual(Set(loaded.keys), Set(original.keys))
        for (name, tensor) in original {
            let copy = try XCTUnwrap(loaded[name])
            XCTAssertEqual(copy.dataType, tensor.dataType, name)
            XCTAssertEqual(copy.shape, tensor.shape, name)
            XCTAssertEqual(copy.toArray().map(\.bitPattern), tensor.toArray().map(\.bitPattern), name)
        }
        // Storing float32 as half precision rounds exactly like `converted(to:)`.
        for target in [DataType.float16, .bfloat16] {
            let halfPath = temporary("as-\(target).safetensors")
            try Safetensors.save(["w": original["f32"]!], to: halfPath, dataType: target)
            let file = try SafetensorsFile(path: halfPath)
            XCTAssertEqual(try file.info("w").dataType, SafetensorsDataType(target))
            XCTAssertEqual(try file.tensor("w").toArray(), original["f32"]!.converted(to: target).toArray())
            XCTAssertEqual(file.fileSize, file.dataStart + 30 * 2)
        }
    }

    func testHeaderLayoutFollowsThePythonPackage() throws {
        let bytes = try Safetensors.serialize(["b": Tensor([1]).converted(to: .float16), "a": Tensor([1]).converted(to: .float16), "c": Tensor([2])])
        let length = bytes[0..<8].reversed().reduce(0) { $0 << 8 | Int($1) }
        XCTAssertEqual(length % 8, 0)
        let header = String(decoding: bytes[8..<(8 + length)], as: UTF8.self)
        let json = #"{"c":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F16","shape":[1],"data_offsets":[4,6]},"b":{"dtype":"F16","shape":[1],"data_offsets":[6,8]}}"#
        XCTAssertEqual(length, (json.utf8.count + 7) / 8 * 8)
        XCTAssertEqual(header, json + String(repeating: " ", count: length - json.utf8.count))
        XCTAssertEqual(bytes.count, 8 + length + 8)
    }

    func testZeroElementTensors() throws {
        let bytes = try Safetensors.serialize(["e": Tensor.zeros([2, 0]), "f": Tensor.zeros([0, 3]), "g": Tensor([1])])
        let file = try SafetensorsFile(bytes: bytes)
        XCTAssertEqual(try file.info("e").dataOffsets, 0..<0)
        XCTAssertEqual(try file.info("g").dataOffsets, 0..<4)
        for target in [DataType.float32, .float16, .bfloat16] {
            let empty = try file.tensor("e", as: target)
            XCTAssertEqual(empty.shape, [2, 0])
            XCTAssertEqual(empty.dataType, target)
            XCTAssertEqual(empty.count, 0)
            XCTAssertEqual(try file.tensor("f", as: target).shape, [0, 3])
        }
    }

    func testModuleSaveAndLoadSafetensors() throws {
        let source = Sequential([Linear(3, 4), Activation(.silu), Linear(4, 2)])
        let path = temporary("module.safetensors")
        try source.saveSafetensors(path: path)
        XCTAssertEqual(try Safetensors.metadata(path: path), ["format": "pt"])
        let target = Sequential([Linear(3, 4), Activation(.silu), Linear(4, 2)])
        XCTAssertTrue(try target.loadSafetensors(path: path).isClean)
        for ((name, left), (_, right)) in zip(source.namedParameters(), target.namedParameters()) {
            XCTAssertEqual(left.toArray(), right.toArray(), name)
        }
        // Half-precision checkpoints load into float32 parameters.
        try source.saveSafetensors(path: path, dataType: .bfloat16)
        try target.loadSafetensors(path: path)
        XCTAssertEqual(target.namedParameters()[0].tensor.toArray(), source.namedParameters()[0].tensor.converted(to: .bfloat16).toArray())
        // Strict loading reports mismatches and changes nothing.
        let wrong = Sequential([Linear(3, 5), Activation(.silu), Linear(5, 2)])
        let before = wrong.parameters().map { $0.toArray() }
        XCTAssertThrowsError(try wrong.loadSafetensors(path: path)) { error in
            XCTAssertEqual((error as? StateDictReport)?.mismatched.count, 3)
        }
        XCTAssertEqual(wrong.parameters().map { $0.toArray() }, before)
    }

    // MARK: - Sharding

    func testShardedWriteAndRead() throws {
        var generator = RandomGenerator(seed: 5)
        var tensors: [String: Tensor] = [:]
        for index in 0..<7 { tensors["layer.\(index).weight"] = Tensor.randn([index + 1, 10], generator: &generator) }
        tensors["big"] = Tensor.randn([100], generator: &generator).converted(to: .bfloat16) // 200 bytes, over the limit alone
        let indexPath = try Safetensors.saveSharded(tensors, to: temporaryDirectory.path, baseName: "diffusion_pytorch_model",
                                                    maximumShardBytes: 160, metadata: ["format": "pt"])
        XCTAssertTrue(indexPath.hasSuffix("diffusion_pytorch_model.safetensors.index.json"))
        let checkpoint = try SafetensorsCheckpoint(path: indexPath)
        XCTAssertEqual(checkpoint.metadata["total_size"], String(28 * 40 + 200))
        XCTAssertEqual(checkpoint.metadata["format"], "pt")
        for file in checkpoint.files {
            XCTAssertTrue(file.tensorInfos.count == 1 || file.tensorInfos.reduce(0) { $0 + $1.byteCount } <= 160, file.path)
            XCTAssertEqual(file.metadata, ["format": "pt"])
        }
        XCTAssertEqual(checkpoint.files.count, 7)
        XCTAssertTrue(checkpoint.files[0].path.hasSuffix("diffusion_pytorch_model-00001-of-00007.safetensors"))
        let loaded = try Safetensors.load(path: temporaryDirectory.path)
        for (name, tensor) in tensors {
            XCTAssertEqual(loaded[name]?.dataType, tensor.dataType)
            XCTAssertEqual(loaded[name]?.toArray(), tensor.toArray(), name)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: temporaryDirectory.path).filter { $0.contains(".tmp-") }, [])
    }

    // MARK: - Atomic writing

    func testFailedWritesLeaveNoTornFile() throws {
        let path = temporary("model.safetensors")
        try Safetensors.save(["w": Tensor([1, 2])], to: path)
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try Safetensors.save(["__metadata__": Tensor([1])], to: path)) { error in
            guard case .invalidTensorForWriting(name: "__metadata__", _) = error as? SafetensorsError else { return XCTFail("\(error)") }
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), before)
        XCTAssertThrowsError(try Safetensors.save(["w": Tensor([1])], to: temporary("missing-directory/x.safetensors"))) { error in
            guard case .writeFailed = error as? SafetensorsError else { return XCTFail("\(error)") }
            XCTAssertTrue("\(error)".contains("missing-directory"), "\(error)")
        }
        try Safetensors.save(["w": Tensor([3, 4, 5])], to: path)
        XCTAssertEqual(try Safetensors.load(path: path)["w"]?.toArray(), [3, 4, 5])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: temporaryDirectory.path), ["model.safetensors"])
    }

    // MARK: - Pickle checkpoints

    func testPickleCheckpointsAreRefusedWithConversionAdvice() throws {
        for name in ["pytorch_model.bin", "model.pt", "v1-5.ckpt", "weights.pth"] {
            _ = FileManager.default.createFile(atPath: temporary(name), contents: Data([0x80, 0x02, 0x7D, 0x71]))
            XCTAssertThrowsError(try Safetensors.load(path: temporary(name))) { error in
                guard case .pickleCheckpoint = error as? SafetensorsError else { return XCTFail("\(error)") }
                XCTAssertTrue("\(error)".contains("save_file"), "\(error)")
                XCTAssertTrue("\(error)".contains("torch.load"), "\(error)")
            }
        }
        // A torch.save zip misnamed .safetensors is recognised by its content.
        _ = FileManager.default.createFile(atPath: temporary("renamed.safetensors"), contents: Data([0x50, 0x4B, 0x03, 0x04] + [UInt8](repeating: 0x41, count: 60)))
        XCTAssertThrowsError(try SafetensorsFile(path: temporary("renamed.safetensors"))) { error in
            guard case .pickleCheckpoint = error as? SafetensorsError else { return XCTFail("\(error)") }
        }
        // A folder holding only a pickle says so too.
        let folder = temporary("unet")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: folder + "/diffusion_pytorch_model.bin", contents: Data([0x80, 0x02]))
        XCTAssertThrowsError(try SafetensorsCheckpoint(path: folder)) { error in
            guard case .pickleCheckpoint = error as? SafetensorsError else { return XCTFail("\(error)") }
        }
    }

    // MARK: - Strictness: one crafted file per rule

    /// A file from header text and data bytes, with the header's true length unless `length` is given.
    static func crafted(_ header: String, data: [UInt8] = [], length: UInt64? = nil) -> [UInt8] {
        var bytes: [UInt8] = []
        withUnsafeBytes(of: (length ?? UInt64(header.utf8.count)).littleEndian) { bytes.append(contentsOf: $0) }
        return bytes + Array(header.utf8) + data
    }

    /// Writes `bytes` to a file, opens it, and checks the error's case and that its message names the file and `mentions`.
    func assertRejects(_ bytes: [UInt8], mentions: [String] = [], file: StaticString = #filePath, line: UInt = #line,
                       _ matches: (SafetensorsError) -> Bool) {
        let path = temporary("crafted.safetensors")
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        do {
            let opened = try SafetensorsFile(path: path)
            XCTFail("accepted a bad file with tensors \(opened.names)", file: file, line: line)
        } catch let error as SafetensorsError {
            XCTAssertTrue(matches(error), "wrong error: \(error)", file: file, line: line)
            for text in [path] + mentions {
                XCTAssertTrue(error.description.contains(text), "\"\(error)\" does not mention \(text)", file: file, line: line)
            }
        } catch {
            XCTFail("unexpected error type: \(error)", file: file, line: line)
        }
    }

    func testRejectsTruncatedFiles() throws {
        assertRejects([8, 0, 0, 0, 0], mentions: ["5 bytes"]) { if case .truncated = $0 { return true }; return false }
        // A valid file cut short: the last tensor's offsets now pass the end of the data.
        let whole = try Safetensors.serialize(["weight": Tensor([1, 2, 3, 4])])
        assertRejects(Array(whole.dropLast(3)), mentions: ["weight", "[0, 16]", "13-byte"]) {
            if case .offsetsOutOfBounds = $0 { return true }; return false
        }
        assertRejects(Array(whole.prefix(20)), mentions: ["header length"]) { if case .headerExceedsFile = $0 { return true }; return false }
    }

    func testRejectsHeaderLargerThanTheFileOrTheLimit() {
        assertRejects(Self.crafted("{}", length: 3), mentions: ["3 bytes", "2 bytes"]) { if case .headerExceedsFile = $0 { return true }; return false }
        assertRejects(Self.crafted("{}", length: 100_000_001), mentions: ["100000001", "100000000"]) {
            if case .headerTooLarge = $0 { return true }; return false
        }
        assertRejects(Self.crafted("{}", length: UInt64.max), mentions: ["\(UInt64.max)"]) { if case .headerTooLarge = $0 { return true }; return false }
    }

    func testRejectsBadJSON() {
        assertRejects(Self.crafted(#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#, data: [0, 0, 0, 0]), mentions: ["byte 61", "end of input"]) {
            if case .invalidHeader = $0 { return true }; return false
        }
        assertRejects(Self.crafted(#"{"w":{"dtype":"F32",,}}"#), mentions: ["byte 28"]) { if case .invalidHeader = $0 { return true }; return false }
        assertRejects(Self.crafted("[1, 2]"), mentions: ["not a JSON object"]) { if case .invalidHeader = $0 { return true }; return false }
        assertRejects(Self.crafted("{} {}"), mentions: ["after the JSON value"]) { if case .invalidHeader = $0 { return true }; return false }
        assertRejects(Self.crafted(#"{"x":1}"#), mentions: ["tensor \"x\""]) {
            if case .invalidTensorEntry = $0 { return true }; return false
        }
        var invalidUTF8 = Self.crafted(#"{"ab":{}}"#)
        invalidUTF8[11] = 0xFF
        assertRejects(invalidUTF8, mentions: ["UTF-8", "byte 10"]) { if case .invalidHeader = $0 { return true }; return false }
        assertRejects(Self.crafted(String(repeating: "[", count: 10_000)), mentions: ["nesting"]) { if case .invalidHeader = $0 { return true }; return false }
    }

    func testRejectsUnknownDataType() {
        assertRejects(Self.crafted(#"{"w":{"dtype":"Q8","shape":[2],"data_offsets":[0,2]}}"#, data: [1, 2]), mentions: ["\"w\"", "Q8", "BF16"]) {
            if case .unknownDataType(_, "w", "Q8") = $0 { return true }; return false
        }
        assertRejects(Self.crafted(#"{"w":{"dtype":32,"shape":[1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]), mentions: ["dtype"]) {
            if case .invalidTensorEntry = $0 { return true }; return false
        }
    }

    func testRejectsNonStringMetadata() {
        assertRejects(Self.crafted(#"{"__metadata__":{"format":"pt","epoch":3}}"#), mentions: ["epoch", "not a string"]) {
            if case .invalidMetadata(_, "epoch", _) = $0 { return true }; return false
        }
        assertRejects(Self.crafted(#"{"__metadata__":["pt"]}"#), mentions: ["__metadata__"]) { if case .invalidMetadata(_, nil, _) = $0 { return true }; return false }
    }

    func testRejectsDuplicateNames() {
        let entry = #"{"dtype":"U8","shape":[1],"data_offsets":[0,1]}"#
        assertRejects(Self.crafted(#"{"w":\#(entry),"w":\#(entry)}"#, data: [7]), mentions: ["\"w\"", "more than once"]) {
            if case .duplicateName(_, "w") = $0 { return true }; return false
        }
        assertRejects(Self.crafted(#"{"__metadata__":{},"__metadata__":{}}"#)) { if case .duplicateName(_, "__metadata__") = $0 { return true }; return false }
    }

    func testRejectsShapeThatDisagreesWithTheByteCount() {
        assertRejects(Self.crafted(#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: [UInt8](repeating: 0, count: 8)),
                      mentions: ["\"w\"", "[3]", "needs 12 bytes", "[0, 8]"]) {
            if case .shapeMismatch = $0 { return true }; return false
        }
        assertRejects(Self.crafted(#"{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#), mentions: ["overflows"]) {
            if case .shapeOverflow = $0 { return true }; return false
        }
        assertRejects(Self.crafted(#"{"w":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}}"#), mentions: ["overflows"]) {
            if case .shapeOverflow = $0 { return true }; return false
        }
    }

    func testRejectsOffsetsOutsideTheData() {
        assertRejects(Self.crafted(#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, data: [UInt8](repeating: 0, count: 8)),
                      mentions: ["\"w\"", "[0, 16]", "8-byte"]) {
            if case .offsetsOutOfBounds(_, "w", 0, 16, 8) = $0 { return true }; return false
        }
        assertRejects(Self.crafted(#"{"w":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}}"#, data: [UInt8](repeating: 0, count: 8)), mentions: ["[8, 4]"]) {
            if case .offsetsOutOfBounds = $0 { return true }; return false
        }
        assertRejects(Self.crafted(#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,0]}}"#, data: [1]), mentions: ["data_offsets"]) {
            if case .invalidTensorEntry = $0 { return true }; return false
        }
    }

    func testRejectsOverlappingTensors() {
        let header = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#
        assertRejects(Self.crafted(header, data: [UInt8](repeating: 0, count: 12)), mentions: ["\"b\"", "\"a\"", "[4, 12]", "[0, 8]", "overlaps"]) {
            if case .overlappingTensors(_, "b", _, "a", _) = $0 { return true }; return false
        }
        let same = #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
        assertRejects(Self.crafted(same, data: [UInt8](repeating: 0, count: 4))) { if case .overlappingTensors = $0 { return true }; return false }
    }

    func testRejectsGapsAndUncoveredBytes() {
        let gap = #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#
        assertRejects(Self.crafted(gap, data: [UInt8](repeating: 0, count: 12)), mentions: ["\"b\"", "byte 8", "[4, 8]", "gaps"]) {
            if case .gapInData(_, "b", 8, 4) = $0 { return true }; return false
        }
        let start = #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#
        assertRejects(Self.crafted(start, data: [UInt8](repeating: 0, count: 8))) { if case .gapInData(_, "a", 4, 0) = $0 { return true }; return false }
        let trailing = #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
        assertRejects(Self.crafted(trailing, data: [UInt8](repeating: 0, count: 9)), mentions: ["cover 4 bytes", "9", "[4, 9]"]) {
            if case .trailingData(_, 4, 9) = $0 { return true }; return false
        }
    }

    func testRejectsMalformedEntries() {
        let cases: [(String, String)] = [
            (#"{"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#, "-1"),
            (#"{"w":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}"#, "1.0"),
            (#"{"w":{"dtype":"U8","shape":[1e0],"data_offsets":[0,1]}}"#, "1e0"),
            (#"{"w":{"dtype":"U8","shape":"1","data_offsets":[0,1]}}"#, "not an array"),
            (#"{"w":{"dtype":"U8","shape":[1],"data_offsets":["0","1"]}}"#, "data_offsets"),
            (#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1,1]}}"#, "pair"),
            (#"{"w":{"shape":[1],"data_offsets":[0,1]}}"#, "missing \"dtype\""),
            (#"{"w":{"dtype":"U8","data_offsets":[0,1]}}"#, "missing \"shape\""),
            (#"{"w":{"dtype":"U8","shape":[1]}}"#, "missing \"data_offsets\""),
            (#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":true}}"#, "unknown field \"extra\""),
            (#"{"w":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, "twice"),
            (#"{"w":[1]}"#, "not an object"),
        ]
        for (header, mention) in cases {
            assertRejects(Self.crafted(header, data: [5]), mentions: ["\"w\"", mention]) { if case .invalidTensorEntry(_, "w", _) = $0 { return true }; return false }
        }
    }

    func testRejectsIndexesThatDisagreeWithTheirShards() throws {
        try Safetensors.save(["a": Tensor([1]), "b": Tensor([2])], to: temporary("shard-1.safetensors"))
        func index(_ body: String) throws -> String {
            let path = temporary("model.safetensors.index.json")
            try body.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let cases: [(String, String)] = [
            (#"{"weight_map":{"a":"shard-1.safetensors","b":"shard-1.safetensors","c":"shard-1.safetensors"}}"#, "\"c\" in shard-1.safetensors, which does not contain it"),
            (#"{"weight_map":{"a":"shard-1.safetensors"}}"#, "holds tensor \"b\", which weight_map does not list"),
            (#"{"weight_map":{"a":"../shard-1.safetensors"}}"#, "not a file name inside"),
            (#"{"weight_map":{"a":1}}"#, "not a file name"),
            (#"{"metadata":{}}"#, "no \"weight_map\""),
            (#"{"weight_map":{"a":"shard-1.safetensors"},"#, "bad JSON"),
        ]
        for (body, mention) in cases {
            XCTAssertThrowsError(try SafetensorsCheckpoint(path: try index(body))) { error in
                guard case .invalidIndex = error as? SafetensorsError else { return XCTFail("\(error)") }
                XCTAssertTrue("\(error)".contains(mention), "\"\(error)\" does not mention \(mention)")
            }
        }
        XCTAssertThrowsError(try SafetensorsCheckpoint(path: try index(#"{"weight_map":{"a":"shard-1.safetensors","a":"shard-1.safetensors"}}"#))) { error in
            guard case .duplicateName(_, "a") = error as? SafetensorsError else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try SafetensorsCheckpoint(path: try index(#"{"weight_map":{"a":"missing.safetensors"}}"#))) { error in
            guard case .cannotOpen(let path, _) = error as? SafetensorsError else { return XCTFail("\(error)") }
            XCTAssertTrue(path.hasSuffix("missing.safetensors"))
        }
        XCTAssertThrowsError(try SafetensorsFile(path: temporary("shard-1.safetensors")).tensor("zz")) { error in
            guard case .tensorNotFound(_, "zz") = error as? SafetensorsError else { return XCTFail("\(error)") }
        }
    }
}

