// The Diffuse side of `make bench`: a worker that sets up and runs one
// workload at a time, driven over stdin by Benchmarks/run-bench.py, which runs
// the PyTorch worker (Benchmarks/torch_bench.py) interleaved with it.
//
// Protocol (one command per line): `setup NAME` → `ok`; `run NAME` → the
// milliseconds of one repetition; `rss` → peak resident memory in MB; `quit`.
import Diffusion
import Foundation
import NN
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

func convolutionForward(_ name: String, batch: Int, channels: Int, outChannels: Int? = nil, size: Int, layout: TensorLayout = .contiguous,
                        kernel: Int = 3, stride: Int = 1) -> Workload {
    Workload(name: name) {
        let outChannels = outChannels ?? channels
        let x = randn([batch, channels, size, size]).withLayout(layout)
        let weight = randn([outChannels, channels, kernel, kernel]) * 0.05
        let bias = randn([outChannels])
        return { _ = noGrad { x.conv2d(weight: weight, bias: bias, stride: stride, padding: kernel / 2) } }
    }
}

func convolutionBackward(_ name: String, batch: Int, channels: Int, outChannels: Int? = nil, size: Int, layout: TensorLayout = .contiguous,
                         kernel: Int = 3, stride: Int = 1) -> Workload {
    Workload(name: name) {
        let outChannels = outChannels ?? channels
        let x = randn([batch, channels, size, size]).withLayout(layout).detach()
        let weight = randn([outChannels, channels, kernel, kernel]) * 0.05
        let outSize = (size + 2 * (kernel / 2) - kernel) / stride + 1
        let upstream = randn([batch, outChannels, outSize, outSize])
        x.requiresGrad = true
        weight.requiresGrad = true
        return {
            // Forward outside the timed part is not possible with one closure,
            // so the driver subtracts nothing: the PyTorch side times the same
            // backward-only region (see torch_bench.py).
            let output = x.conv2d(weight: weight, stride: stride, padding: kernel / 2)
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

var workloads: [Workload] = [
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
    // The course UNet's 14×14 attention at batch 128: 8 heads of 8, split from [B, 196, 64] as diffusers does.
    attentionLayer("attention-heads8-fwdbwd", batch: 128, heads: 8, tokens: 196, keys: 196, depth: 8, backward: true),
    unetForward(batch: 16),
    unetForward(batch: 64),
    unetTraining("unet-mnist-train-b128", model: courseUNet, batch: 128, channels: 1, size: 28),
    unetTraining("unet-butterflies-train-b64", model: butterfliesUNet, batch: 64, channels: 3, size: 32),
    ddimSampling(batch: 16, steps: 50),
]
/// A convolution of any shape, for looking into one layer (not a `make bench` row):
/// `conv-fwd:BATCH:IN:OUT:SIZE` or `conv-bwd:BATCH:IN:OUT:SIZE`, 3×3 with padding 1 unless
/// `:kK` (a K×K kernel, padding K/2) and `:sS` (stride S) follow; the input channels-last as a
/// UNet's layers pass it on (PyTorch's side is its default layout).
func shapedConvolution(_ name: String) -> Workload? {
    let parts = name.split(separator: ":")
    guard parts.count >= 5, let batch = Int(parts[1]), let inChannels = Int(parts[2]),
          let outChannels = Int(parts[3]), let size = Int(parts[4]) else { return nil }
    var (kernel, stride) = (3, 1)
    for option in parts.dropFirst(5) {
        guard let value = Int(option.dropFirst()) else { return nil }
        switch option.first {
        case "k": kernel = value
        case "s": stride = value
        default: return nil
        }
    }
    switch parts[0] {
    case "conv-fwd": return convolutionForward(name, batch: batch, channels: inChannels, outChannels: outChannels, size: size, layout: .channelsLast,
                                               kernel: kernel, stride: stride)
    case "conv-bwd": return convolutionBackward(name, batch: batch, channels: inChannels, outChannels: outChannels, size: size, layout: .channelsLast,
                                                kernel: kernel, stride: stride)
    default: return nil
    }
}

/// One matrix product through `Gemm.parallel`, for looking into one shape (not a `make bench`
/// row): `gemm:M:N:K:OPS`, OPS `nn`, `nt` (B given transposed) or `tn` (A given transposed).
func shapedGemm(_ name: String) -> Workload? {
    let parts = name.split(separator: ":")
    guard parts.count == 5, parts[0] == "gemm", let m = Int(parts[1]), let n = Int(parts[2]), let k = Int(parts[3]),
          ["nn", "nt", "tn"].contains(parts[4]) else { return nil }
    let (transposeA, transposeB) = (parts[4] == "tn", parts[4] == "nt")
    return Workload(name: name) {
        let a = randn([m * k]), b = randn([k * n]), c = Tensor.zeros([m * n])
        return {
            Gemm.parallel(GemmArguments(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k,
                                        a: a.floatPointer, lda: transposeA ? m : k, b: b.floatPointer, ldb: transposeB ? k : n,
                                        c: c.floatPointer, ldc: n))
        }
    }
}

/// Rows that compare peak memory (the driver runs each side in a fresh process).
let memoryRows = ["unet-mnist-train-b128-rss"] + unetConditionMemoryRows + pipelineMemoryRows + textToImageTrainingMemoryRows

/// The course's MNIST UNet: 28×28, 1 channel, (32, 64, 64), Down/AttnDown/AttnDown.
func courseUNet() -> UNet2DModel {
    var configuration = UNet2DConfiguration()
    configuration.sampleSize = .square(28)
    configuration.inChannels = 1
    configuration.outChannels = 1
    configuration.layersPerBlock = 2
    configuration.blockOutChannels = [32, 64, 64]
    configuration.downBlockTypes = [.downBlock, .attentionDownBlock, .attentionDownBlock]
    configuration.upBlockTypes = [.attentionUpBlock, .attentionUpBlock, .upBlock]
    Initialization.seed(0)
    return try! UNet2DModel(configuration: configuration)
}

/// The course's 32×32 butterflies UNet: 3 channels, (64, 128, 128, 256), Down, Down, AttnDown, AttnDown.
func butterfliesUNet() -> UNet2DModel {
    var configuration = UNet2DConfiguration()
    configuration.sampleSize = .square(32)
    configuration.inChannels = 3
    configuration.outChannels = 3
    configuration.layersPerBlock = 2
    configuration.blockOutChannels = [64, 128, 128, 256]
    configuration.downBlockTypes = [.downBlock, .downBlock, .attentionDownBlock, .attentionDownBlock]
    configuration.upBlockTypes = [.attentionUpBlock, .attentionUpBlock, .upBlock, .upBlock]
    Initialization.seed(0)
    return try! UNet2DModel(configuration: configuration)
}

func unetForward(batch: Int) -> Workload {
    Workload(name: "unet-mnist-fwd-b\(batch)") {
        let model = courseUNet()
        model.eval()
        let x = randn([batch, 1, 28, 28])
        let timesteps = (0..<batch).map { _ in Float(generator.integer(below: 1000)) }
        return { _ = noGrad { model(x, timesteps: timesteps) } }
    }
}

func unetTraining(_ name: String, model makeModel: @escaping () -> UNet2DModel, batch: Int, channels: Int, size: Int) -> Workload {
    Workload(name: name) {
        let model = makeModel()
        model.train()
        let optimizer = Adam.adamW(parameters: model.parameters(), learningRate: 1e-4)
        let clean = randn([batch, channels, size, size])
        let noise = randn([batch, channels, size, size])
        let timesteps = (0..<batch).map { _ in Float(generator.integer(below: 1000)) }
        return {
            let prediction = model(clean + noise, timesteps: timesteps)
            let loss = Tensor.mseLoss(prediction, noise)
            loss.backward()
            optimizer.step()
            optimizer.zeroGradients()
        }
    }
}

func ddimSampling(batch: Int, steps: Int) -> Workload {
    Workload(name: "sample-ddim\(steps)-mnist-b\(batch)") {
        let model = courseUNet()
        model.eval()
        let scheduler = try! DDIMScheduler(configuration: SchedulerConfiguration())
        return {
            var sampler = RandomGenerator(seed: 0)
            _ = try! SamplingLoop.run(scheduler: scheduler, shape: [batch, 1, 28, 28], steps: steps, generator: &sampler) { sample, timestep in
                model(sample, timestep: timestep)
            }
        }
    }
}

func peakResidentMegabytes() -> Double {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        // "VmHWM:\t  123456 kB"; from 10 GB on there is no space after the tab.
        let kilobytes = line.dropFirst("VmHWM:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { Double($0) }.first ?? 0
        return kilobytes / 1024
    }
    return 0
}

workloads += [clipTextL14(), clipTextL14(bfloat16: true), clipVisionB32()]
workloads += attentionWorkloads
workloads += engineWorkloads
workloads += unetConditionWorkloads
workloads += autoencoderWorkloads
workloads += pipelineWorkloads
workloads += textToImageTrainingWorkloads

var prepared: [String: () -> Void] = [:]
setvbuf(stdout, nil, _IOLBF, 0)
if let flag = CommandLine.arguments.firstIndex(of: "--write-bf16-pipeline"), flag + 1 < CommandLine.arguments.count {
    // A child process of `mappedBFloat16Pipeline()`: writes the files, so the measured process never holds the drawn model.
    do { try writeBFloat16Pipeline(to: URL(fileURLWithPath: CommandLine.arguments[flag + 1])) } catch { fatalError("\(error)") }
    exit(0)
}
if CommandLine.arguments.contains("--list") {
    for workload in workloads { print(workload.name) }
    for name in memoryRows { print(name) }
    exit(0)
}
while let line = readLine() {
    let parts = line.split(separator: " ").map(String.init)
    guard let command = parts.first else { continue }
    switch command {
    case "setup":
        guard parts.count == 2, let workload = workloads.first(where: { $0.name == parts[1] }) ?? shapedConvolution(parts[1]) ?? shapedBFloat16Convolution(parts[1]) ?? shapedGemm(parts[1])
                ?? shapedAttention(parts[1]) else {
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
    case "profile":
        // `profile NAME N`: N runs with the per-op profile on, then its table.
        guard parts.count == 3, let body = prepared[parts[1]], let runs = Int(parts[2]) else { print("error profile NAME N"); continue }
        OperationProfile.isEnabled = true
        OperationProfile.reset()
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<runs { OperationProfile.mark(); body() }
        let wall = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        print(OperationProfile.report())
        // The table's total counts the operations only; the rest (autograd's bookkeeping, the optimizer, the glue) is the difference.
        print("wall \(String(format: "%.1f", wall)) ms for \(runs) runs")
        OperationProfile.isEnabled = false
    case "pool":
        // Buffer-pool counters since the start: hits, misses, bytes evicted, bytes cached, larger-block fits.
        let pool = BufferPool.shared
        print("hits=\(pool.hits) misses=\(pool.misses) evicted_mb=\(pool.evictedBytes >> 20) cached_mb=\(pool.cachedBytes >> 20) fits=\(pool.fits)")
    case "quit":
        exit(0)
    default:
        print("error unknown command \(command)")
    }
}
