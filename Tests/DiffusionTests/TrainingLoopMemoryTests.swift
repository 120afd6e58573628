import Diffusion
import Foundation
import Tensors
import TestSupport
import XCTest

/// A 50-step training loop of a small conv net (conv, group norm, SiLU, conv):
/// the loss must fall and the process must not grow.
final class TrainingLoopMemoryTests: XCTestCase {
    private func residentBytes() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return (line.split(separator: " ").compactMap { Int($0) }.first ?? 0) * 1024
        }
        return 0
    }

    func testLossFallsAndMemoryStaysFlat() {
        var generator = RandomGenerator(seed: 3)
        // Smooth synthetic images: blurred noise, so there is structure to learn.
        let base = Tensor.randn([64, 1, 28, 28], generator: &generator)
        let images = noGrad { base.avgPool2d(kernelSize: 3, stride: 1, padding: 1).avgPool2d(kernelSize: 3, stride: 1, padding: 1) * 3 }
        var residentAtStep5 = 0, storageAtStep5 = 0
        var residentAtStep50 = 0, storageAtStep50 = 0
        let steps = EngineDemo.run(steps: 50, batchSize: 64, noiseLevel: 0.5, learningRate: 0.05, images: images) { step in
            if step.index == 5 { residentAtStep5 = residentBytes(); storageAtStep5 = Storage.allocatedBytes }
            if step.index == 50 { residentAtStep50 = residentBytes(); storageAtStep50 = Storage.allocatedBytes }
        }
        let firstLosses = steps.prefix(5).map(\.loss).reduce(0, +) / 5
        let lastLosses = steps.suffix(5).map(\.loss).reduce(0, +) / 5
        XCTAssertLessThan(lastLosses, firstLosses * 0.9, "loss did not fall: \(firstLosses) → \(lastLosses)")
        let growth = Double(residentAtStep50 - residentAtStep5) / Double(residentAtStep5)
        print("memory: resident \(residentAtStep5 / 1_000_000) MB at step 5, \(residentAtStep50 / 1_000_000) MB at step 50 (\(String(format: "%+.1f", growth * 100))%); tensor storage \(storageAtStep5) → \(storageAtStep50) bytes; loss \(firstLosses) → \(lastLosses)")
        XCTAssertLessThanOrEqual(growth, 0.10, "process memory grew by \(growth * 100)% between steps 5 and 50")
        XCTAssertLessThanOrEqual(storageAtStep50, storageAtStep5, "tensor storage grew between steps 5 and 50")
    }
}
