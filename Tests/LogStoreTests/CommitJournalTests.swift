import Foundation
import SensorLogCore
import TestSupport
import Testing

@testable import LogStore

/// The commit journal under `--fsync always`: what it acknowledged survives the loss of every
/// unsynced segment write. A power cut is simulated by copying the data directory while the log
/// is open (the journal is synced, the segments only written) and damaging the copy's segments.
@Suite struct CommitJournalTests {
    let start: Int64 = 1_700_000_000_000_000_000

    func configuration(partitions: Int, fsync: FsyncPolicy = .always, journalBytes: Int? = nil) -> LogConfiguration {
        var l = Limits()
        l.partitions = partitions
        if let journalBytes { l.commitJournalBytes = journalBytes }
        return LogConfiguration(limits: l, fsync: fsync)
    }

    /// One sensor name per partition.
    func sensors(_ log: Log) -> [String] {
        (0..<log.partitions.count).map { p in (0...).lazy.map { "sensor-\($0)" }.first { log.partition(for: $0) == p }! }
    }

    /// Appends `batches` batches of `size` readings, alternating partitions; returns each
    /// partition's readings in order.
    func append(_ log: Log, batches: Int, size: Int) throws -> [[Reading]] {
        let names = sensors(log)
        var expected = [[Reading]](repeating: [], count: log.partitions.count)
        for b in 0..<batches {
            let p = b % log.partitions.count
            let rs = oneSensorReadings(size, sensor: names[p], start: start + Int64(b) * 1_000_000_000_000)
            _ = try log.appendBlocking(rs, toPartition: p)
            expected[p] += rs
        }
        return expected
    }

    /// Two partitions under `always` with 64 KiB journal files, through injectable faults.
    func openSmallJournalWithFaults(_ dir: TemporaryDirectory) throws -> (Log, IOFailureTests.Faults) {
        let faults = IOFailureTests.Faults()
        var l = Limits()
        l.partitions = 2
        l.commitJournalBytes = 64 << 10
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: l, fsync: .always, fileOperations: faults.operations()))
        return (log, faults)
    }

    /// Where the journal file's record number `record` starts (records are back to back).
    func recordStart(_ bytes: Data, record: Int) -> Int {
        var at = 0
        for _ in 0..<record {
            let length = bytes[(at + 20)..<(at + 24)].withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) }
            at += CommitJournal.headerSize + length
        }
        return at
    }

    func snapshot(_ dir: TemporaryDirectory) throws -> TemporaryDirectory {
        let copy = TemporaryDirectory()
        try FileManager.default.removeItem(atPath: copy.path)
        try FileManager.default.copyItem(atPath: dir.path, toPath: copy.path)
        return copy
    }

    func expectContents(_ log: Log, _ expected: [[Reading]], sourceLocation: SourceLocation = #_sourceLocation) throws {
        for (p, readings) in expected.enumerated() {
            let stored = try readAll(log.reader(partition: p, from: 0))
            #expect(stored.map(\.offset) == Array(0..<Int64(readings.count)), sourceLocation: sourceLocation)
            #expect(identical(stored.map(\.reading), readings), "partition \(p)", sourceLocation: sourceLocation)
        }
    }

    @Test func acknowledgedAppendsLostFromTheSegmentsComeBackFromTheJournal() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: configuration(partitions: 2))
        let expected = try append(log, batches: 40, size: 20)
        let crashed = try snapshot(dir)
        defer { crashed.cleanup() }
        try log.close()

        // Partition 0 lost every segment write; partition 1 a block in the middle, and its tail
        // holds garbage.
        #expect(truncate(segmentFiles(crashed.path, partition: 0).last!, 0) == 0)
        let segment = segmentFiles(crashed.path, partition: 1).last!
        var bytes = try Data(contentsOf: URL(fileURLWithPath: segment))
        let middle = bytes.count / 2
        bytes.replaceSubrange(middle..<(middle + 100), with: Data(count: 100))
        bytes.append(Data((0..<300).map { UInt8(truncatingIfNeeded: $0 &* 7) }))
        try bytes.write(to: URL(fileURLWithPath: segment))

        // Replayed whatever policy the log is opened with.
        let recovered = try Log.open(dataDirectory: crashed.path, configuration: configuration(partitions: 2, fsync: .interval))
        #expect(recovered.partitions[0].recovery.journalBatches == 20)
        #expect(recovered.partitions[1].recovery.journalBatches > 0)
        #expect(recovered.partitions[1].recovery.journalBatches < 20)
        #expect(recovered.partitions[1].recovery.truncatedBytes > 0)
        try expectContents(recovered, expected)
        try recovered.close()

        let again = try Log.open(dataDirectory: crashed.path, configuration: configuration(partitions: 2))
        #expect(again.partitions.allSatisfy { $0.recovery.journalBatches == 0 && $0.recovery.truncatedBytes == 0 })
        try expectContents(again, expected)
        try again.close()
    }

    @Test func anIntactSegmentIsCheckedNotRewritten() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: configuration(partitions: 2))
        let expected = try append(log, batches: 30, size: 7)
        let crashed = try snapshot(dir)
        defer { crashed.cleanup() }
        try log.close()
        let recovered = try Log.open(dataDirectory: crashed.path, configuration: configuration(partitions: 2))
        #expect(recovered.partitions.allSatisfy { $0.recovery.journalBatches == 0 && $0.recovery.truncatedBytes == 0 })
        try expectContents(recovered, expected)
        try recovered.close()
    }

    @Test func replayStopsAtATornJournalRecord() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: configuration(partitions: 2))
        let expected = try append(log, batches: 40, size: 10)
        let crashed = try snapshot(dir)
        defer { crashed.cleanup() }
        try log.close()

        // Corrupt the record of batch 30 (each batch is one record, in append order).
        let journal = crashed.path + "/log/" + DataLayout.journalNames[0]
        var bytes = try Data(contentsOf: URL(fileURLWithPath: journal))
        let at = recordStart(bytes, record: 30)
        bytes[at + CommitJournal.headerSize + 60] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: journal))
        for p in 0..<2 { #expect(truncate(segmentFiles(crashed.path, partition: p).last!, 0) == 0) }

        let recovered = try Log.open(dataDirectory: crashed.path, configuration: configuration(partitions: 2))
        // Batches 0..<30 alternate partitions: 15 each, 150 readings each.
        try expectContents(recovered, expected.map { Array($0.prefix(150)) })
        try recovered.close()
    }

    @Test func retiredJournalFilesStayTheirSizeAndHoldOnlyTheCurrentLap() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let config = configuration(partitions: 2, journalBytes: 64 << 10)
        let log = try Log.open(dataDirectory: dir.path, configuration: config)
        let batches = 3000
        let expected = try append(log, batches: batches, size: 5)
        for name in DataLayout.journalNames {
            #expect(fileSize(dir.path + "/log/" + name) <= 64 << 10, "\(name) grew past its zeros")
        }
        let crashed = try snapshot(dir)
        defer { crashed.cleanup() }
        try log.close()

        // What the journal holds is contiguous per partition and only since the last retirement.
        let journal = try CommitJournal(layout: DataLayout(crashed.path), limitBytes: 64 << 10, fileOperations: .system, onSync: nil)
        let records = try journal.records(partitions: 2, maxBatchBytes: Limits().maxBatchBytes)
        var total = 0
        for (p, batches) in records {
            total += batches.count
            for (a, b) in zip(batches, batches.dropFirst()) { #expect(b.baseOffset == a.nextOffset) }
            #expect(batches.last?.nextOffset == Int64(expected[p].count))
        }
        #expect(total > 0 && total < batches / 2, "\(total) records of \(batches) batches")

        // A segment cut below the last checkpoint lost synced records the journal no longer has:
        // the journal's records past the gap are not replayed, and the gap is reported.
        #expect(truncate(segmentFiles(crashed.path, partition: 0).last!, 0) == 0)
        let damaged = try Log.open(dataDirectory: crashed.path, configuration: config)
        #expect(damaged.partitions[0].recovery.journalGap != nil)
        #expect(damaged.partitions[0].endOffset == 0)
        #expect(damaged.partitions[1].recovery.journalGap == nil)
        try expectContents(damaged, [[], expected[1]])
        try damaged.close()
    }

    @Test func aFailedJournalSyncNeverComesBackAfterACrash() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let faults = IOFailureTests.Faults()
        var l = Limits()
        l.partitions = 2
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: l, fsync: .always, fileOperations: faults.operations()))
        let expected = try append(log, batches: 10, size: 5)
        let names = sensors(log)
        faults.lock.lock(); faults.failSyncs = EIO; faults.lock.unlock()
        for p in 0..<2 {
            #expect(throws: LogError.self) {
                try log.appendBlocking(oneSensorReadings(5, sensor: names[p], start: start + 900_000_000_000_000), toPartition: p)
            }
        }
        #expect(log.syncError?.errno == EIO)
        faults.lock.lock(); faults.failSyncs = 0; faults.lock.unlock()
        // The power goes before anything else is written: the refused batches' journal records
        // were zeroed, and their segment bytes cut.
        let crashed = try snapshot(dir)
        defer { crashed.cleanup() }
        // Retried once the disk is back, they land at the offsets the refused ones had.
        var later: [[Reading]] = [[], []]
        for p in 0..<2 {
            let rs = oneSensorReadings(3, sensor: names[p], start: start + 800_000_000_000_000)
            #expect(try appendWhenAccepted(log, rs, toPartition: p).baseOffset == Int64(expected[p].count))
            later[p] = rs
        }
        #expect(log.syncError == nil)
        try log.close()

        let recovered = try Log.open(dataDirectory: crashed.path, configuration: configuration(partitions: 2))
        try expectContents(recovered, expected)
        try recovered.close()
        let reopened = try Log.open(dataDirectory: dir.path, configuration: configuration(partitions: 2))
        try expectContents(reopened, zip(expected, later).map { $0 + $1 })
        try reopened.close()
    }

    @Test func batchesASegmentHasBeyondTheJournalAreKept() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: configuration(partitions: 1))
        let expected = try append(log, batches: 10, size: 4)
        // `Log.flush` synced the segment; the journal's last five records never reached the disk.
        try log.flush()
        let crashed = try snapshot(dir)
        defer { crashed.cleanup() }
        try log.close()
        let journal = crashed.path + "/log/" + DataLayout.journalNames[0]
        var bytes = try Data(contentsOf: URL(fileURLWithPath: journal))
        let at = recordStart(bytes, record: 5)
        bytes.replaceSubrange(at..<(at + CommitJournal.headerSize), with: Data(count: CommitJournal.headerSize))
        try bytes.write(to: URL(fileURLWithPath: journal))

        let recovered = try Log.open(dataDirectory: crashed.path, configuration: configuration(partitions: 1))
        #expect(recovered.partitions[0].recovery.truncatedBytes == 0)
        try expectContents(recovered, expected)
        try recovered.close()
    }

    @Test func aSegmentSyncFailingAtACheckpointStopsAppendsUntilReopened() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let (log, faults) = try openSmallJournalWithFaults(dir)
        let names = sensors(log)
        faults.lock.lock(); faults.failSyncs = EIO; faults.failSyncsOnlyOf = ".log"; faults.lock.unlock()
        var acknowledged = [[Reading]](repeating: [], count: 2)
        var refusal: LogError?
        // Filling three quarters of a 64 KiB journal file starts a checkpoint, whose segment
        // fdatasync fails; Linux would report that write-back error once, so no retry is trusted.
        for b in 0..<5_000 where refusal == nil {
            let p = b % 2
            let rs = oneSensorReadings(5, sensor: names[p], start: start + Int64(b) * 1_000_000_000_000)
            do {
                _ = try log.appendBlocking(rs, toPartition: p)
                acknowledged[p] += rs
            } catch {
                refusal = error
            }
        }
        #expect(refusal?.message.contains("restarts") == true, "\(String(describing: refusal))")
        faults.lock.lock(); faults.failSyncs = 0; faults.lock.unlock()
        // Poisoned is a state the journal enters under its lock before the refusal above, and
        // only a reopen leaves it: checked at once, not after a sleep that proves nothing.
        #expect(throws: LogError.self) { try log.appendBlocking(oneSensorReadings(1, sensor: names[0], start: 1), toPartition: 0) }
        #expect(log.syncError != nil)
        // The close's own fdatasync now returns 0 (the kernel reported the error once): the
        // journal must survive it for the reopen to rewrite what the segment may lack.
        try log.close()
        let kept = try CommitJournal(layout: DataLayout(dir.path), limitBytes: 64 << 10, fileOperations: .system, onSync: nil)
        #expect(try !kept.records(partitions: 2, maxBatchBytes: Limits().maxBatchBytes).isEmpty)

        let reopened = try Log.open(dataDirectory: dir.path, configuration: configuration(partitions: 2))
        try expectContents(reopened, acknowledged)
        try reopened.close()
    }

    @Test func theSecondJournalFileFailingRefusesOnlyWhatItHeld() async throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let (log, faults) = try openSmallJournalWithFaults(dir)
        let names = sensors(log)
        faults.lock.withLock { faults.failSyncs = EIO; faults.failSyncsOnlyOf = DataLayout.journalNames[1] }
        // Concurrent appends: once the first file is three quarters full they move to the second,
        // whose fdatasyncs fail, while the first file's last records may still be committing.
        var acknowledged = [[Reading]](repeating: [], count: 2)
        var refused = 0
        for round in 0..<40 {
            let outcomes = await withTaskGroup(of: (Int, [Reading], Bool).self) { group in
                for t in 0..<16 {
                    let p = t % 2
                    let rs = oneSensorReadings(3, sensor: names[p], start: start + Int64(round * 16 + t) * 1_000_000_000_000)
                    group.addTask { (p, rs, (try? await log.append(rs, toPartition: p)) != nil) }
                }
                var all: [(Int, [Reading], Bool)] = []
                for await o in group { all.append(o) }
                return all
            }
            for (p, rs, ok) in outcomes { if ok { acknowledged[p] += rs } else { refused += 1 } }
        }
        #expect(refused > 0)
        faults.lock.withLock { faults.failSyncs = 0 }
        // What was acknowledged is what is stored (offsets from 0, no gaps), in offset order.
        for p in 0..<2 {
            let stored = try readAll(log.reader(partition: p, from: 0)).map(\.reading)
            #expect(Set(stored.map(\.timestamp)) == Set(acknowledged[p].map(\.timestamp)))
            #expect(stored.count == acknowledged[p].count)
        }
        let crashed = try snapshot(dir)
        defer { crashed.cleanup() }
        try log.close()
        let recovered = try Log.open(dataDirectory: crashed.path, configuration: configuration(partitions: 2))
        for p in 0..<2 {
            let stored = try readAll(recovered.reader(partition: p, from: 0)).map(\.reading)
            #expect(Set(stored.map(\.timestamp)) == Set(acknowledged[p].map(\.timestamp)))
        }
        try recovered.close()
    }
}
