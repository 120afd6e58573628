import ArgumentParser
import Foundation
import Tensors

@main
struct Diffuse: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diffuse",
        abstract: "Train, fine-tune, guide and sample diffusion models, natively in Swift.",
        version: DiffuseVersion.string,
        subcommands: [Info.self, Demo.self, Train.self, TrainClassifier.self, TrainCLIP.self, TrainVAE.self, TrainTextToImage.self, EvaluateLoRADigits.self, Sample.self, Generate.self, Serve.self, Measure.self, Toy.self, Inspect.self, Tokenize.self, Convert.self]
    )
}

enum DiffuseVersion {
    static let string = "0.1.0"
}

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the compute backend: BLAS library, threads and SIMD features.")

    func run() throws {
        print("diffuse \(DiffuseVersion.string)")
        print("device:  \(Backend.device.rawValue)")
        print("blas:    \(Backend.blas) (serial inside each worker)")
        print("threads: \(Parallel.threadCount) (set DIFFUSE_NUM_THREADS to change)")
        print("simd:    \(Backend.simdFeatures)")
        print("cpu:     \(CPUFeatures.modelName): \(CPUFeatures.summary)")
        print("compute: \(ComputeMode.description)")
        print("kernels: \(KernelSet.description)")
    }
}
