import Foundation
import SensorLogCore
import Synchronization
import TestSupport
import Testing

@testable import LogStore

/// Background compaction inside the running log (`Log.compactOnline`): small batches become
/// large ones, offsets kept, while appends go on and readers read across the swaps; every file
/// effect failing in turn leaves the log whole.
@Suite struct LiveCompactionTests {
    static let limits: Limits = {
        var limits = Limits()
        limits.partitions = 1
        limits.segmentBytes = 64 << 10
        return limits
    }()

    func open(_ path: String, _ ops: FileOperations = .system) throws -> Log {
        try Log.open(dataDirectory: path, configuration: LogConfiguration(limits: Self.limits, fsync: .never, fileOperations: ops))
    }

    /// Every record of partition 0 as "offset timestamp value".
    func records(_ log: Log, from offset: Int64 = 0) throws -> [String] {
        var out: [String] = []
        var batch = DecodedBatch()
        let reader = log.reader(partition: 0, from: offset)
        while let first = try reader.next(into: &batch) {
            guard batch.kind == .readings else { continue }
            for i in first..<batch.count { out.append("\(batch.offset(at: i)) \(batch.timestamps[i]) \(batch.values[i].bitPattern)") }
        }
        return out
    }

    @Test func smallBatchesBecomeLargeWhileAppendsAndReadersGoOn() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try open(dir.path)
        _ = try log.appendAll(noisyReadings(30_000), batch: 25)
        let before = try records(log)
        let segments = log.partitions[0].segmentCount
        let bytes = log.partitions[0].bytes
        // A reader part-way through the first segment when the swap comes.
        let early = log.reader(partition: 0, from: 0)
        var batch = DecodedBatch()
        _ = try early.next(into: &batch)
        var seen = (0..<batch.count).map { "\(batch.offset(at: $0)) \(batch.timestamps[$0]) \(batch.values[$0].bitPattern)" }

        // Readers reading the whole log again and again, and an appender, while compaction runs.
        let done = Atomic<Bool>(false)
        let mismatches = Mutex<[String]>([])
        let reads = Atomic<Int>(0)
        let readers = (0..<2).map { _ in
            Thread {
                while !done.load(ordering: .relaxed) {
                    do {
                        let got = try records(log)
                        if Array(got.prefix(before.count)) != before { mismatches.withLock { $0.append("a read differed") } }
                    } catch {
                        mismatches.withLock { $0.append("\(error)") }
                    }
                    reads.add(1, ordering: .relaxed)
                }
            }
        }
        readers.forEach { $0.start() }
        let later = noisyReadings(5000, start: 1_800_000_000_000_000_000)
        let appender = Thread { _ = try? log.appendAll(later, batch: 25) }
        appender.start()
        let result = try log.compactOnline(partition: 0, memory: CompactionMemory())
        while log.partitions[0].endOffset < Int64(before.count + later.count) { usleep(1000) }
        while reads.load(ordering: .relaxed) < 4 { usleep(1000) }
        done.store(true, ordering: .relaxed)
        while readers.contains(where: \.isExecuting) { usleep(1000) }

        #expect(mismatches.withLock { $0 }.isEmpty, "\(mismatches.withLock { $0 }.prefix(3))")
        #expect(result.runs > 0 && result.segmentsRewritten > 1 && result.bytesAfter < result.bytesBefore, "\(result)")
        #expect(log.partitions[0].segmentCount < segments + 3 && log.partitions[0].bytes < bytes)
        while let first = try early.next(into: &batch) {
            seen += (first..<batch.count).map { "\(batch.offset(at: $0)) \(batch.timestamps[$0]) \(batch.values[$0].bitPattern)" }
        }
        #expect(Array(seen.prefix(before.count)) == before, "the early reader went on across the swap")
        let all = try records(log)
        #expect(Array(all.prefix(before.count)) == before && all.count == before.count + later.count)
        // A second pass finds nothing left to do.
        let again = try log.compactOnline(partition: 0, memory: CompactionMemory())
        #expect(again.runs == 0 || again.segmentsRewritten == 1, "\(again)")
        try log.close()
        let reopened = try open(dir.path)
        #expect(try records(reopened) == all)
        try reopened.close()
        #expect(try LogDirectory(dataDirectory: dir.path).verify(partition: 0).problems.filter { $0.severity == .error }.isEmpty)
    }

    /// A sensor scan part-way through a segment when a compaction merges it with the next: the
    /// scan goes on from the merged batch that holds its position, and returns no reading twice.
    @Test func aSensorScanAcrossASwapReturnsEachReadingOnce() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try open(dir.path)
        defer { try? log.close() }
        _ = try log.appendAll(noisyReadings(12_000), batch: 25)
        try log.rollActiveSegments()
        let reader = log.reader(partition: 0, from: 0)
        var got = try reader.scan(sensorID: "sensor-1", from: .min, to: .max, limit: .max, maxBatches: 30).readings
        let compacted = try log.compactOnline(partition: 0, memory: CompactionMemory())
        #expect(compacted.runs > 0)
        while true {
            let page = try reader.scan(sensorID: "sensor-1", from: .min, to: .max, limit: .max, maxBatches: 1000)
            got += page.readings
            if page.next == nil || page.readings.isEmpty && reader.nextOffset >= log.partitions[0].endOffset { break }
        }
        #expect(got.map(\.offset) == Array(0..<12_000))
    }

    /// Backups taken again and again while a compaction swaps segments each restore to the whole
    /// log: a copy that saw the segments change is taken again.
    @Test func backupsTakenDuringACompactionRestoreWhole() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try open(dir.path)
        defer { try? log.close() }
        _ = try log.appendAll(noisyReadings(30_000), batch: 25)
        try log.rollActiveSegments()
        let before = try records(log)
        let done = Atomic<Bool>(false)
        let outcomes = Mutex<[String]>([])
        let backups = Thread {
            while !done.load(ordering: .relaxed) {
                let target = TemporaryDirectory(), restored = TemporaryDirectory()
                defer { target.cleanup(); restored.cleanup() }
                do {
                    try FileManager.default.removeItem(atPath: target.path)
                    try FileManager.default.removeItem(atPath: restored.path)
                    _ = try LogBackup.backup(dataDirectory: dir.path, to: target.path)
                    _ = try LogBackup.restore(from: target.path, into: restored.path)
                    let copy = try open(restored.path)
                    let got = try records(copy)
                    try copy.close()
                    outcomes.withLock { $0.append(got == before ? "whole" : "differs: \(got.count) records") }
                } catch {
                    outcomes.withLock { $0.append("\(error)") }
                }
            }
        }
        backups.start()
        let result = try log.compactOnline(partition: 0, memory: CompactionMemory())
        #expect(result.runs > 0)
        while outcomes.withLock({ $0.count }) < 3 { usleep(1000) }
        done.store(true, ordering: .relaxed)
        while backups.isExecuting { usleep(1000) }
        let seen = outcomes.withLock { $0 }
        #expect(seen.allSatisfy { $0 == "whole" }, "\(seen.filter { $0 != "whole" }.prefix(3))")
    }

    /// Each file effect of an online compaction fails once, in turn: the open log still reads
    /// every record, and once reopened (recovery finishes or discards the swap) too, verify clean.
    @Test func anOnlineCompactionThatFailsAnywhereLosesNothing() throws {
        let original = TemporaryDirectory()
        defer { original.cleanup() }
        let log = try open(original.path)
        _ = try log.appendAll(noisyReadings(8000), batch: 25)
        let before = try records(log)
        try log.close()
        var effects = 0
        for n in 1...300 {
            let dir = TemporaryDirectory()
            defer { dir.cleanup() }
            try FileManager.default.removeItem(atPath: dir.path)
            try FileManager.default.copyItem(atPath: original.path, toPath: dir.path)
            let plan = FaultPlan(failAt: n)
            let live = try open(dir.path, plan.operations)
            plan.arm()
            var failed = false
            do { _ = try live.compactOnline(partition: 0, memory: CompactionMemory()) } catch { failed = true }
            #expect(failed == plan.fired, "effect \(n)")
            #expect(try records(live) == before, "effect \(n): the open log")
            try? live.close()
            let reopened = try open(dir.path)
            #expect(try records(reopened) == before, "effect \(n): reopened")
            try reopened.close()
            let problems = try LogDirectory(dataDirectory: dir.path).verify(partition: 0).problems.filter { $0.severity == .error }
            #expect(problems.isEmpty, "effect \(n): \(problems)")
            if !plan.fired { break }
            effects = n
        }
        #expect(effects >= 8, "writes, syncs, index files, the manifest, renames, removals, directory syncs")
    }

    /// A deleted sensor's readings: masked for every reader of the live log at once, then gone
    /// from the files once `dropDeleted` rewrote the segments that held them (as removed records:
    /// every other reading keeps its offset), the active segment's once it closed.
    @Test func deletedReadingsAreMaskedAtOnceAndDroppedFromTheFiles() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try open(dir.path)
        let mixed = (0..<12_000).map { i in
            Reading(sensorID: "s\(i % 4)", type: "temperature", value: Double(i % 977) / 7, location: "lab",
                    timestamp: 1_700_000_000_000_000_000 + Int64(i) * 1_000_000)
        }
        _ = try log.appendAll(mixed, batch: 100)
        let kept = try records(log).count - 3_000
        let deletion = try log.appendDeletionBlocking("s1", lastReading: mixed[12_000 - 3].timestamp, toPartition: 0)
        func offline(_ sensor: String) throws -> [Int64] {
            let reader = try LogDirectory(dataDirectory: dir.path).reader(partition: 0, from: 0)
            var out: [Int64] = []
            var batch = DecodedBatch()
            while let first = try reader.next(into: &batch) {
                guard batch.kind == .readings else { continue }
                for i in first..<batch.count where batch.sensorID(at: i) == sensor { out.append(batch.offset(at: i)) }
            }
            return out
        }
        #expect(try records(log).count == kept, "masked at once for the live log's readers")
        #expect(try offline("s1").count == 3_000, "still in the files")
        let others = try offline("s2")

        try log.rollActiveSegments()
        let result = try log.dropDeleted(partition: 0)
        #expect(result.segmentsRewritten > 0 && result.bytesAfter < result.bytesBefore)
        #expect(try offline("s1").isEmpty, "gone from every segment")
        #expect(try offline("s2") == others, "the others keep their offsets")
        #expect(try records(log).count == kept)
        // Nothing left to drop: a second pass rewrites nothing.
        #expect(try log.dropDeleted(partition: 0).segmentsRewritten == 0)
        // A reading of the sensor after its deletion record is not masked.
        _ = try log.appendBlocking([Reading(sensorID: "s1", type: "humidity", value: 1, location: "lab", timestamp: 1)], toPartition: 0)
        #expect(try records(log, from: deletion.baseOffset + 1).count == 1)
        try log.close()
    }
}
