// The storage engine on the standard workload: 10 000 sensors, 3 types, 50 locations, one reading
// per sensor per second, values with 3 decimals. Run with `tools/bench` (docs/benchmarks.md).
import Benchmark
import Dispatch
import Foundation
import LogStore
import SensorLogCore

/// Readings per measured iteration: 100 seconds of the standard workload.
let readingsPerIteration = 1_000_000
/// Readings per append, per partition: what the ingest forms from a busy connection.
let busyBatchSize = 4096
/// Readings per append at the workload's real rate (10 000 readings/s over 8 partitions), when
/// the ingest flushes every 100 ms: the worst case for bytes per reading.
let realTimeBatchSize = 125

/// The standard workload, deterministic, grouped per partition (8) and cut into append batches.
func standardBatches(readings: Int, batchSize: Int, partitions: Int = 8) -> [[Reading]] {
    let sensors = 10_000
    let types = ["temperature", "humidity", "pressure"]
    let bases = [20_000, 50_000, 1_013_000]
    var state: UInt64 = 7
    var groups = [[Reading]](repeating: [], count: partitions)
    let ids = (0..<sensors).map { "sensor-" + String(repeating: "0", count: 5 - String($0).count) + String($0) }
    let partitionOf = ids.map { PartitionHash.partition(of: $0, partitions: partitions) }
    for i in 0..<readings {
        let s = i % sensors
        let k = i / sensors
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        let milli = bases[s % 3] + Int((state >> 33) % 10_001) - 5000
        groups[partitionOf[s]].append(Reading(
            sensorID: ids[s], type: types[s % 3], value: Double(milli) / 1000, location: "site-\(s % 50)",
            timestamp: 1_763_978_400_000_000_000 + Int64(k) * 1_000_000_000 + Int64(s) * 1000))
    }
    var batches: [[Reading]] = []
    for group in groups {
        var i = 0
        while i < group.count {
            batches.append(Array(group[i..<min(i + batchSize, group.count)]))
            i += batchSize
        }
    }
    return batches
}

func freshDirectory() -> String {
    let path = NSTemporaryDirectory() + "sensorlog-bench-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func directoryBytes(_ path: String) -> Int {
    var total = 0
    if let e = FileManager.default.enumerator(atPath: path) {
        for case let name as String in e where name.hasSuffix(".log") || name.hasSuffix("index") {
            total += (try? FileManager.default.attributesOfItem(atPath: path + "/" + name)[.size] as? Int) ?? 0
        }
    }
    return total
}

/// Appends every batch, one thread per partition (appends to different partitions run in parallel).
func appendAll(_ log: Log, _ batches: [[Reading]]) {
    var byPartition = [[[Reading]]](repeating: [], count: log.partitions.count)
    for b in batches { byPartition[log.partition(for: b[0].sensorID)].append(b) }
    let work = byPartition
    DispatchQueue.concurrentPerform(iterations: work.count) { p in
        for b in work[p] { _ = try! log.appendBlocking(b, toPartition: p) }
    }
}

let benchmarks: @Sendable () -> Void = {
    let batches = standardBatches(readings: readingsPerIteration, batchSize: busyBatchSize)
    let smallBatches = standardBatches(readings: readingsPerIteration, batchSize: realTimeBatchSize)

    // Busy producers (4096-reading batches) under each policy, and the real-time rate (125-reading
    // batches, the worst case for bytes per reading).
    let cases: [(String, [[Reading]], FsyncPolicy)] = FsyncPolicy.allCases.map { ("append standard workload, fsync \($0)", batches, $0) }
        + [("append standard workload in 125-reading batches (real-time rate), fsync interval", smallBatches, .interval)]
    for (name, input, policy) in cases {
        Benchmark(
            name,
            configuration: .init(
                metrics: [.throughput, .wallClock, .cpuTotal, .custom("bytes_per_reading_x100", polarity: .prefersSmaller, useScalingFactor: false)],
                scalingFactor: .mega, maxDuration: .seconds(20), maxIterations: 7)
        ) { benchmark in
            let dir = freshDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let log = try Log.open(dataDirectory: dir, configuration: LogConfiguration(fsync: policy))
            benchmark.startMeasurement()
            appendAll(log, input)
            try log.flush()
            benchmark.stopMeasurement()
            try log.close()
            benchmark.measurement(.custom("bytes_per_reading_x100", polarity: .prefersSmaller, useScalingFactor: false),
                                  directoryBytes(dir) * 100 / readingsPerIteration)
        }
    }

    Benchmark(
        "replay and decode standard workload",
        configuration: .init(metrics: [.throughput, .wallClock, .cpuTotal, .mallocCountTotal], scalingFactor: .mega, maxIterations: 10,
                             setup: {}, teardown: {})
    ) { benchmark in
        // Setup outside the measurement: one log of 1M readings.
        let dir = freshDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try Log.open(dataDirectory: dir, configuration: LogConfiguration(fsync: .never))
        appendAll(log, batches)
        benchmark.startMeasurement()
        var sum = 0.0
        var count = 0
        var batch = DecodedBatch()
        for p in 0..<log.partitions.count {
            let reader = log.reader(partition: p, from: 0)
            while let first = try reader.next(into: &batch) {
                for i in first..<batch.count { sum += batch.values[i] }
                count += batch.count - first
            }
        }
        benchmark.stopMeasurement()
        precondition(count == readingsPerIteration)
        blackHole(sum)
        try log.close()
    }

    Benchmark(
        "append one batch of 4096 (allocations per batch)",
        configuration: .init(metrics: [.mallocCountTotal, .wallClock, .throughput], maxIterations: 2000)
    ) { benchmark in
        // A warm log; each iteration appends one batch to partition of batches[0].
        let dir = freshDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = try Log.open(dataDirectory: dir, configuration: LogConfiguration(fsync: .never))
        let batch = batches[0]
        let p = log.partition(for: batch[0].sensorID)
        _ = try log.appendBlocking(batch, toPartition: p)
        try batch.withUnsafeBufferPointer { buffer in
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { blackHole(try log.appendBlocking(buffer, toPartition: p)) }
            benchmark.stopMeasurement()
        }
        try log.close()
    }

    // Background compaction (issue 16): the real-time-rate log (125-reading batches) in 1 MiB
    // segments, every segment closed, then one `compactOnline` pass over every partition, unpaced.
    // Throughput counts the readings rewritten; bytes per reading is the whole directory after.
    Benchmark(
        "background compaction of the real-time-rate log",
        configuration: .init(
            metrics: [.throughput, .wallClock, .peakMemoryResident,
                      .custom("bytes_per_reading_before_x100", polarity: .prefersSmaller, useScalingFactor: false),
                      .custom("bytes_per_reading_x100", polarity: .prefersSmaller, useScalingFactor: false)],
            scalingFactor: .mega, maxDuration: .seconds(30), maxIterations: 5)
    ) { benchmark in
        let dir = freshDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var limits = Limits()
        limits.segmentBytes = 1 << 20
        let log = try Log.open(dataDirectory: dir, configuration: LogConfiguration(limits: limits, fsync: .never))
        appendAll(log, smallBatches)
        try log.rollActiveSegments()
        let before = directoryBytes(dir)
        let memory = CompactionMemory()
        benchmark.startMeasurement()
        for p in 0..<log.partitions.count { _ = try log.compactOnline(partition: p, memory: memory) }
        benchmark.stopMeasurement()
        try log.close()
        benchmark.measurement(.custom("bytes_per_reading_before_x100", polarity: .prefersSmaller, useScalingFactor: false),
                              before * 100 / readingsPerIteration)
        benchmark.measurement(.custom("bytes_per_reading_x100", polarity: .prefersSmaller, useScalingFactor: false),
                              directoryBytes(dir) * 100 / readingsPerIteration)
    }
}
