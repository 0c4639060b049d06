// swift-tools-version:6.0
import PackageDescription

// Module map: see docs/architecture.md. The runtime side (AnvilCore, AnvilKernels,
// AnvilEngine, AnvilRuntime) never imports the builder side (AnvilIR, AnvilOps,
// AnvilONNX, AnvilPasses, AnvilBuilder). AnvilKernels holds the one graph
// interpreter; IR graphs reach it through AnvilOps. AnvilONNX needs neither the
// kernels nor the op registry, so the importer does not link oneDNN.
let package = Package(
    name: "Anvil",
    products: [
        .executable(name: "anvil", targets: ["anvil"]),
        .library(name: "AnvilCore", targets: ["AnvilCore"]),
        .library(name: "AnvilKernels", targets: ["AnvilKernels"]),
        .library(name: "AnvilONNX", targets: ["AnvilONNX"]),
        .library(name: "AnvilRuntime", targets: ["AnvilRuntime"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CProtobufC",
            pkgConfig: "libprotobuf-c",
            providers: [.apt(["libprotobuf-c-dev"])]
        ),
        .target(name: "CONNX", dependencies: ["CProtobufC"]),
        // zlib (Debian zlib1g-dev): inflating .npz archives written by numpy.savez_compressed.
        .systemLibrary(name: "CZlib", providers: [.apt(["zlib1g-dev"])]),
        // oneDNN (Debian libdnnl-dev, which ships no pkg-config file): headers under
        // /usr/include/oneapi/dnnl, library libdnnl.
        .target(name: "COneDNN", linkerSettings: [.linkedLibrary("dnnl"), .linkedLibrary("dl")]),
        .target(name: "AnvilCore"),
        .target(name: "AnvilKernels", dependencies: ["AnvilCore", "COneDNN"]),
        .target(name: "AnvilEngine", dependencies: ["AnvilCore", "AnvilKernels"]),
        .target(name: "AnvilRuntime", dependencies: ["AnvilCore", "AnvilKernels", "AnvilEngine"]),
        .target(name: "AnvilIR", dependencies: ["AnvilCore"]),
        .target(name: "AnvilOps", dependencies: ["AnvilCore", "AnvilIR", "AnvilKernels"]),
        .target(name: "AnvilONNX", dependencies: ["AnvilCore", "AnvilIR", "CONNX", "CZlib"]),
        .target(name: "AnvilPasses", dependencies: ["AnvilCore", "AnvilIR", "AnvilOps", "AnvilKernels"]),
        .target(name: "AnvilBuilder", dependencies: ["AnvilCore", "AnvilIR", "AnvilOps", "AnvilPasses", "AnvilEngine", "AnvilRuntime", "AnvilKernels"]),
        .executableTarget(
            name: "anvil",
            dependencies: [
                "AnvilCore", "AnvilIR", "AnvilOps", "AnvilONNX", "AnvilPasses", "AnvilBuilder", "AnvilRuntime", "AnvilEngine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // libFuzzer targets (tools/fuzz builds them with coverage, AddressSanitizer and libFuzzer;
        // a plain build links without libFuzzer, whose driver the C shim declares weak).
        .target(name: "CFuzzDriver"),
        .target(name: "AnvilFuzzTargets", dependencies: ["AnvilCore", "AnvilEngine", "AnvilONNX", "AnvilOps", "AnvilRuntime"]),
        .executableTarget(name: "anvil-fuzz", dependencies: ["AnvilFuzzTargets", "CFuzzDriver"]),
        // Test support: counts the process's heap allocations (defines malloc and relatives).
        .target(name: "CAllocationCounter", path: "Tests/CAllocationCounter"),
        .testTarget(name: "AnvilTests", dependencies: ["AnvilCore", "AnvilIR", "AnvilOps", "AnvilONNX", "AnvilKernels", "AnvilPasses", "AnvilEngine",
                                                       "AnvilRuntime", "AnvilBuilder", "AnvilFuzzTargets", "CAllocationCounter"],
                    exclude: ["Golden"]),
        .testTarget(name: "ConformanceTests", dependencies: ["AnvilCore", "AnvilIR", "AnvilOps", "AnvilONNX", "AnvilPasses", "AnvilBuilder", "AnvilRuntime", "AnvilEngine"],
                    exclude: ["manifest.txt"]),
    ],
    swiftLanguageModes: [.v6]
)
