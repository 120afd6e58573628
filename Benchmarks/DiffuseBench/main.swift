// The Diffuse side of `make bench`: a worker that sets up and runs one
// workload at a time, driven over stdin by Benchmarks/run-bench.py, which runs
// the PyTorch worker (Benchmarks/torch_bench.py) interleaved with it.
//
// Protocol (one command per line): `setup NAME` → `ok`; `run NAME` → the
// milliseconds of one repetition; `rss` → peak resident memory in MB; `quit`.
import Foundation
import Tensors

/// One benchmark: `setup` builds the inputs and returns the timed body.
struct Workload {
    let name: String
    let setup: () -> () -> Void
}

var generator = RandomGenerator(seed: 0)

func randn(_ shape: [Int]) -> Tensor { Tensor.randn(shape, generator: &generator) }

func gemm(_ size: Int) -> Workload {
    Workload(name: "gemm-\(size)") {
        let a = randn([size, size]), b = randn([size, size])
        return { _ = noGrad { a.matmul(b) } }
    }
}

func convolutionForward(_ name: String, batch: Int, channels: Int, size: Int) -> Workload {
    Workload(name: name) {
        let x = randn([batch, channels, size, size])
        let weight = randn([channels, channels, 3, 3]) * 0.05
        let bias = randn([channels])
        return { _ = noGrad { x.conv2d(weight: weight, bias: bias, padding: 1) } }
    }
}

func convolutionBackward(_ name: String, batch: Int, channels: Int, size: Int) -> Workload {
    Workload(name: name) {
        let x = randn([batch, channels, size, size])
        let weight = randn([channels, channels, 3, 3]) * 0.05
        let upstream = randn([batch, channels, size, size])
        x.requiresGrad = true
        weight.requiresGrad = true
        return {
            // Forward outside the timed part is not possible with one closure,
            // so the driver subtracts nothing: the PyTorch side times the same
            // backward-only region (see torch_bench.py).
            let output = x.conv2d(weight: weight, padding: 1)
            let start = DispatchTime.now().uptimeNanoseconds
            output.backward(upstream)
            BackwardTimer.nanoseconds = DispatchTime.now().uptimeNanoseconds - start
            x.grad = nil
            weight.grad = nil
        }
    }
}

/// Lets a workload report the time of only part of its body.
enum BackwardTimer {
    nonisolated(unsafe) static var nanoseconds: UInt64?
}

let workloads: [Workload] = [
    gemm(512),
    gemm(1024),
    convolutionForward("conv-fwd-32c28", batch: 128, channels: 32, size: 28),
    convolutionBackward("conv-bwd-32c28", batch: 128, channels: 32, size: 28),
    convolutionForward("conv-fwd-64c14", batch: 128, channels: 64, size: 14),
    convolutionBackward("conv-bwd-64c14", batch: 128, channels: 64, size: 14),
    Workload(name: "groupnorm-fwdbwd") {
        let x = randn([128, 64, 14, 14])
        let weight = randn([64]), bias = randn([64])
        let upstream = randn([128, 64, 14, 14])
        x.requiresGrad = true; weight.requiresGrad = true; bias.requiresGrad = true
        return {
            x.groupNorm(groupCount: 32, weight: weight, bias: bias).backward(upstream)
            x.grad = nil; weight.grad = nil; bias.grad = nil
        }
    },
    Workload(name: "attention-fwdbwd") {
        let query = randn([128, 196, 64]), key = randn([128, 196, 64]), value = randn([128, 196, 64])
        let upstream = randn([128, 196, 64])
        for tensor in [query, key, value] { tensor.requiresGrad = true }
        return {
            Tensor.scaledDotProductAttention(query: query, key: key, value: value).backward(upstream)
            for tensor in [query, key, value] { tensor.grad = nil }
        }
    },
]

func peakResidentMegabytes() -> Double {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let kilobytes = line.split(separator: " ").compactMap { Double($0) }.first ?? 0
        return kilobytes / 1024
    }
    return 0
}

var prepared: [String: () -> Void] = [:]
setvbuf(stdout, nil, _IOLBF, 0)
if CommandLine.arguments.contains("--list") {
    for workload in workloads { print(workload.name) }
    exit(0)
}
while let line = readLine() {
    let parts = line.split(separator: " ").map(String.init)
    guard let command = parts.first else { continue }
    switch command {
    case "setup":
        guard parts.count == 2, let workload = workloads.first(where: { $0.name == parts[1] }) else {
            print("error unknown workload \(parts.dropFirst().joined(separator: " "))")
            continue
        }
        prepared = [:]
        prepared[workload.name] = workload.setup()
        print("ok")
    case "run":
        guard parts.count == 2, let body = prepared[parts[1]] else { print("error not set up"); continue }
        BackwardTimer.nanoseconds = nil
        let start = DispatchTime.now().uptimeNanoseconds
        body()
        let elapsed = BackwardTimer.nanoseconds ?? (DispatchTime.now().uptimeNanoseconds - start)
        print(String(format: "%.4f", Double(elapsed) / 1e6))
    case "rss":
        print(String(format: "%.1f", peakResidentMegabytes()))
    case "quit":
        exit(0)
    default:
        print("error unknown command \(command)")
    }
}
