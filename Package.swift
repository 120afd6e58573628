// swift-tools-version:6.0
import PackageDescription

/// Kernels are compiled with optimisation even in debug builds: unoptimised
/// SIMD and pointer loops run hundreds of times slower and make tests crawl.
let kernelSettings: [SwiftSetting] = [
    .unsafeFlags(["-O", "-target-cpu", "haswell"]),
]

/// Kernels for CPUs with AVX-512 (F, BW, CD, DQ, VL): called only after a run-time check.
let avx512KernelSettings: [SwiftSetting] = [
    .unsafeFlags(["-O", "-target-cpu", "skylake-avx512"]),
]

let package = Package(
    name: "Diffuse",
    products: [
        .library(name: "Tensors", targets: ["Tensors"]),
        .library(name: "NN", targets: ["NN"]),
        .library(name: "Diffusion", targets: ["Diffusion"]),
        .library(name: "DiffuseServer", targets: ["DiffuseServer"]),
        .library(name: "Distributed", targets: ["Distributed"]),
        .executable(name: "diffuse", targets: ["diffuse"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS"),
        .systemLibrary(name: "CDiffuseSystem", path: "Sources/CDiffuseSystem"),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib"),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG"),
        .systemLibrary(name: "CJPEG", path: "Sources/CJPEG"),
        .systemLibrary(name: "CDNNL", path: "Sources/CDNNL"),
        // Open MPI (Debian's libopenmpi-dev) for data-parallel training under mpirun; CMPIShim wraps its macros.
        .systemLibrary(name: "CMPI", path: "Sources/CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])]),
        .target(name: "CMPIShim", dependencies: ["CMPI"]),
        .target(name: "Distributed", dependencies: ["CMPIShim", "Diffusion", "Tensors"]),
        .target(
            name: "CBFloat16Kernels",
            cSettings: [.unsafeFlags(["-O3"])]
        ),
        .target(
            name: "TensorsAVX512",
            swiftSettings: avx512KernelSettings
        ),
        .target(
            name: "Tensors",
            dependencies: ["COpenBLAS", "CDiffuseSystem", "CDNNL", "TensorsAVX512", "CBFloat16Kernels"],
            swiftSettings: kernelSettings
        ),
        .target(
            name: "NN",
            dependencies: ["Tensors", "CDiffuseSystem"],
            swiftSettings: kernelSettings
        ),
        .target(
            name: "Diffusion",
            dependencies: ["Tensors", "NN", "CZlib", "CPNG", "CJPEG", .product(name: "Yams", package: "Yams")],
            swiftSettings: kernelSettings
        ),
        .target(
            name: "DiffuseServer",
            dependencies: [
                "Tensors",
                "NN",
                "Diffusion",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "diffuse",
            dependencies: [
                "Tensors",
                "Diffusion",
                "NN",
                "DiffuseServer",
                "Distributed",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "diffuse-bench",
            dependencies: ["Tensors", "NN", "Diffusion"],
            path: "Benchmarks/DiffuseBench",
            swiftSettings: kernelSettings
        ),
        .target(
            name: "TestSupport",
            dependencies: ["Tensors"],
            path: "Tests/TestSupport",
            swiftSettings: kernelSettings
        ),
        .testTarget(
            name: "TensorsTests",
            dependencies: ["Tensors", "TestSupport"],
            swiftSettings: kernelSettings
        ),
        .testTarget(
            name: "NNTests",
            dependencies: ["NN", "Tensors", "TestSupport"],
            swiftSettings: kernelSettings
        ),
        .testTarget(
            name: "DiffusionTests",
            dependencies: ["Diffusion", "Tensors", "TestSupport"],
            swiftSettings: kernelSettings
        ),
        .testTarget(
            name: "DistributedTests",
            dependencies: ["Distributed", "Diffusion", "Tensors", "TestSupport"]
        ),
        .testTarget(
            name: "DiffuseServerTests",
            dependencies: [
                "DiffuseServer", "Diffusion", "NN", "Tensors", "TestSupport",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ]
        ),
    ],
    swiftLanguageModes: [.v5]
)
