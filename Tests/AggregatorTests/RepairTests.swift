import Aggregator
import Foundation
import Ingest
import LogStore
import Logging
import SensorLogCore
import TestSupport
import Testing

/// `verify --repair` keeps "aggregates = the fold of the log": after a salvage, resends of the
/// lost readings are taken once and counted once.
@Suite struct RepairTests {
    static let readings: [Reading] = (0..<40_000).map(reading)

    static func reading(_ i: Int) -> Reading {
        // Values that do not compress to nothing, so that 64 KiB segments roll.
        let value = Double(i * 7919 % 100_003) / 1000
        let timestamp: Int64 = 1_763_978_400_000_000_000 + Int64(i / 100) * 1_000_000_000 + Int64(i % 100)
        return Reading(sensorID: "s\(i % 100)", type: "temperature", value: value, location: "lab", timestamp: timestamp)
    }

    func open(_ path: String) async throws -> (Log, IngestPipeline) {
        var limits = Limits()
        limits.partitions = 1
        limits.segmentBytes = limits.minSegmentBytes
        let log = try Log.open(dataDirectory: path, configuration: LogConfiguration(limits: limits, fsync: .interval))
        return (log, try await IngestPipeline(log: log, validator: ReadingValidator(limits: limits), metrics: IngestMetrics()))
    }

    /// Sends `readings` in batches; returns how many were appended (not duplicates).
    func send(_ readings: [Reading], to pipeline: IngestPipeline) async throws -> Int {
        var appended = 0
        for chunk in stride(from: 0, to: readings.count, by: 1000) {
            let outcomes = try await pipeline.submit(Array(readings[chunk..<min(chunk + 1000, readings.count)]), via: .tcp)
            appended += outcomes.filter { if case .appended = $0 { true } else { false } }.count
        }
        return appended
    }

    /// Runs the live aggregator until it has committed the whole log, then stops it.
    func aggregate(_ log: Log) async throws {
        let service = try AggregatorService(log: log, logger: Logger(label: "test"), commitInterval: .milliseconds(5))
        let task = Task { try await service.run() }
        let deadline = ContinuousClock.now + .seconds(60 * testTimeScale)
        while service.committedOffsets != log.partitions.map(\.endOffset) {
            try #require(ContinuousClock.now < deadline)
            try await Task.sleep(for: .milliseconds(5))
        }
        task.cancel()  // ends its graceful-shutdown wait: it commits and stops
        try await task.value
    }

    func counts(_ path: String) throws -> [String: Int64] {
        Dictionary(uniqueKeysWithValues: try AggregateStore(path: path + "/" + AggregateStore.fileName, readOnly: true).allAggregates()
            .map { ($0.sensorID + "|" + $0.hourBucket, $0.count) })
    }

    func verify(_ directory: LogDirectory) throws -> [PartitionVerification] {
        try (0..<directory.partitionCount).map { try directory.verify(partition: $0) }
    }

    @Test func salvageRebuildsTheAggregatesSoResendsHealTheGapExactlyOnce() async throws {
        let path = NSTemporaryDirectory() + "sensorlog-repair-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: path) }
        var (log, pipeline) = try await open(path)
        #expect(try await send(Self.readings, to: pipeline) == Self.readings.count)
        try await aggregate(log)
        try log.close()
        let before = try counts(path)

        // A flipped byte in the middle of the first (closed) segment.
        let directory = try LogDirectory(dataDirectory: path)
        let bases = try directory.segmentBases(partition: 0)
        try #require(bases.count >= 2)
        let victim = DataLayout(path).partition(0).directory + "/" + String(format: "%020lld", bases[0]) + ".log"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: victim))
        bytes[bytes.count / 2] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: victim))

        // Verify's progress covers every byte of the log, the damaged ones too: a bar ends at 100 %.
        var read: Int64 = 0
        _ = try directory.verify(partition: 0) { read += $0 }
        #expect(read == AggregateRebuild.logBytes(path))

        let outcome = try withDirectoryLock(path) { try LogRepair.run(directory, found: try verify(directory), held: $0) }
        #expect(outcome.failed.isEmpty)
        #expect(outcome.done.contains { $0.hasPrefix(AggregateStore.fileName) })
        #expect(try verify(directory).flatMap(\.problems).isEmpty)  // index files rebuilt too
        #expect(!AggregateRebuild.isPending(dataDirectory: path))

        // The store is the fold of the repaired log, which lost readings.
        let check = path + "/check.sqlite"
        _ = try AggregateRebuild.build(dataDirectory: path, output: check)
        func strip(_ a: [Aggregate]) -> [Aggregate] { a.map { var x = $0; x.lastUpdated = ""; return x } }
        #expect(try strip(AggregateStore(path: path + "/" + AggregateStore.fileName, readOnly: true).allAggregates())
                    == strip(AggregateStore(path: check, readOnly: true).allAggregates()))
        let lost = before.values.reduce(0, +) - (try counts(path)).values.reduce(0, +)
        #expect(lost > 0)

        // Every producer resends everything: exactly the lost readings are taken, counted once.
        (log, pipeline) = try await open(path)
        #expect(try await send(Self.readings, to: pipeline) == Int(lost))
        try await aggregate(log)
        try log.close()
        #expect(try counts(path) == before)
    }

    @Test func anInterruptedRepairIsFinishedByTheNextOne() async throws {
        let path = NSTemporaryDirectory() + "sensorlog-repair-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (log, pipeline) = try await open(path)
        _ = try await send(Array(Self.readings.prefix(5000)), to: pipeline)
        try await aggregate(log)
        try log.close()
        let directory = try LogDirectory(dataDirectory: path)
        // As a repair leaves it when it stops after changing a segment, before the rebuild.
        try AggregateRebuild.markPending(dataDirectory: path)
        #expect(try verify(directory).flatMap(\.problems).isEmpty)  // the log itself is fine
        // Verify's progress covers every byte of the log, the damaged ones too: a bar ends at 100 %.
        var read: Int64 = 0
        _ = try directory.verify(partition: 0) { read += $0 }
        #expect(read == AggregateRebuild.logBytes(path))

        let outcome = try withDirectoryLock(path) { try LogRepair.run(directory, found: try verify(directory), held: $0) }
        #expect(outcome.failed.isEmpty && outcome.done.count == 1)
        #expect(!AggregateRebuild.isPending(dataDirectory: path))
    }

    /// Each file effect of the rebuild's swap fails in turn (EIO through `FileOperations`): the
    /// store left is the old one or the new one, whole, and the next rebuild finishes the job.
    @Test func aRebuildThatFailsAnywhereLeavesAWholeStoreAndCanBeRedone() async throws {
        let path = NSTemporaryDirectory() + "sensorlog-rebuild-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (log, pipeline) = try await open(path)
        _ = try await send(Array(Self.readings.prefix(5000)), to: pipeline)
        try await aggregate(log)
        try log.close()
        let before = try counts(path)
        var effects = 0
        for n in 1...50 {
            try AggregateRebuild.markPending(dataDirectory: path)
            let plan = FaultPlan(failAt: n)
            plan.arm()
            var failed = false
            do {
                _ = try withDirectoryLock(path) { try AggregateRebuild.rebuildInPlace(dataDirectory: path, held: $0, plan.operations) }
            } catch {
                failed = true
            }
            #expect(failed == plan.fired, "effect \(n)")
            #expect(try counts(path) == before, "effect \(n): the store is whole")
            // Only the last effect (syncing the marker's removal) fails with the marker gone.
            if !failed { #expect(!AggregateRebuild.isPending(dataDirectory: path)) }
            if !plan.fired { break }
            effects = n
        }
        #expect(effects >= 6, "removes of leftovers and WAL files, the rename, the marker's removal, directory syncs")
        _ = try withDirectoryLock(path) { try AggregateRebuild.rebuildInPlace(dataDirectory: path, held: $0) }
        #expect(!AggregateRebuild.isPending(dataDirectory: path))
        #expect(try counts(path) == before)
    }
}
