import NN
import Tensors
import TestSupport
import XCTest

final class ModuleTests: XCTestCase {
    final class Block: Module {
        let conv1: Conv2d
        let norm: GroupNorm
        let layers: [Module]
        let head: Sequential
        let attention: Attention

        override init() {
            conv1 = Conv2d(3, 8, kernelSize: 3, padding: 1)
            norm = GroupNorm(groupCount: 2, channels: 8)
            layers = [Linear(4, 4), Linear(4, 2, bias: false)]
            head = Sequential([Linear(2, 3), Activation(.silu), Linear(3, 1)])
            attention = Attention(queryDimension: 8, heads: 2, dimensionPerHead: 4, bias: true, normGroupCount: 2)
            super.init()
        }
    }

    func testNamesFollowPyTorchStateDicts() {
        let block = Block()
        XCTAssertEqual(block.namedParameters().map(\.name), [
            "conv1.weight", "conv1.bias", "norm.weight", "norm.bias",
            "layers.0.weight", "layers.0.bias", "layers.1.weight",
            "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias",
            "attention.group_norm.weight", "attention.group_norm.bias",
            "attention.to_q.weight", "attention.to_q.bias", "attention.to_k.weight", "attention.to_k.bias",
            "attention.to_v.weight", "attention.to_v.bias", "attention.to_out.0.weight", "attention.to_out.0.bias",
        ])
        // conv 3·8·9+8, norm 16, layers 20+8, head 9+4, attention norm 16 and four 8→8 linears with bias.
        XCTAssertEqual(block.parameterCount, (3 * 8 * 9 + 8) + 16 + (20 + 8) + (9 + 4) + 16 + 4 * (8 * 8 + 8))
    }

    func testFreezeByPattern() {
        let block = Block()
        XCTAssertEqual(block.freeze(matching: "attention.*"), 10)
        XCTAssertEqual(block.trainableParameters().count, 11)
        XCTAssertEqual(block.unfreeze(matching: "/attention\\.to_(q|k)\\..*/"), 4)
        XCTAssertEqual(block.freeze(), 21)
        XCTAssertTrue(block.trainableParameters().isEmpty)
    }

    func testStrictLoadReportsEverythingAtOnce() throws {
        let source = Block()
        let target = Block()
        var dictionary = source.stateDict()
        dictionary["conv1.weight"] = Tensor.zeros([8, 3, 5, 5])
        dictionary.removeValue(forKey: "norm.bias")
        dictionary["extra.weight"] = Tensor.zeros([1])
        let before = target.attention.toQuery.weight.toArray()
        XCTAssertThrowsError(try target.load(stateDict: dictionary)) { error in
            let report = error as! StateDictReport
            XCTAssertEqual(report.missing, ["norm.bias"])
            XCTAssertEqual(report.unexpected, ["extra.weight"])
            XCTAssertEqual(report.mismatched, [.init(name: "conv1.weight", expected: [8, 3, 3, 3], found: [8, 3, 5, 5])])
        }
        XCTAssertEqual(target.attention.toQuery.weight.toArray(), before, "a failed strict load must change nothing")
        let report = try target.load(stateDict: dictionary, strict: false)
        XCTAssertFalse(report.isClean)
        XCTAssertEqual(target.attention.toQuery.weight.toArray(), source.attention.toQuery.weight.toArray())
        let clean = try target.load(stateDict: source.stateDict().mapValues { $0.converted(to: .float16) })
        XCTAssertTrue(clean.isClean)
        XCTAssertEqual(target.conv1.weight.toArray(), source.conv1.weight.converted(to: .float16).converted(to: .float32).toArray())
    }

    func testTrainEvalSwitchesDropout() {
        let block = Block()
        block.eval()
        XCTAssertFalse(block.head.isTraining)
        XCTAssertFalse((block.attention.toOut[1] as! Dropout).isTraining)
        block.train()
        XCTAssertTrue(block.attention.isTraining)
    }
}
