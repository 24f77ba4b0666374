import Foundation
import SensorLogCore
import TestSupport
import Testing

@testable import LogStore

@Suite struct CompactionTests {
    static var toolURL: URL { CrashTests.childURL.deletingLastPathComponent().appendingPathComponent("sensorlog") }

    func makeLog(_ path: String) throws -> [Int: [Reading]] {
        var limits = Limits()
        limits.partitions = 2
        limits.segmentBytes = 64 << 10
        let log = try Log.open(dataDirectory: path, configuration: LogConfiguration(limits: limits, fsync: .never))
        var all: [Reading] = []
        for k in 0..<500 {
            all += (0..<6).flatMap { s in noisyReadings(40, sensor: "c\(s)", start: 1_700_000_000_000_000_000 + Int64(k) * 40_000_000_000, seed: UInt64(k * 7 + s)) }
        }
        let groups = try log.appendAll(all, batch: 60)
        _ = try log.appendDeletionBlocking("c0", lastReading: 0, toPartition: log.partition(for: "c0"))
        try log.close()
        return groups
    }

    func contents(_ path: String) throws -> [[String]] {
        let files = try LogDirectory(dataDirectory: path)
        return try (0..<2).map { p in
            var out: [String] = []
            var batch = DecodedBatch()
            let reader = files.reader(partition: p, from: 0)
            while let first = try reader.next(into: &batch) {
                for i in first..<batch.count {
                    // Removed records inside a sparse batch are offsets without a record.
                    while Int64(out.count) < batch.offset(at: i) { out.append("\(out.count) removed") }
                    switch batch.kind {
                    case .readings:
                        out.append("\(batch.offset(at: i)) \(batch.reading(at: i).sensorID) \(batch.timestamps[i]) \(batch.values[i].bitPattern)")
                    case .sensorDeletions: out.append("\(batch.offset(at: i)) delete \(batch.sensorID(at: i))")
                    case .removed: out.append("\(batch.offset(at: i)) removed")
                    case .sparseReadings: Issue.record("a decoded batch reports its records' kind")
                    }
                }
                while Int64(out.count) < batch.nextOffset { out.append("\(out.count) removed") }
            }
            return out
        }
    }

    /// `after` is `before` with some readings of the deleted sensor c0 (before its deletion
    /// record) replaced by removed records, and nothing else changed: what compaction may do.
    func isCompactionOf(_ after: [[String]], _ before: [[String]]) -> Bool {
        guard after.count == before.count else { return false }
        for (a, b) in zip(after, before) {
            guard a.count == b.count else { return false }
            let deletedAt = b.firstIndex { $0.hasSuffix(" delete c0") } ?? Int.max
            for (i, (x, y)) in zip(a, b).enumerated() where x != y {
                guard x == "\(i) removed", i < deletedAt, y.split(separator: " ")[1] == "c0" else { return false }
            }
        }
        return true
    }

    @Test func compactionMergesSegmentsAndKeepsEveryRecordAndOffset() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        _ = try makeLog(dir.path)
        let before = try contents(dir.path)
        let segmentsBefore = segmentFiles(dir.path, partition: 0).count + segmentFiles(dir.path, partition: 1).count
        let result = try withDirectoryLock(dir.path) { try Compactor.compact(dataDirectory: dir.path, held: $0, targetSegmentBytes: 1 << 20) }
        #expect(result.segmentsAfter < segmentsBefore)
        #expect(segmentFiles(dir.path, partition: 0).count + segmentFiles(dir.path, partition: 1).count == result.segmentsAfter)
        let after = try contents(dir.path)
        #expect(isCompactionOf(after, before))
        #expect(after != before, "readings of the deleted sensor in closed segments are dropped")
        let verify = try (0..<2).map { try LogDirectory(dataDirectory: dir.path).verify(partition: $0) }
        #expect(verify.allSatisfy { $0.problems.allSatisfy { $0.severity != .error } })
        // The log opens and appends after compaction.
        var limits = Limits()
        limits.partitions = 2
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits))
        _ = try log.appendBlocking(oneSensorReadings(3, sensor: "after"), toPartition: log.partition(for: "after"))
        try log.close()
    }

    /// Batches per partition, and whether any is a sparse one.
    func batchCounts(_ path: String) throws -> (batches: Int, sparse: Int) {
        let files = try LogDirectory(dataDirectory: path)
        var batches = 0
        var sparse = 0
        for p in 0..<files.partitionCount {
            let reader = files.reader(partition: p, from: 0)
            while let raw = try reader.nextRaw() {
                batches += 1
                if raw.header.kind == .sparseReadings { sparse += 1 }
            }
        }
        return (batches, sparse)
    }

    @Test func deletingASensorDoesNotSplitBatches() throws {
        // Few large batches, one sensor among many deleted: compaction drops its readings inside
        // the batches (sparse batches), so the batch count does not grow, and a second
        // compaction finds nothing to do.
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        var limits = Limits()
        limits.partitions = 2
        limits.segmentBytes = 64 << 10
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits, fsync: .never))
        let readings = standardWorkload(seconds: 600, sensors: 400)
        _ = try log.appendAll(readings, batch: 4000)
        _ = try log.appendDeletionBlocking("sensor-00007", lastReading: 0, toPartition: log.partition(for: "sensor-00007"))
        try log.close()
        let before = try contents(dir.path)
        let (batchesBefore, _) = try batchCounts(dir.path)
        _ = try withDirectoryLock(dir.path) { try Compactor.compact(dataDirectory: dir.path, held: $0, targetSegmentBytes: 1 << 20) }
        let after = try contents(dir.path)
        let changed = zip(after.joined(), before.joined()).filter { $0 != $1 }
        #expect(!changed.isEmpty && changed.allSatisfy { $0.0.hasSuffix(" removed") && $0.1.contains(" sensor-00007 ") })
        #expect(after.map(\.count) == before.map(\.count))
        let (batchesAfter, sparse) = try batchCounts(dir.path)
        #expect(sparse > 0)
        #expect(batchesAfter <= batchesBefore, "\(batchesBefore) batches became \(batchesAfter)")
        let again = try withDirectoryLock(dir.path) { try Compactor.compact(dataDirectory: dir.path, held: $0, targetSegmentBytes: 1 << 20) }
        #expect(again.bytesBefore == 0, "a second compaction rewrote \(again.bytesBefore) bytes")
        #expect(try contents(dir.path) == after)
        // Readers that start inside a sparse batch resume at the right record.
        let files = try LogDirectory(dataDirectory: dir.path)
        let p = files.views.indices.first { !after[$0].isEmpty }!
        let live = after[p].enumerated().filter { !$0.element.hasSuffix(" removed") }
        for (offset, line) in live.prefix(400).dropFirst(37) where offset % 13 == 0 {
            var batch = DecodedBatch()
            let first = try #require(try files.reader(partition: p, from: Int64(offset)).next(into: &batch))
            #expect("\(batch.offset(at: first)) \(batch.reading(at: first).sensorID)" == line.split(separator: " ").prefix(2).joined(separator: " "))
        }
        #expect(try (0..<2).allSatisfy { try files.verify(partition: $0).problems.allSatisfy { $0.severity != .error } })
    }

    @Test(.timeLimit(.minutes(3)))
    func killNineDuringCompactionLeavesOldOrNewNeverAMix() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.toolURL.path), "build the sensorlog tool first (swift build)")
        let original = TemporaryDirectory()
        defer { original.cleanup() }
        _ = try makeLog(original.path)
        let expected = try contents(original.path)
        var rng = SplitMix64(seed: testSeed())
        // How long an uninterrupted compaction takes, to spread the kills over it.
        let probe = TemporaryDirectory()
        defer { probe.cleanup() }
        try FileManager.default.removeItem(atPath: probe.path)
        try FileManager.default.copyItem(atPath: original.path, toPath: probe.path)
        let t0 = Date()
        let whole = Process()
        whole.executableURL = Self.toolURL
        whole.arguments = ["compact", "--data-dir", probe.path, "--target-segment-bytes", "1048576"]
        whole.standardOutput = FileHandle.nullDevice
        try whole.run()
        whole.waitUntilExit()
        #expect(whole.terminationStatus == 0)
        let duration = Date().timeIntervalSince(t0)

        for round in 0..<20 {
            let dir = TemporaryDirectory()
            defer { dir.cleanup() }
            try FileManager.default.removeItem(atPath: dir.path)
            try FileManager.default.copyItem(atPath: original.path, toPath: dir.path)
            let child = Process()
            child.executableURL = Self.toolURL
            child.arguments = ["compact", "--data-dir", dir.path, "--target-segment-bytes", "1048576"]
            child.standardOutput = FileHandle.nullDevice
            child.standardError = FileHandle.nullDevice
            try child.run()
            usleep(UInt32(Double(rng.next() % 1000) / 1000 * duration * 1.2 * 1e6))
            kill(child.processIdentifier, SIGKILL)
            child.waitUntilExit()
            // Opening finishes or discards the interrupted swap; then every record is there once.
            var limits = Limits()
            limits.partitions = 2
            let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits))
            try log.close()
            #expect(isCompactionOf(try contents(dir.path), expected), "round \(round)")
            let problems = try (0..<2).flatMap { try LogDirectory(dataDirectory: dir.path).verify(partition: $0).problems }
            #expect(problems.allSatisfy { $0.severity != .error }, "round \(round): \(problems)")
        }
    }
}
