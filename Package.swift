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
        .executable(name: "sensorlog-loadgen", targets: ["sensorlog-loadgen"]),
        .executable(name: "sensorlog-fuzz", targets: ["sensorlog-fuzz"]),
        .executable(name: "sensorlog-fuzz-net", targets: ["sensorlog-fuzz-net"]),
        .library(name: "LogStore", targets: ["LogStore"]),
        .library(name: "SensorLogCore", targets: ["SensorLogCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        // P-256 ECDSA for the line protocol's QuestDB-style authentication.
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        // TLS to an MQTT broker (mqtts://).
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        // NIOHTTPTypes: the HTTP request parts a connection guard in front of Hummingbird sees.
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
    ],
    targets: [
        // LZ4 from the system (Debian: liblz4-dev); tools/run and tools/test install it.
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        // libdeflate from the system (Debian: libdeflate-dev): gzip request bodies.
        .systemLibrary(name: "CDeflate", pkgConfig: "libdeflate", providers: [.apt(["libdeflate-dev"])]),
        // nats.c from the system (Debian: libnats-dev): JetStream streams and key-value buckets,
        // for cluster mode (issue 21; docs/architecture.md, "JetStream").
        .systemLibrary(name: "CNATS", pkgConfig: "libnats", providers: [.apt(["libnats-dev"])]),
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
        // A Swift face on nats.c: a connection to the NATS cluster, a partition's stream (publish
        // with an expected last sequence, read by sequence, purge), key-value leases by
        // compare-and-set. Knows nothing of sensorlog's log.
        .target(name: "JetStream", dependencies: ["CNATS"], swiftSettings: swiftSettings),
        // Cluster mode (docs/cluster-design.md): a partition's stream as its owner writes it and
        // every node follows it into its local log. Knows JetStream and the log, not file names.
        .target(name: "Cluster", dependencies: ["JetStream", "LogStore", "SensorLogCore", "Ingest",
                                               .product(name: "Logging", package: "swift-log")], swiftSettings: swiftSettings),
        // The line protocol: a pure parser over bytes. No I/O.
        .target(name: "LineProtocol", dependencies: ["SensorLogCore"], swiftSettings: swiftSettings),
        // The one path from producers into the log: validation, type check, exact dedupe, append;
        // and the TCP line-protocol listener (SwiftNIO).
        .target(
            name: "Ingest",
            dependencies: [
                "SensorLogCore", "LogStore", "LineProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
                // TLS on the listeners (HTTPS and QuestDB's tcps::).
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // sensorlogd as a subscriber of an MQTT broker: an MQTT 3.1.1 client on SwiftNIO, so that a
        // message is acknowledged only once its readings are durable.
        .target(
            name: "MQTT",
            dependencies: [
                "SensorLogCore", "LogStore", "LineProtocol", "Ingest",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // SQLite from the system (Debian: libsqlite3-dev): the aggregates store.
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        // The consumer group "aggregator": hourly aggregates, exactly once, in aggregates.sqlite.
        .target(
            name: "Aggregator",
            dependencies: [
                "SensorLogCore", "LogStore", "CSQLite",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The HTTP API (Hummingbird 2). Knows nothing of file formats.
        .target(
            name: "HTTPAPI",
            dependencies: [
                "SensorLogCore", "Ingest", "Aggregator", "LogStore", "LineProtocol", "CDeflate",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                // HTTPParserError: a refused head answered 431 or 400 with a JSON body.
                .product(name: "NIOHTTP1", package: "swift-nio"),
                // SHA-256 of API keys stored hashed.
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            // The console's sources: tools/embed-assets compiles them into EmbeddedAssets.swift.
            exclude: ["Console"],
            swiftSettings: swiftSettings
        ),
        // sensorlogd as a library: configuration in, services out (start, run, stop), so that a
        // test runs the whole server in-process. Knows nothing of flags or the environment.
        .target(
            name: "Daemon",
            dependencies: [
                "SensorLogCore", "LogStore", "Ingest", "HTTPAPI", "Aggregator", "MQTT", "Cluster", "JetStream",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // The executable: flags and SENSORLOG_ variables into a DaemonConfiguration, logging and
        // metrics bootstrapped, exit statuses.
        .executableTarget(
            name: "sensorlogd",
            dependencies: [
                "SensorLogCore", "LogStore", "Ingest", "Daemon", "MQTT", "Cluster", "JetStream",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "sensorlog",
            dependencies: [
                "SensorLogCore", "LogStore", "Aggregator", "LineProtocol",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                // `sensorlog keys add`: a random key and its SHA-256.
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // tools/loadgen: the standard workload over line protocol.
        .executableTarget(
            name: "sensorlog-loadgen",
            dependencies: [.product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: swiftSettings
        ),
        // The fuzz targets (docs/testing.md, "Fuzzing"): every parser of outside bytes and reader of
        // on-disk bytes that lives outside the networking modules, each checking properties. No
        // NIO, Hummingbird or swift-crypto in the closure: the instrumented build (tools/fuzz)
        // rebuilds every dependency. The internals they reach are `package`, not `@testable`: the
        // fuzz products build in release like every other product.
        .target(
            name: "FuzzTargets",
            dependencies: ["SensorLogCore", "LineProtocol", "LogStore"],
            swiftSettings: swiftSettings
        ),
        // libFuzzer's entry point under `-D SENSORLOG_FUZZ -sanitize=fuzzer,address`, otherwise a
        // replay driver (`sensorlog-fuzz TARGET FILE...`) and the seed writer.
        .executableTarget(
            name: "sensorlog-fuzz",
            dependencies: ["FuzzTargets"],
            swiftSettings: swiftSettings
        ),
        // The fuzz targets of the networking modules (MQTT packets and payloads, HTTP write bodies
        // with gzip): a product of its own, since its instrumented build rebuilds NIO, NIOSSL,
        // Hummingbird and swift-crypto.
        .target(
            name: "FuzzTargetsNet",
            dependencies: [
                "FuzzTargets", "SensorLogCore", "LineProtocol", "LogStore", "Ingest", "MQTT", "HTTPAPI", "CDeflate",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "sensorlog-fuzz-net",
            dependencies: ["FuzzTargets", "FuzzTargetsNet"],
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
            name: "LineProtocolTests",
            dependencies: [
                "LineProtocol", "SensorLogCore",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: swiftSettings
        ),
        // What every test target shares: temporary directories, the seeded PRNG, workloads, the
        // ingest fixture and socket helpers.
        .target(
            name: "TestSupport",
            dependencies: ["SensorLogCore", "LogStore", "Ingest", "JetStream"],
            path: "Tests/TestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "IngestTests",
            dependencies: [
                "Ingest", "LineProtocol", "LogStore", "SensorLogCore", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HTTPAPITests",
            dependencies: [
                "HTTPAPI", "Ingest", "Aggregator", "LogStore", "SensorLogCore", "TestSupport",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "MQTTTests",
            dependencies: [
                "MQTT", "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AggregatorTests",
            dependencies: [
                "Aggregator", "Ingest", "LogStore", "SensorLogCore", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "DaemonTests",
            dependencies: [
                "Aggregator", "Daemon", "Ingest", "LogStore", "SensorLogCore", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        // Cluster mode on three real nats-servers: the JetStream calls it rests on, leases, a
        // partition's stream written by its owners and followed into local logs.
        .testTarget(
            name: "ClusterTests",
            dependencies: ["Cluster", "JetStream", "LogStore", "SensorLogCore", "TestSupport"],
            swiftSettings: swiftSettings
        ),
        // Every file of Fuzz/corpus and Fuzz/regressions through its target, uninstrumented.
        .testTarget(
            name: "FuzzTests",
            dependencies: ["FuzzTargets", "FuzzTargetsNet"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "LogStoreTests",
            dependencies: [
                "SensorLogCore", "LogStore", "TestSupport",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
