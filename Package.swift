// swift-tools-version:6.0
import PackageDescription

/// Kernels are compiled with optimisation even in debug builds: unoptimised
/// SIMD and pointer loops run hundreds of times slower and make tests crawl.
let kernelSettings: [SwiftSetting] = [
    .unsafeFlags(["-O", "-target-cpu", "haswell"]),
]

let package = Package(
    name: "Diffuse",
    products: [
        .library(name: "Tensors", targets: ["Tensors"]),
        .executable(name: "diffuse", targets: ["diffuse"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS"),
        .target(
            name: "Tensors",
            dependencies: ["COpenBLAS"],
            swiftSettings: kernelSettings
        ),
        .executableTarget(
            name: "diffuse",
            dependencies: [
                "Tensors",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "diffuse-bench",
            dependencies: ["Tensors"],
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
    ],
    swiftLanguageModes: [.v5]
)
