// swift-tools-version:6.1
import PackageDescription

// One setting for every Swift target: the upcoming features the house style asks for.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "sensorlog",
    products: [
        .executable(name: "sensorlogd", targets: ["sensorlogd"]),
        .executable(name: "sensorlog", targets: ["sensorlog"]),
        .library(name: "LogStore", targets: ["LogStore"]),
        .library(name: "SensorLogCore", targets: ["SensorLogCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
    ],
    targets: [
        // LZ4 from the system (Debian: liblz4-dev); tools/run and tools/test install it.
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        // CRC32C in C: the SSE4.2 instruction is not reachable from Swift without intrinsics.
        .target(name: "CRC32C"),
        // The reading, its validation, the partition hash and every bound. No dependencies.
        .target(name: "SensorLogCore", swiftSettings: swiftSettings),
        // The storage engine: segments, batches, indexes, recovery. No networking.
        .target(
            name: "LogStore",
            dependencies: ["SensorLogCore", "CLZ4", "CRC32C"],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "sensorlogd",
            dependencies: [
                "SensorLogCore", "LogStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "sensorlog",
            dependencies: [
                "SensorLogCore", "LogStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        // A child process for the kill -9 tests: appends with fsync=always and prints each ack.
        .executableTarget(
            name: "LogCrashChild",
            dependencies: ["SensorLogCore", "LogStore"],
            path: "Tests/LogCrashChild",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SensorLogCoreTests",
            dependencies: [
                "SensorLogCore",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "LogStoreTests",
            dependencies: [
                "SensorLogCore", "LogStore",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
