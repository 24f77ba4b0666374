import Foundation
import SensorLogCore
import TestSupport
import Testing

@testable import LogStore

/// The per-sensor index: what a scan through it returns equals a filter over every reading, for
/// the live log (active segment in memory, closed ones built or loaded) and for files alone,
/// across rolls, compaction swaps and deletions; the `.sensors` file round-trips and refuses
/// damage and other segments.
@Suite struct SensorIndexTests {
    func limits(segmentBytes: Int = 4 << 10) -> Limits {
        var l = Limits()
        l.segmentBytes = segmentBytes
        l.minSegmentBytes = 4 << 10
        l.partitions = 1
        return l
    }

    /// Ids that share long prefixes (the front coding's hard case), some that are prefixes of
    /// others, sensors that move and change type inside a batch.
    static func readings(_ count: Int, rng: inout SplitMix64) -> [Reading] {
        let ids = ["s", "s1", "s10", "s100", "s101", "s11", "sensor-00001", "sensor-00010", "sensor-1", "sensor-10", "x", "ab", "abc", "abd"]
        var out: [Reading] = []
        for i in 0..<count {
            let id = ids[Int(rng.next() % UInt64(ids.count))]
            out.append(Reading(sensorID: id, type: rng.next() % 5 == 0 ? "humidity" : "temperature", value: Double(Int(rng.next() % 10_000)) / 100,
                               location: rng.next() % 4 == 0 ? "site-\(rng.next() % 3)" : "site-0",
                               timestamp: 1_700_000_000_000_000_000 + Int64(i) * 1_000_000_000 - Int64(rng.next() % 5) * 1_000_000_000))
        }
        return out
    }

    /// Every sensor's readings by scan, whole and in pages of 3, against the filter.
    func expectScansMatch(_ reader: () -> PartitionReader, _ all: [(offset: Int64, reading: Reading)], deleted: [String: Int64] = [:],
                          _ what: String) throws {
        let lo: Int64 = 1_700_000_000_000_000_000 + 20 * 1_000_000_000
        let hi: Int64 = 1_700_000_000_000_000_000 + 400 * 1_000_000_000
        for sensor in Set(all.map(\.reading.sensorID)).sorted() + ["nobody", "sensor-"] {
            let expected = all.filter {
                $0.reading.sensorID == sensor && $0.reading.timestamp >= lo && $0.reading.timestamp <= hi && $0.offset >= deleted[sensor, default: .min]
            }
            let scanner = reader()
            let whole = try scanner.scan(sensorID: sensor, from: lo, to: hi, limit: 1_000_000)
            #expect(scanner.lastScanUsedIndex, "\(what): \(sensor) read through the index")
            #expect(whole.next == nil, "\(what): \(sensor)")
            #expect(identical(whole.readings.map(\.reading), expected.map(\.reading)), "\(what): \(sensor)")
            #expect(whole.readings.map(\.offset) == expected.map(\.offset), "\(what): \(sensor)")
            var paged: [LocatedReading] = []
            var cursor: Int64? = 0
            let r = reader()
            while let from = cursor {
                #expect(r.nextOffset == from || paged.isEmpty)
                let page = try r.scan(sensorID: sensor, from: lo, to: hi, limit: 3)
                paged += page.readings
                cursor = page.next
            }
            #expect(paged.map(\.offset) == expected.map(\.offset), "\(what): \(sensor) in pages")
        }
    }

    @Test func scansThroughTheIndexEqualTheFilterLiveAndFromFiles() throws {
        let seed = testSeed()
        var rng = SplitMix64(seed: seed)
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits()))
        var all: [(offset: Int64, reading: Reading)] = []
        for _ in 0..<120 {
            let batch = Self.readings(Int(rng.next() % 40) + 1, rng: &rng)
            let r = try log.appendBlocking(batch, toPartition: 0)
            all += zip(r.offsets, batch).map { ($0, $1) }
            if rng.next() % 10 == 0 {
                // A reader in between brings the active segment's index up to date part way.
                _ = try log.reader(partition: 0, from: 0).scan(sensorID: "s1", from: .min, to: .max, limit: 1)
            }
        }
        #expect(log.partitions[0].segmentCount > 3, "seed \(seed)")
        try expectScansMatch({ log.reader(partition: 0, from: 0) }, all, "live, no files (seed \(seed))")
        let wrote = try log.writeSensorIndexes()
        #expect(wrote.written == log.partitions[0].segmentCount - 1 && wrote.unindexable == 0)
        #expect(try log.writeSensorIndexes().written == 0, "written once")
        try expectScansMatch({ log.reader(partition: 0, from: 0) }, all, "live, files (seed \(seed))")
        // A compaction swaps segments under the names: the stale file goes, the scan stays right.
        _ = try log.compactOnline(partition: 0, memory: CompactionMemory(), merging: 1 << 20)
        try expectScansMatch({ log.reader(partition: 0, from: 0) }, all, "live, after a swap (seed \(seed))")
        #expect(try log.writeSensorIndexes().written == log.partitions[0].segmentCount - 1)
        try log.close()
        let files = try LogDirectory(dataDirectory: dir.path)
        try expectScansMatch({ files.reader(partition: 0, from: 0) }, all, "files (seed \(seed))")
    }

    @Test func aDeletedSensorStaysHiddenThroughTheIndex() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits()))
        var rng = SplitMix64(seed: 11)
        var all: [(offset: Int64, reading: Reading)] = []
        for _ in 0..<30 {
            let batch = Self.readings(30, rng: &rng)
            let r = try log.appendBlocking(batch, toPartition: 0)
            all += zip(r.offsets, batch).map { ($0, $1) }
        }
        let newest = all.filter { $0.reading.sensorID == "s10" }.map(\.reading.timestamp).max()!
        let deletion = try log.appendDeletionBlocking("s10", lastReading: newest, toPartition: 0)
        try expectScansMatch({ log.reader(partition: 0, from: 0) }, all, deleted: ["s10": deletion.offsets.lowerBound], "deleted")
        try log.close()
    }

    @Test func verifyFindsABadSensorIndexAndRepairWritesItAnew() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits()))
        var rng = SplitMix64(seed: 5)
        var all: [(offset: Int64, reading: Reading)] = []
        for _ in 0..<60 {
            let batch = Self.readings(30, rng: &rng)
            let r = try log.appendBlocking(batch, toPartition: 0)
            all += zip(r.offsets, batch).map { ($0, $1) }
        }
        _ = try log.writeSensorIndexes()
        try log.close()
        let files = try LogDirectory(dataDirectory: dir.path)
        let bases = try files.segmentBases(partition: 0)
        #expect(bases.count > 3)
        let paths = (0..<3).map { SegmentPaths(directory: dir.path + "/log/partition-000", displayDirectory: "log/partition-000", base: bases[$0]) }
        #expect(try files.verify(partition: 0).problems.allSatisfy { !$0.path.hasSuffix(".sensors") }, "the written files check out")
        // One flipped byte, and another segment's (valid) file under a segment's name.
        var damaged = try #require(SegmentFiles.readWholeFile(paths[0].sensorIndex))
        damaged[damaged.count / 2] ^= 1
        try Data(damaged).write(to: URL(fileURLWithPath: paths[0].sensorIndex))
        try FileManager.default.removeItem(atPath: paths[1].sensorIndex)
        try FileManager.default.copyItem(atPath: paths[2].sensorIndex, toPath: paths[1].sensorIndex)
        let found = try files.verify(partition: 0)
        #expect(Set(found.problems.filter { $0.path.hasSuffix(".sensors") }.map(\.path)) == [paths[0].sensorIndexDisplay, paths[1].sensorIndexDisplay])
        #expect(found.problems.allSatisfy { $0.severity == .warning }, "derived: nothing is lost")
        // Readers do not trust them meanwhile.
        try expectScansMatch({ files.reader(partition: 0, from: 0) }, all, "bad files")
        let lock = try DirectoryLock(dataDirectory: dir.path)
        let repair = files.repair(found, held: lock)
        lock.release()
        #expect(repair.failed.isEmpty && repair.done.count == 2, "\(repair)")
        #expect(try files.verify(partition: 0).problems.allSatisfy { !$0.path.hasSuffix(".sensors") })
        try expectScansMatch({ files.reader(partition: 0, from: 0) }, all, "repaired files")
    }

    @Test func theFileRoundTripsAndRefusesDamageAndOtherSegments() throws {
        var index = SensorIndex()
        for b in 0..<50 {
            index.add(position: Int64(b * 100), relative: UInt32(b * 10), nextRelative: UInt32(b * 10 + 10), length: 100, crc: UInt32(b * 7),
                      hashes: (0..<UInt64(b % 7 + 1)).map { $0 * 1_000_003 })
        }
        let bytes = index.fileBytes(segmentSize: 5000, records: 500)
        let parsed = try #require(SensorIndex.parse(bytes, segmentSize: 5000, records: 500))
        #expect(parsed.batches == index.batches)
        for h in 0..<UInt64(8) {
            #expect(parsed.sensors[h * 1_000_003] == index.sensors[h * 1_000_003].map { SensorIndex.Postings(bytes: $0.bytes) })
        }
        #expect(SensorIndex.parse(bytes, segmentSize: 5001, records: 500) == nil, "another segment's size")
        #expect(SensorIndex.parse(bytes, segmentSize: 5000, records: 501) == nil, "another segment's records")
        #expect(SensorIndex.parse(Array(bytes.dropLast()), segmentSize: 5000, records: 500) == nil)
        for i in stride(from: 0, to: bytes.count, by: 7) {
            var flipped = bytes
            flipped[i] ^= 0x20
            #expect(SensorIndex.parse(flipped, segmentSize: 5000, records: 500) == nil, "byte \(i)")
        }
        var rng = SplitMix64(seed: testSeed())
        for _ in 0..<2000 {
            let junk = (0..<Int(rng.next() % 200)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            _ = SensorIndex.parse(SensorIndex.magic + [1, 0, 0, 0] + junk, segmentSize: 5000, records: nil)
        }
    }

    @Test func hashesFromTheFrontCodingEqualHashesOfTheIds() throws {
        var rng = SplitMix64(seed: testSeed())
        for _ in 0..<50 {
            let readings = Self.readings(Int(rng.next() % 200) + 1, rng: &rng)
            let encoder = BatchEncoder()  // owns the bytes it returns
            let bytes = try readings.withUnsafeBufferPointer { try encoder.encode($0, appendTime: 1, maxBatchBytes: 1 << 20) }
            let header = try BatchHeader.parse(bytes, maxBatchBytes: 1 << 20)
            let hashes = try BatchDecoder().sensorHashes(bytes, header: header)
            #expect(Set(hashes) == Set(readings.map { SensorIndex.hash($0.sensorID) }))
        }
    }
}
