import Foundation
import SensorLogCore
import Synchronization
import TestSupport
import Testing

@testable import LogStore

@Suite struct LogTests {
    func limits(segmentBytes: Int = 64 << 20, partitions: Int = 4) -> Limits {
        var l = Limits()
        l.segmentBytes = segmentBytes
        l.partitions = partitions
        return l
    }

    @Test(arguments: FsyncPolicy.allCases)
    func appendAndReadBack(policy: FsyncPolicy) async throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits(), fsync: policy))
        let readings = standardWorkload(seconds: 2, sensors: 500)
        let groups = try log.appendAll(readings, batch: 97)
        // One async append as well.
        let extra = oneSensorReadings(10, sensor: "async-sensor")
        let p = log.partition(for: "async-sensor")
        let result = try await log.append(extra, toPartition: p)
        #expect(result.count == 10)
        for (partition, group) in groups {
            let back = try readAll(log.reader(partition: partition, from: 0)).map(\.reading)
            let expected = partition == p ? group + extra : group
            #expect(identical(back, expected))
        }
        try log.close()
        // And again after reopening, read-only from another "process".
        let files = try LogDirectory(dataDirectory: dir.path)
        for (partition, group) in groups {
            let back = try readAll(files.reader(partition: partition, from: 0)).map(\.reading)
            #expect(identical(back, partition == p ? group + extra : group))
        }
    }

    @Test func offsetsAreContiguousAndReadersStartAnywhere() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits(segmentBytes: 64 << 10, partitions: 1)))
        let readings = noisyReadings(20_000)
        var next: Int64 = 0
        for start in stride(from: 0, to: readings.count, by: 333) {
            let r = try log.appendBlocking(Array(readings[start..<min(start + 333, readings.count)]), toPartition: 0)
            #expect(r.baseOffset == next)
            next = r.offsets.upperBound
        }
        #expect(log.partitions[0].segmentCount > 1, "64 KiB segments must roll")
        for start in [0, 1, 332, 333, 334, 5000, 19_999] as [Int64] {
            let back = try readAll(log.reader(partition: 0, from: start))
            #expect(back.first?.offset == start)
            #expect(back.count == 20_000 - Int(start))
            #expect(back.first.map { $0.reading.isIdentical(to: readings[Int(start)]) } == true)
        }
        #expect(try readAll(log.reader(partition: 0, from: 20_000)).isEmpty)
        try log.close()
    }

    /// A cluster node joining after its stream was purged starts an empty partition later: the
    /// offsets go on from there, across a reopen, under every fsync policy (the commit journal
    /// replays at the new offsets); a partition holding records refuses.
    @Test(arguments: FsyncPolicy.allCases)
    func anEmptyPartitionStartsAtAnOffset(policy: FsyncPolicy) throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let config = LogConfiguration(limits: limits(segmentBytes: 64 << 10, partitions: 1), fsync: policy)
        var log = try Log.open(dataDirectory: dir.path, configuration: config)
        try log.startEmptyPartition(0, at: 1_000)
        #expect(log.partitions[0].startOffset == 1_000 && log.partitions[0].endOffset == 1_000)
        let readings = noisyReadings(5_000)
        let first = try log.appendBlocking(Array(readings[..<2_500]), toPartition: 0)
        #expect(first.baseOffset == 1_000)
        #expect(throws: LogError.self) { try log.startEmptyPartition(0, at: 9_000) }
        try log.close()
        log = try Log.open(dataDirectory: dir.path, configuration: config)
        defer { try? log.close() }
        _ = try log.appendBlocking(Array(readings[2_500...]), toPartition: 0)
        let back = try readAll(log.reader(partition: 0, from: 0))
        #expect(back.first?.offset == 1_000 && back.count == 5_000 && log.partitions[0].endOffset == 6_000)
        #expect(back.map(\.reading).elementsEqual(readings) { $0.isIdentical(to: $1) })
    }

    @Test func seekByTimeThroughTheTimeIndex() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits(segmentBytes: 64 << 10, partitions: 1)))
        let readings = noisyReadings(30_000)  // one per second (plus < 1 µs)
        for start in stride(from: 0, to: readings.count, by: 100) {
            _ = try log.appendBlocking(Array(readings[start..<(start + 100)]), toPartition: 0)
        }
        let t0: Int64 = 1_700_000_000_000_000_000  // noisyReadings' start: reading k is in second k
        for target in [0, 1, 99, 100, 150, 12_345, 29_999] {
            let offset = try log.offset(partition: 0, atOrAfter: t0 + Int64(target) * 1_000_000_000)
            // The batch holding the target second starts at a multiple of 100.
            #expect(offset == Int64(target / 100 * 100), "target \(target)")
        }
        #expect(try log.offset(partition: 0, atOrAfter: t0 - 1) == 0)
        #expect(try log.offset(partition: 0, atOrAfter: t0 + 40_000 * 1_000_000_000) == 30_000)
        try log.close()
        let files = try LogDirectory(dataDirectory: dir.path)
        #expect(try files.offset(partition: 0, atOrAfter: t0 + 12_345 * 1_000_000_000) == 12_300)
    }

    @Test func aSecondWriterIsRefusedWithThePid() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path)
        do {
            _ = try Log.open(dataDirectory: dir.path)
            Issue.record("second open succeeded")
        } catch {
            #expect(error.code == .locked)
            #expect(error.message.contains("pid \(getpid())"))
        }
        #expect(try LogDirectory(dataDirectory: dir.path).lockHolder == getpid())
        try log.close()
        #expect(try LogDirectory(dataDirectory: dir.path).lockHolder == nil)
        try Log.open(dataDirectory: dir.path).close()
    }

    @Test func partitionCountIsFixedAtCreation() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits(partitions: 3))).close()
        let again = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits(partitions: 8)))
        #expect(again.partitions.count == 3)
        try again.close()
    }

    @Test func closingTwiceClosesNoOneElsesFile() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits(partitions: 1)))
        try log.close()
        // Likely to get the lock file's old descriptor number, which a second close(2) would shut.
        let other = open(dir.path + "/other", O_RDWR | O_CREAT, 0o644)
        defer { close(other) }
        try log.close()
        #expect(fcntl(other, F_GETFD) != -1, "descriptor \(other) was closed by the second Log.close")
    }

    @Test func groupCommitSharesFsyncsAcrossPartitions() async throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits(partitions: 4), fsync: .always))
        let appends = 400
        let sensors = (0..<4).map { p in (0...).lazy.map { "sensor-\($0)" }.first { log.partition(for: $0) == p }! }
        try await withThrowingTaskGroup(of: AppendResult.self) { group in
            for i in 0..<appends {
                group.addTask { try await log.append(oneSensorReadings(1, sensor: sensors[i % 4], start: Int64(i)), toPartition: i % 4) }
            }
            var offsets: [[Int64]] = [[], [], [], []]
            for try await r in group { offsets[r.partition].append(r.baseOffset) }
            let perPartition = Array(0..<Int64(appends / 4))
            #expect(offsets.map { $0.sorted() } == [perPartition, perPartition, perPartition, perPartition])
        }
        let syncs = log.commitSyncs
        #expect(syncs > 0 && syncs < appends, "\(syncs) fsyncs for \(appends) appends")
        for p in 0..<4 { #expect(log.partitions[p].endOffset == Int64(appends / 4)) }
        try log.close()
    }

    @Test func deletionRecordsRoundTripAndMaskAtOnce() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits(partitions: 1)))
        let readings = oneSensorReadings(5)
        _ = try log.appendBlocking(readings, toPartition: 0)
        let r = try log.appendDeletionBlocking("sensor-1", lastReading: readings[4].timestamp, toPartition: 0)
        #expect(r.offsets == 5..<6)
        _ = try log.appendBlocking(oneSensorReadings(1, start: readings[4].timestamp + 1), toPartition: 0)
        let reader = log.reader(partition: 0, from: 0)
        let (masked, _) = try #require(try reader.next())
        #expect(masked.count == 0 && masked.nextOffset == 5, "the readings before the deletion read as removed records")
        #expect(reader.maskedInLastBatch == 5)
        let (batch, _) = try #require(try reader.next())
        #expect(batch.kind == .sensorDeletions)
        #expect((0..<batch.count).map(batch.sensorID(at:)) == ["sensor-1"])
        #expect(batch.timestamps == [readings[4].timestamp], "stamped with the newest reading it deletes")
        let (after, _) = try #require(try reader.next())
        #expect(after.count == 1 && after.offset(at: 0) == 6, "a reading after the deletion is not masked")
        let scanned = try log.reader(partition: 0, from: 0).scan(sensorID: "sensor-1", from: .min, to: .max, limit: 100).readings
        #expect(scanned.map(\.offset) == [6])
        try log.close()
    }

    @Test func rejectsBadAppends() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits(partitions: 2)))
        #expect(throws: LogError.self) { try log.appendBlocking([], toPartition: 0) }
        #expect(throws: LogError.self) { try log.appendBlocking(oneSensorReadings(1), toPartition: 7) }
        let p = log.partition(for: "sensor-1")
        try log.close()
        #expect(throws: LogError.self) { try log.appendBlocking(oneSensorReadings(1), toPartition: p) }
    }

    @Test func activeSegmentRollsByAge() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        var l = limits(partitions: 1)
        l.segmentMaxAge = .milliseconds(50)
        let time = ManualTime()
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: l, time: time))
        _ = try log.appendBlocking(oneSensorReadings(3), toPartition: 0)
        time.advance(by: .milliseconds(50))
        _ = try log.appendBlocking(oneSensorReadings(3, start: 10), toPartition: 0)
        #expect(log.partitions[0].segmentCount == 1, "50 ms old is not older than the 50 ms limit")
        time.advance(by: .nanoseconds(1))
        _ = try log.appendBlocking(oneSensorReadings(3, start: 20), toPartition: 0)
        #expect(log.partitions[0].segmentCount == 2)
        #expect(try readAll(log.reader(partition: 0, from: 0)).count == 9)
        try log.close()
    }

    @Test func anotherProcessReadsWhileTheWriterAppends() async throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits(segmentBytes: 64 << 10, partitions: 1), fsync: .never))
        let readings = noisyReadings(40_000)
        let writer = Task.detached {
            for start in stride(from: 0, to: readings.count, by: 200) {
                _ = try log.appendBlocking(Array(readings[start..<(start + 200)]), toPartition: 0)
            }
        }
        // A reader with no access to the writer: files only, following the log as it grows and rolls.
        let files = try LogDirectory(dataDirectory: dir.path)
        let reader = files.reader(partition: 0, from: 0)
        var seen: [Reading] = []
        let deadline = Date().addingTimeInterval(60 * testTimeScale)
        while seen.count < readings.count && Date() < deadline {
            if let (batch, first) = try reader.next() {
                for i in first..<batch.count { seen.append(batch.reading(at: i)) }
            } else {
                try await Task.sleep(for: .milliseconds(1))
            }
        }
        try await writer.value
        #expect(identical(seen, readings))
        #expect(log.partitions[0].segmentCount > 1)
        try log.close()
    }

    @Test func sensorScanFindsExactlyTheSensorsReadingsInRange() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits(segmentBytes: 64 << 10, partitions: 1)))
        var all: [Reading] = []
        for k in 0..<40 {
            var batch: [Reading] = []
            for s in 0..<30 {
                batch += noisyReadings(5, sensor: "s\(s)", start: 1_700_000_000_000_000_000 + Int64(k * 5 + (s % 3 == 0 ? -50 : 0)) * 1_000_000_000, seed: UInt64(k * 31 + s))
                    .map { var r = $0; r.type = ["temperature", "humidity"][s % 2]; r.value = s % 4 == 0 ? r.value + 0.0001234567 : r.value; return r }
            }
            _ = try log.appendBlocking(batch, toPartition: 0)
            all += batch
        }
        let lo: Int64 = 1_700_000_000_000_000_000 + 30 * 1_000_000_000
        let hi: Int64 = 1_700_000_000_000_000_000 + 120 * 1_000_000_000
        for sensor in ["s0", "s4", "s7", "s29", "nobody"] {
            let expected = all.enumerated().filter { $0.element.sensorID == sensor && $0.element.timestamp >= lo && $0.element.timestamp <= hi }
            let scan = try log.reader(partition: 0, from: 0).scan(sensorID: sensor, from: lo, to: hi, limit: 100_000)
            #expect(scan.next == nil)
            #expect(identical(scan.readings.map(\.reading), expected.map(\.element)), "\(sensor)")
            #expect(scan.readings.map(\.offset) == expected.map { Int64($0.offset) })
        }
        // Paging: pages of 7 chained by their cursors give every reading once.
        var paged: [LocatedReading] = []
        var cursor: Int64? = 0
        while let from = cursor {
            let page = try log.reader(partition: 0, from: from).scan(sensorID: "s1", from: .min, to: .max, limit: 7)
            #expect(page.readings.count <= 7)
            paged += page.readings
            cursor = page.next
        }
        #expect(identical(paged.map(\.reading), all.filter { $0.sensorID == "s1" }))
        try log.close()
    }

    /// A data directory the log opens is named durably in its parent, and so are the parents
    /// it created on the way.
    @Test func aNewDataDirectoryIsSyncedIntoItsParent() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let seen = Mutex<[String]>([])
        let ops = FileOperations(
            syncDirectory: { path in seen.withLock { $0.append("syncdir \(path)") }; return FileOperations.systemSyncDirectory(path) })
        let data = dir.path + "/a/b/data"
        let log = try Log.open(dataDirectory: data, configuration: LogConfiguration(limits: limits(partitions: 1), fileOperations: ops))
        try log.close()
        let calls = seen.withLock { $0 }
        for parent in [dir.path + "/a/b", dir.path + "/a", dir.path] {
            #expect(calls.contains("syncdir \(parent)"), "\(parent) must be synced: \(calls)")
        }
        // Reopened, the data directory's parent is synced again (the open that created it may
        // have died before its sync); the parents above it are not.
        try Log.open(dataDirectory: data, configuration: LogConfiguration(limits: limits(partitions: 1), fileOperations: ops)).close()
        let reopened = seen.withLock { $0[calls.count...] }
        #expect(reopened.contains("syncdir \(dir.path + "/a/b")"))
        #expect(!reopened.contains("syncdir \(dir.path + "/a")"))
        // A file where the directory should be is named as such.
        let file = dir.path + "/plain"
        #expect(FileManager.default.createFile(atPath: file, contents: Data()))
        #expect { try Log.open(dataDirectory: file) } throws: { ($0 as? LogError)?.message.contains("is a file, not a directory") == true }
    }
}
