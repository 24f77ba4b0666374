// swift-tools-version:6.1
import PackageDescription

import struct Foundation.URL

// The root package is a path dependency, and SwiftPM names it after its folder, which differs
// between clones: derive it instead of hard-coding "sensorlog".
let root = URL(fileURLWithPath: Context.packageDirectory).deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "sensorlog-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: "../"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.0", traits: ["MallocInterposer"]),
    ],
    targets: [
        // One folder per suite under Benchmarks/.
        .executableTarget(
            name: "LogStoreBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "LogStore", package: root),
                .product(name: "SensorLogCore", package: root),
            ],
            path: "Benchmarks/LogStoreBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
