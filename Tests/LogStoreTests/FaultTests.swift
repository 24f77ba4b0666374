import Foundation
import SensorLogCore
import TestSupport
import Testing

@testable import LogStore

/// Every file effect of a roll, a compaction, a salvage and retention fails once, in turn (EIO
/// from the `FileOperations` seam); after each, the directory opens and holds what it held,
/// and the operation redone without the fault finishes the job.
@Suite struct FaultTests {
    static let limits: Limits = {
        var limits = Limits()
        limits.partitions = 1
        limits.segmentBytes = 64 << 10
        return limits
    }()

    /// A one-partition log of 64 KiB segments, several closed; returns its records.
    func makeLog(_ path: String, readings: Int = 30_000) throws -> [String] {
        let log = try Log.open(dataDirectory: path, configuration: LogConfiguration(limits: Self.limits, fsync: .never))
        try log.appendAll(noisyReadings(readings), batch: 500)
        try log.close()
        return try records(path)
    }

    /// Every record of partition 0 with its offset, removed offsets included.
    func records(_ path: String) throws -> [String] {
        let log = try Log.open(dataDirectory: path, configuration: LogConfiguration(limits: Self.limits, fsync: .never))
        defer { try? log.close() }
        var out: [String] = []
        var batch = DecodedBatch()
        let reader = log.reader(partition: 0, from: 0)
        while let first = try reader.next(into: &batch) {
            for i in first..<batch.count {
                while Int64(out.count) < batch.offset(at: i) { out.append("\(out.count) removed") }
                out.append("\(batch.offset(at: i)) \(batch.timestamps[i]) \(batch.values[i].bitPattern)")
            }
            while Int64(out.count) < batch.nextOffset { out.append("\(out.count) removed") }
        }
        return out
    }

    func errors(_ path: String) throws -> [VerifyProblem] {
        try LogDirectory(dataDirectory: path).verify(partition: 0).problems.filter { $0.severity == .error }
    }

    func copy(_ from: String) throws -> TemporaryDirectory {
        let dir = TemporaryDirectory()
        try FileManager.default.removeItem(atPath: dir.path)
        try FileManager.default.copyItem(atPath: from, toPath: dir.path)
        return dir
    }

    /// Runs `operation` under plans 1, 2, … (each on a fresh copy of `original`) until a plan
    /// never fires, calling `check` after each; returns how many effects the operation has.
    func eachEffectFails(_ original: String, _ operation: (String, FileOperations) throws -> Void,
                         check: (String, _ failed: Bool) throws -> Void) throws -> Int {
        for n in 1...500 {
            let dir = try copy(original)
            defer { dir.cleanup() }
            let plan = FaultPlan(failAt: n)
            plan.arm()
            var failed = false
            do { try operation(dir.path, plan.operations) } catch { failed = true }
            #expect(failed == plan.fired, "effect \(n): the operation \(failed ? "failed" : "succeeded") though the fault \(plan.fired ? "fired" : "did not fire")")
            try check(dir.path, failed)
            if !plan.fired { return n - 1 }
        }
        Issue.record("more than 500 effects")
        return 500
    }

    @Test func aRollWhoseIndexWriteFailsLosesNothing() throws {
        let original = TemporaryDirectory()
        defer { original.cleanup() }
        let before = try makeLog(original.path, readings: 12_000)
        let effects = try eachEffectFails(original.path, { path, ops in
            let log = try Log.open(dataDirectory: path, configuration: LogConfiguration(limits: Self.limits, fsync: .interval, fileOperations: ops))
            do {
                try log.rollActiveSegments()
            } catch {
                try? log.close()
                throw error
            }
            try log.close()
        }, check: { path, _ in
            let after = try records(path)
            #expect(after == before)
            let problems = try errors(path)
            #expect(problems.isEmpty)
        })
        #expect(effects >= 6, "a roll syncs, writes two index files (write, fsync, rename, directory sync) and syncs the directory")
    }

    @Test func aCompactionThatFailsAnywhereLeavesTheOldOrTheNew() throws {
        let original = TemporaryDirectory()
        defer { original.cleanup() }
        let before = try makeLog(original.path)
        let effects = try eachEffectFails(original.path, { path, ops in
            _ = try withDirectoryLock(path) { try Compactor.compact(dataDirectory: path, held: $0, targetSegmentBytes: 1 << 20, limits: Self.limits, fileOperations: ops) }
        }, check: { path, _ in
            // Opening finishes or discards the interrupted swap.
            let after = try records(path)
            #expect(after == before)
            let problems = try errors(path)
            #expect(problems.isEmpty)
            let again = try withDirectoryLock(path) { try Compactor.compact(dataDirectory: path, held: $0, targetSegmentBytes: 1 << 20, limits: Self.limits) }
            let compacted = try records(path)
            #expect(again.segmentsAfter == 2 && compacted == before)
        })
        #expect(effects >= 10)
    }

    @Test func aSalvageThatFailsAnywhereCanBeRedone() throws {
        let original = TemporaryDirectory()
        defer { original.cleanup() }
        _ = try makeLog(original.path)
        let victim = segmentFiles(original.path, partition: 0)[0]
        var bytes = try Data(contentsOf: URL(fileURLWithPath: victim))
        bytes[bytes.count / 2] ^= 0x10
        try bytes.write(to: URL(fileURLWithPath: victim))
        // What a repair without faults keeps.
        let reference = try copy(original.path)
        defer { reference.cleanup() }
        let found = try LogDirectory(dataDirectory: reference.path).verify(partition: 0)
        let referenceRepair = try withDirectoryLock(reference.path) { try LogDirectory(dataDirectory: reference.path).repair(found, held: $0) }
        #expect(referenceRepair.failed.isEmpty)
        let repaired = try records(reference.path)
        let effects = try eachEffectFails(original.path, { path, ops in
            let directory = try LogDirectory(dataDirectory: path, fileOperations: ops)
            let outcome = try withDirectoryLock(path) { directory.repair(try directory.verify(partition: 0), held: $0) }
            if let failure = outcome.failed.first { throw LogError(.io, failure) }
        }, check: { path, _ in
            let directory = try LogDirectory(dataDirectory: path)
            let outcome = try withDirectoryLock(path) { directory.repair(try directory.verify(partition: 0), held: $0) }
            #expect(outcome.failed.isEmpty)
            let after = try records(path)
            #expect(after == repaired)
            let problems = try errors(path)
            #expect(problems.isEmpty)
        })
        #expect(effects >= 6)
    }

    @Test func retentionThatFailsAnywhereNeverLeavesDeletedReadingsWithoutTheirFloor() throws {
        let original = TemporaryDirectory()
        defer { original.cleanup() }
        let before = try makeLog(original.path)
        let plan = try Retention.plan(LogDirectory(dataDirectory: original.path), olderThan: nil, maxBytes: 100_000)
        try #require(!plan.isEmpty)
        let effects = try eachEffectFails(original.path, { path, ops in
            try withDirectoryLock(path) { try Retention.apply(plan, dataDirectory: path, partitions: 1, held: $0, fileOperations: ops) }
        }, check: { path, _ in
            let after = try records(path)
            let start = try LogDirectory(dataDirectory: path).startOffset(partition: 0)
            #expect(Array(before[Int(start)...]) == Array(after[Int(start)...]))
            if start > 0 {
                let floor = try #require(try Retention.floors(dataDirectory: path, partitions: 1)[0])
                #expect(floor >= plan.filter { $0.endOffset <= start }.map(\.maxTimestamp).max()!)
            }
            let problems = try errors(path)
            #expect(problems.isEmpty)
        })
        #expect(effects >= 5)
    }
}
