import ArgumentParser
import Diffusion
import Foundation
import Tensors

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a small conv denoiser on Fashion-MNIST for a few steps and print forward/backward timings.")

    @Option(help: "Training steps.") var steps = 30
    @Option(help: "Images per batch.") var batchSize = 64

    func run() throws {
        let data: (images: Tensor, labels: [Int])
        do {
            data = try FashionMNIST.load(training: true, limit: 4096)
        } catch {
            throw ValidationError("\(error)")
        }
        print("Fashion-MNIST: \(data.images.shape[0]) images of \(data.images.shape[2])×\(data.images.shape[3]) from \(FashionMNIST.directory)")
        print("network: conv 3×3 (1→32) → group norm (8) → SiLU → conv 3×3 (32→1); predicts the added noise; \(Parallel.threadCount) threads")
        let steps = EngineDemo.run(steps: steps, batchSize: batchSize, images: data.images) { step in
            print(String(format: "step %3d  loss %.4f  forward %7.2f ms  backward+update %7.2f ms",
                         step.index, step.loss, step.forwardMilliseconds, step.backwardMilliseconds))
        }
        let measured = steps.dropFirst(Swift.min(3, steps.count - 1))
        let forward = measured.map(\.forwardMilliseconds).sorted()[measured.count / 2]
        let backward = measured.map(\.backwardMilliseconds).sorted()[measured.count / 2]
        let imagesPerSecond = Double(batchSize) / ((forward + backward) / 1000)
        print(String(format: "median forward %.2f ms, backward+update %.2f ms, %.0f images/s", forward, backward, imagesPerSecond))
        print(String(format: "loss %.4f → %.4f", steps.first?.loss ?? 0, steps.last?.loss ?? 0))
    }
}
