import Foundation
public import LogStore
public import SensorLogCore

/// A fresh, empty directory under the system temp dir, removed by `cleanup()`.
public struct TemporaryDirectory: Sendable {
    public let path: String

    public init() {
        path = NSTemporaryDirectory() + "sensorlog-test-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    public func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

/// The standard workload: `sensors` sensors, 3 types, 50 locations, one reading per sensor per
/// second, values with 3 decimals. Deterministic for a seed.
public func standardWorkload(seconds: Int, sensors: Int = 10_000, seed: UInt64 = 7) -> [Reading] {
    var rng = SplitMix64(seed: seed)
    let types = ["temperature", "humidity", "pressure"]
    let bases = [20.0, 50.0, 1013.0]
    var out: [Reading] = []
    out.reserveCapacity(seconds * sensors)
    for k in 0..<seconds {
        for s in 0..<sensors {
            let t = s % 3
            let milli = Int64(bases[t] * 1000) + Int64(rng.next() % 10_001) - 5000
            out.append(Reading(
                sensorID: "sensor-" + String(repeating: "0", count: max(0, 5 - String(s).count)) + String(s),
                type: types[t], value: Double(milli) / 1000, location: "site-\(s % 50)",
                timestamp: 1_763_978_400_000_000_000 + Int64(k) * 1_000_000_000 + Int64(s) * 1000))
        }
    }
    return out
}

public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension Log {
    /// Appends readings of any partitions, grouped per partition, in batches of `batch`.
    @discardableResult
    public func appendAll(_ readings: [Reading], batch: Int = 1000) throws -> [Int: [Reading]] {
        var groups: [Int: [Reading]] = [:]
        for r in readings { groups[partition(for: r.sensorID), default: []].append(r) }
        for (p, group) in groups {
            var i = 0
            while i < group.count {
                let end = min(i + batch, group.count)
                _ = try appendBlocking(Array(group[i..<end]), toPartition: p)
                i = end
            }
        }
        return groups
    }
}

/// Every reading of a partition, through a reader.
public func readAll(_ reader: PartitionReader) throws -> [(offset: Int64, reading: Reading)] {
    var out: [(Int64, Reading)] = []
    while let (batch, first) = try reader.next() {
        for i in first..<batch.count { out.append((batch.offset(at: i), batch.reading(at: i))) }
    }
    return out
}

/// Every batch of `partition` as its segment files hold them, in offset order.
public func storedBatches(_ dataDirectory: String, partition: Int) throws -> [[UInt8]] {
    var out: [[UInt8]] = []
    for path in segmentFiles(dataDirectory, partition: partition) {
        let file = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        var at = 0
        while at < file.count {
            let header = try file[at...].withUnsafeBytes { try BatchHeader.parse($0, maxBatchBytes: 32 << 20) }
            out.append(Array(file[at..<at + header.length]))
            at += header.length
        }
    }
    return out
}

public func segmentFiles(_ dataDirectory: String, partition: Int, suffix: String = ".log") -> [String] {
    let dir = DataLayout(dataDirectory).partition(partition).directory
    return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(suffix) }.sorted().map { dir + "/" + $0 }
}

public func fileSize(_ path: String) -> Int {
    ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int) ?? -1
}

public func oneSensorReadings(_ count: Int, sensor: String = "sensor-1", start: Int64 = 1_700_000_000_000_000_000) -> [Reading] {
    (0..<count).map { Reading(sensorID: sensor, type: "temperature", value: Double($0) / 10, location: "lab", timestamp: start + Int64($0) * 1_000_000_000) }
}

/// Readings of one sensor with random 3-decimal values, so batches do not compress to nothing
/// and small segments really roll.
public func noisyReadings(_ count: Int, sensor: String = "sensor-1", start: Int64 = 1_700_000_000_000_000_000, seed: UInt64 = 3) -> [Reading] {
    var rng = SplitMix64(seed: seed &+ UInt64(bitPattern: start))
    return (0..<count).map {
        Reading(sensorID: sensor, type: "temperature", value: Double(Int64(rng.next() % 100_000)) / 1000, location: "lab",
                timestamp: start + Int64($0) * 1_000_000_000 + Int64(rng.next() % 1000))
    }
}

/// Appends once the log takes appends again: after a failed fdatasync under `always` it refuses
/// them until the commit journal's zeroed records are synced (retried every 100 ms).
public func appendWhenAccepted(_ log: Log, _ readings: [Reading], toPartition partition: Int) throws -> AppendResult {
    let deadline = Date().addingTimeInterval(5)
    while true {
        do {
            return try log.appendBlocking(readings, toPartition: partition)
        } catch {
            if Date() >= deadline { throw error }
            Thread.sleep(forTimeInterval: 0.02)
        }
    }
}

/// How much longer than usual a test waits for something that is sure to come: its deadlines
/// only end a hung wait, so stretching them changes no verdict. `SENSORLOG_TEST_TIME_SCALE`
/// (tools/test --sanitize sets it: the sanitizers slow the code several times over), else 1.
public let testTimeScale: Double = ProcessInfo.processInfo.environment["SENSORLOG_TEST_TIME_SCALE"].flatMap(Double.init) ?? 1

/// The seed of a randomised test: `SENSORLOG_TEST_SEED` when set (to repeat a failure), else a
/// fresh one. Printed either way, so that a failing run says how to repeat it.
public func testSeed(_ test: String = #function) -> UInt64 {
    let seed = ProcessInfo.processInfo.environment["SENSORLOG_TEST_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 0...UInt64.max)
    print("\(test): seed \(seed) (SENSORLOG_TEST_SEED=\(seed) repeats it)")
    return seed
}

/// A clock a test moves by hand: wall and monotonic time advance together, only when told.
public final class ManualTime: TimeSource, @unchecked Sendable {
    private let lock = NSLock()
    private var wall: Int64
    private var monotonic: Int64 = 1_000_000_000

    public init(wall: Int64 = 1_763_978_400_000_000_000) { self.wall = wall }

    public var wallNanoseconds: Int64 { lock.withLock { wall } }
    public var monotonicNanoseconds: Int64 { lock.withLock { monotonic } }

    public func advance(by duration: Duration) {
        let n = duration / .nanoseconds(1)
        lock.withLock {
            wall += Int64(n)
            monotonic += Int64(n)
        }
    }
}

/// Runs `body` holding `dataDirectory`'s lock, as the operator tool does for maintenance.
public func withDirectoryLock<T>(_ dataDirectory: String, _ body: (DirectoryLock) throws -> T) throws -> T {
    let lock = try DirectoryLock(dataDirectory: dataDirectory)
    defer { lock.release() }
    return try body(lock)
}
