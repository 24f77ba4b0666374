import Foundation
import SensorLogCore
import TestSupport
import Testing

@testable import LogStore

@Suite struct RecoveryTests {
    func oneLimits(segmentBytes: Int = 64 << 20) -> LogConfiguration {
        var l = Limits()
        l.partitions = 1
        l.segmentBytes = segmentBytes
        return LogConfiguration(limits: l)
    }

    /// Writes batches of 50 readings; returns the file positions where each batch ends.
    func writeBatches(_ dir: String, batches: Int, configuration: LogConfiguration? = nil) throws -> [Readings] {
        let log = try Log.open(dataDirectory: dir, configuration: configuration ?? oneLimits())
        var out: [Readings] = []
        for b in 0..<batches {
            let rs = oneSensorReadings(50, start: 1_700_000_000_000_000_000 + Int64(b) * 100_000_000_000)
            _ = try log.appendBlocking(rs, toPartition: 0)
            out.append(Readings(items: rs, end: Int64(fileSize(segmentFiles(dir, partition: 0).last!))))
        }
        try log.close()
        return out
    }

    struct Readings {
        var items: [Reading]
        var end: Int64
    }

    @Test func truncatingTheLastBatchAtEveryByteRecoversThePreviousOne() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let batches = try writeBatches(dir.path, batches: 3)
        let segment = segmentFiles(dir.path, partition: 0).last!
        let original = try Data(contentsOf: URL(fileURLWithPath: segment))
        let lastStart = Int(batches[1].end)
        for cut in lastStart..<original.count {
            try original.prefix(cut).write(to: URL(fileURLWithPath: segment))
            let log = try Log.open(dataDirectory: dir.path, configuration: oneLimits())
            let r = log.partitions[0].recovery
            #expect(r.endOffset == 100, "cut at \(cut)")
            #expect(r.truncatedBytes == Int64(cut - lastStart), "cut at \(cut)")
            #expect(fileSize(segment) == lastStart)
            let back = try readAll(log.reader(partition: 0, from: 0)).map(\.reading)
            #expect(identical(back, batches[0].items + batches[1].items))
            try log.close()
        }
    }

    @Test func garbageAfterTheLastBatchIsATornTail() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        _ = try writeBatches(dir.path, batches: 2)
        let segment = segmentFiles(dir.path, partition: 0).last!
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: segment))
        handle.seekToEndOfFile()
        handle.write(Data((0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 7) }))
        handle.write(Data(count: 5000))  // a file system that extended the file with zeros
        try handle.close()
        let log = try Log.open(dataDirectory: dir.path, configuration: oneLimits())
        #expect(log.partitions[0].recovery.truncatedBytes == 8000)
        #expect(log.partitions[0].endOffset == 100)
        _ = try log.appendBlocking(oneSensorReadings(1, start: 5), toPartition: 0)
        #expect(log.partitions[0].endOffset == 101)
        try log.close()
    }

    @Test func zerosWithABatchAfterThemAreDamageNotTheEnd() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let batches = try writeBatches(dir.path, batches: 2)
        let segment = segmentFiles(dir.path, partition: 0).last!
        let bytes = try Data(contentsOf: URL(fileURLWithPath: segment))
        // A block of the first batch's tail lost to zeros, the second batch intact after it.
        var damaged = bytes
        let hole = Int(batches[0].end) - 40
        damaged.replaceSubrange(hole..<Int(batches[0].end), with: Data(count: 40))
        try damaged.write(to: URL(fileURLWithPath: segment))
        #expect(throws: LogError.self) { try Log.open(dataDirectory: dir.path, configuration: oneLimits()) }
        // Zeros between two whole batches: the second one must not be silently dropped.
        var gap = bytes.prefix(Int(batches[0].end))
        gap.append(Data(count: 4096))
        gap.append(bytes.suffix(from: Int(batches[0].end)))
        try gap.write(to: URL(fileURLWithPath: segment))
        do {
            _ = try Log.open(dataDirectory: dir.path, configuration: oneLimits())
            Issue.record("opened a segment whose zeros hide a batch")
        } catch {
            #expect(error.code == .corruptBatch)
            #expect(error.position == batches[0].end)
        }
        #expect(fileSize(segment) == gap.count, "nothing was cut away")
    }

    @Test func corruptionFollowedByValidBatchesRefusesToOpen() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let batches = try writeBatches(dir.path, batches: 4)
        let segment = segmentFiles(dir.path, partition: 0).last!
        var bytes = try Data(contentsOf: URL(fileURLWithPath: segment))
        let position = Int(batches[0].end) + 100  // inside the second batch
        bytes[position] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: segment))
        do {
            _ = try Log.open(dataDirectory: dir.path, configuration: oneLimits())
            Issue.record("opened a partition with a corrupt middle batch")
        } catch {
            #expect(error.code == .corruptBatch)
            #expect(error.path == "log/partition-000/00000000000000000000.log")
            #expect(error.position == batches[0].end)
        }
        // Nothing was cut away.
        #expect(fileSize(segment) == Int(batches[3].end))
        // The lock was released by the failed open.
        #expect(try LogDirectory(dataDirectory: dir.path).lockHolder == nil)
    }

    @Test func corruptClosedSegmentIsReportedNeverServed() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: oneLimits(segmentBytes: 64 << 10))
        for b in 0..<100 { _ = try log.appendBlocking(noisyReadings(200, start: Int64(b) * 1_000_000_000_000), toPartition: 0) }
        try log.close()
        let first = segmentFiles(dir.path, partition: 0).first!
        var bytes = try Data(contentsOf: URL(fileURLWithPath: first))
        bytes[bytes.count / 2] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: first))
        // Opening checks closed segments cheaply; a reader checks every CRC and names the file.
        let reopened = try Log.open(dataDirectory: dir.path, configuration: oneLimits(segmentBytes: 64 << 10))
        #expect {
            _ = try readAll(reopened.reader(partition: 0, from: 0))
        } throws: { error in
            let e = error as? LogError
            return e?.code == .corruptBatch && e?.path == "log/partition-000/00000000000000000000.log"
        }
        try reopened.close()
        // Read-only readers too.
        #expect(throws: LogError.self) { _ = try readAll(LogDirectory(dataDirectory: dir.path).reader(partition: 0, from: 0)) }
    }

    @Test(arguments: [".index", ".timeindex"])
    func missingOrCorruptIndexFilesAreRebuilt(suffix: String) throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: oneLimits(segmentBytes: 64 << 10))
        let all = (0..<100).flatMap { b in noisyReadings(200, start: Int64(b) * 1_000_000_000_000) }
        for b in 0..<100 { _ = try log.appendBlocking(Array(all[(b * 200)..<((b + 1) * 200)]), toPartition: 0) }
        try log.close()
        let indexes = segmentFiles(dir.path, partition: 0, suffix: suffix)
        #expect(indexes.count >= 2)
        try FileManager.default.removeItem(atPath: indexes[0])
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: indexes[1]))
        let reopened = try Log.open(dataDirectory: dir.path, configuration: oneLimits(segmentBytes: 64 << 10))
        #expect(reopened.partitions[0].recovery.rebuiltIndexes == 2)
        #expect(fileSize(indexes[0]) > 0)
        #expect(identical(try readAll(reopened.reader(partition: 0, from: 0)).map(\.reading), all))
        #expect(try readAll(reopened.reader(partition: 0, from: 12_345)).first?.offset == 12_345)
        try reopened.close()
    }

    @Test func randomFlipsInTheActiveSegmentNeverServeAlteredData() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let batches = try writeBatches(dir.path, batches: 6)
        let all = batches.flatMap(\.items)
        let segment = segmentFiles(dir.path, partition: 0).last!
        let original = try Data(contentsOf: URL(fileURLWithPath: segment))
        var rng = SplitMix64(seed: 99)
        for _ in 0..<200 {
            var bytes = original
            let position = Int(rng.next() % UInt64(bytes.count))
            bytes[position] ^= UInt8(1 + rng.next() % 255)
            try bytes.write(to: URL(fileURLWithPath: segment))
            // Read-only readers: a prefix of the original, never altered records.
            if let back = try? readAll(LogDirectory(dataDirectory: dir.path).reader(partition: 0, from: 0)).map(\.reading) {
                #expect(back.count < all.count)
                #expect(identical(back, Array(all.prefix(back.count))))
            }
            // The writer: refuses to open, or truncates a torn last batch; never serves altered data.
            if let log = try? Log.open(dataDirectory: dir.path, configuration: oneLimits()) {
                let back = try readAll(log.reader(partition: 0, from: 0)).map(\.reading)
                #expect(identical(back, Array(all.prefix(back.count))))
                #expect(back.count == 250, "only the last batch may be cut (flip at \(position))")
                try log.close()
            }
        }
    }
}

@Suite struct IOFailureTests {
    final class Faults: @unchecked Sendable {
        let lock = NSLock()
        var failWrites: Int32 = 0
        var failSyncs: Int32 = 0
        /// When set, `failSyncs` fails only the fdatasyncs of files whose path ends so.
        var failSyncsOnlyOf: String?
        var writes = 0

        func operations() -> FileOperations {
            FileOperations(
                write: { fd, bytes, offset in
                    self.lock.lock()
                    defer { self.lock.unlock() }
                    self.writes += 1
                    if self.failWrites != 0 {
                        // Write half, then fail: the worst case for leaving partial bytes behind.
                        _ = FileOperations.system.write(fd, UnsafeRawBufferPointer(rebasing: bytes[..<(bytes.count / 2)]), offset)
                        errno = self.failWrites
                        return -1
                    }
                    return FileOperations.system.write(fd, bytes, offset)
                },
                sync: { fd in
                    self.lock.lock()
                    var fail = self.failSyncs
                    if let suffix = self.failSyncsOnlyOf,
                       (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)"))?.hasSuffix(suffix) != true {
                        fail = 0
                    }
                    self.lock.unlock()
                    if fail != 0 {
                        errno = fail
                        return -1
                    }
                    return FileOperations.system.sync(fd)
                })
        }
    }

    @Test(arguments: [FsyncPolicy.always, .interval, .never])
    func diskFullLeavesTheLogAsItWasAndRecovers(policy: FsyncPolicy) throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let faults = Faults()
        var limits = Limits()
        limits.partitions = 1
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits, fsync: policy, fileOperations: faults.operations()))
        let first = oneSensorReadings(100)
        _ = try log.appendBlocking(first, toPartition: 0)
        let sizeBefore = fileSize(segmentFiles(dir.path, partition: 0)[0])
        faults.lock.lock(); faults.failWrites = ENOSPC; faults.lock.unlock()
        do {
            _ = try log.appendBlocking(oneSensorReadings(100, start: 9), toPartition: 0)
            Issue.record("append succeeded on a full disk")
        } catch {
            #expect(error.code == .diskFull)
        }
        #expect(fileSize(segmentFiles(dir.path, partition: 0)[0]) == sizeBefore)
        #expect(log.partitions[0].endOffset == 100)
        faults.lock.lock(); faults.failWrites = 0; faults.lock.unlock()
        let second = oneSensorReadings(100, start: 7_000_000_000_000)
        let r = try log.appendBlocking(second, toPartition: 0)
        #expect(r.baseOffset == 100)
        #expect(identical(try readAll(log.reader(partition: 0, from: 0)).map(\.reading), first + second))
        try log.close()
        let reopened = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits))
        #expect(reopened.partitions[0].recovery.truncatedBytes == 0)
        #expect(identical(try readAll(reopened.reader(partition: 0, from: 0)).map(\.reading), first + second))
        try reopened.close()
    }

    /// Under `interval` an append is acknowledged and visible once written; a sync round commits
    /// every partition's new appends with one fdatasync each, and a failed one is reported until
    /// a later round succeeds (the period is an hour here: the test drives the rounds).
    @Test func intervalSyncerCommitsWrittenAppendsAndReportsAFailedRound() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let faults = Faults()
        var limits = Limits()
        limits.partitions = 2
        limits.fsyncInterval = .seconds(3600)
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits, fsync: .interval, fileOperations: faults.operations()))
        let sensors = (0..<20).map { "s\($0)" }
        let first = sensors.first { log.partition(for: $0) == 0 }!, second = sensors.first { log.partition(for: $0) == 1 }!
        _ = try log.appendBlocking(oneSensorReadings(10, sensor: first), toPartition: 0)
        _ = try log.appendBlocking(oneSensorReadings(5, sensor: second), toPartition: 1)
        #expect(log.partitions[0].endOffset == 10)
        #expect(log.partitions[0].uncommitted()?.end == 10)
        log.syncRound()
        #expect(log.commitSyncs == 2)
        #expect(log.partitions[0].uncommitted() == nil && log.partitions[1].uncommitted() == nil)
        log.syncRound()
        #expect(log.commitSyncs == 2, "nothing new, nothing synced")

        faults.lock.withLock { faults.failSyncs = EIO }
        #expect(try log.appendBlocking(oneSensorReadings(10, sensor: first, start: 5), toPartition: 0).baseOffset == 10)
        log.syncRound()
        #expect(log.syncError?.errno == EIO)
        #expect(log.partitions[0].uncommitted()?.end == 20, "a failed round commits nothing")
        faults.lock.withLock { faults.failSyncs = 0 }
        log.syncRound()
        #expect(log.syncError == nil)
        #expect(log.partitions[0].uncommitted() == nil)
        try log.close()
    }

    @Test func failedFsyncUnderAlwaysFailsTheAppendAndHidesIt() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let faults = Faults()
        var limits = Limits()
        limits.partitions = 1
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits, fsync: .always, fileOperations: faults.operations()))
        let first = oneSensorReadings(10)
        _ = try log.appendBlocking(first, toPartition: 0)
        faults.lock.lock(); faults.failSyncs = EIO; faults.lock.unlock()
        #expect(throws: LogError.self) { try log.appendBlocking(oneSensorReadings(10, start: 5), toPartition: 0) }
        #expect(log.partitions[0].endOffset == 10)
        #expect(log.syncError?.errno == EIO)
        faults.lock.lock(); faults.failSyncs = 0; faults.lock.unlock()
        let second = oneSensorReadings(10, start: 8_000_000_000_000)
        #expect(try appendWhenAccepted(log, second, toPartition: 0).baseOffset == 10)
        #expect(identical(try readAll(log.reader(partition: 0, from: 0)).map(\.reading), first + second))
        try log.close()
    }
}
