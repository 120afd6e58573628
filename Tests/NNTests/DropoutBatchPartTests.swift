import NN
import Tensors
import XCTest

/// Dropout in data-parallel training: a layer whose input is rank r's rows of the global batch
/// (``Dropout/batchPart``) draws the whole global batch's mask and keeps its rows, so the ranks'
/// masks together are one process's and every rank's generator ends where one process's does.
final class DropoutBatchPartTests: XCTestCase {
    func testThePartsOfTheGlobalBatchDrawOneProcessMask() {
        let whole = Dropout(0.3, seed: 4)
        let single = whole(Tensor.ones([6, 2, 5])).toArray()
        var parts: [Float] = []
        var generators: [RandomGenerator] = []
        for rank in 0..<3 {
            let layer = Dropout(0.3, seed: 4)
            layer.batchPart = (rank, 3)
            parts += layer(Tensor.ones([2, 2, 5])).toArray()
            generators.append(layer.generator)
        }
        XCTAssertEqual(parts, single, "3 ranks × 2 rows against 1 process × 6 rows")
        for generator in generators { XCTAssertEqual(generator, whole.generator, "every rank's generator ends in one process's state") }
        // Without the part every rank would draw the first rows' mask.
        XCTAssertNotEqual(Dropout(0.3, seed: 4)(Tensor.ones([2, 2, 5])).toArray(), Array(single[20..<40]))
    }

    func testOnePartIsThePlainDraw() {
        let plain = Dropout(0.5, seed: 9)
        let tree = Dropout(0.5, seed: 9)
        tree.setDropoutBatchPart(0, of: 1)
        let input = Tensor.ones([4, 8])
        XCTAssertEqual(tree(input).toArray(), plain(input).toArray())
        XCTAssertEqual(tree.generator, plain.generator)
    }

    func testSetDropoutBatchPartReachesEveryLayerOfATree() {
        let block = Sequential([Linear(4, 4), Dropout(0.1), Linear(4, 4), Dropout(0.2)])
        block.setDropoutBatchPart(1, of: 2)
        let dropouts = block.namedModules().compactMap { $0.module as? Dropout }
        XCTAssertEqual(dropouts.count, 2)
        XCTAssertTrue(dropouts.allSatisfy { $0.batchPart == (1, 2) })
    }
}
