import Foundation
import SensorLogCore
import TestSupport
import Testing

@testable import LogStore

/// `Log.appendCopy`: a follower's copy of another log's batches (cluster mode's followers).
@Suite struct LogCopyTests {
    func limits(segmentBytes: Int = 64 << 10) -> Limits {
        var l = Limits()
        l.segmentBytes = segmentBytes
        l.minSegmentBytes = 64 << 10
        l.partitions = 2
        return l
    }

    func batches(_ dataDirectory: String, partition: Int) throws -> [[UInt8]] {
        try storedBatches(dataDirectory, partition: partition)
    }

    /// The readings a reader gives, deletion records skipped.
    func readings(_ reader: PartitionReader) throws -> [(offset: Int64, reading: Reading)] {
        var out: [(Int64, Reading)] = []
        while let (batch, first) = try reader.next() {
            guard batch.kind == .readings else { continue }
            for i in first..<batch.count { out.append((batch.offset(at: i), batch.reading(at: i))) }
        }
        return out
    }

    /// The source: readings over several segments, a deletion among them.
    func source(_ dir: TemporaryDirectory) async throws -> (Log, deleted: String, at: AppendResult) {
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: limits()))
        let readings = standardWorkload(seconds: 4, sensors: 300, seed: testSeed())
        _ = try log.appendAll(Array(readings.prefix(readings.count / 2)), batch: 50)
        let deleted = readings[0].sensorID
        let deletion = try await log.appendDeletion(deleted, lastReading: Int64.max - 1, toPartition: log.partition(for: deleted))
        _ = try log.appendAll(Array(readings.suffix(from: readings.count / 2)), batch: 50)
        return (log, deleted, deletion)
    }

    @Test(arguments: FsyncPolicy.allCases)
    func aCopyOfEveryBatchIsTheSameLog(policy: FsyncPolicy) async throws {
        let from = TemporaryDirectory(), to = TemporaryDirectory()
        defer { from.cleanup(); to.cleanup() }
        let (original, deleted, deletion) = try await source(from)
        let copy = try Log.open(dataDirectory: to.path, configuration: LogConfiguration(limits: limits(), fsync: policy))
        for p in 0..<2 {
            let all = try batches(from.path, partition: p)
            #expect(all.count >= 10)
            for batch in all { _ = try await copy.appendCopy(batch, toPartition: p) }
        }
        for p in 0..<2 {
            let expected = try readings(original.reader(partition: p, from: 0))
            let got = try readings(copy.reader(partition: p, from: 0))
            #expect(got.map(\.offset) == expected.map(\.offset) && identical(got.map(\.reading), expected.map(\.reading)))
            // The copied deletion masks what it deletes in the copy, as the original's does.
            if p == deletion.partition {
                #expect(!got.contains { $0.reading.sensorID == deleted && $0.offset < deletion.baseOffset })
                #expect(got.contains { $0.reading.sensorID == deleted && $0.offset > deletion.baseOffset })
            }
        }
        try original.close()
        try copy.close()
        // Byte for byte, batch for batch (the copy rolls its segments where its own limits say).
        for p in 0..<2 { #expect(try batches(to.path, partition: p) == batches(from.path, partition: p)) }
    }

    @Test func aCopyGoesOnAfterAReopen() async throws {
        let from = TemporaryDirectory(), to = TemporaryDirectory()
        defer { from.cleanup(); to.cleanup() }
        let (original, _, _) = try await source(from)
        try original.close()
        let all = try batches(from.path, partition: 0)
        var copy = try Log.open(dataDirectory: to.path, configuration: LogConfiguration(limits: limits(), fsync: .always))
        for batch in all.prefix(all.count / 2) { _ = try await copy.appendCopy(batch, toPartition: 0) }
        try copy.close()
        copy = try Log.open(dataDirectory: to.path, configuration: LogConfiguration(limits: limits(), fsync: .always))
        let again = await #expect(throws: LogError.self) { _ = try await copy.appendCopy(all[all.count / 2 - 1], toPartition: 0) }
        #expect(again?.code == .notContiguous)
        for batch in all.suffix(from: all.count / 2) { _ = try await copy.appendCopy(batch, toPartition: 0) }
        try copy.close()
        #expect(try batches(to.path, partition: 0) == all)
    }

    @Test func aGapARepeatDamageAndAStraySensorAreRefused() async throws {
        let from = TemporaryDirectory(), to = TemporaryDirectory()
        defer { from.cleanup(); to.cleanup() }
        let (original, _, _) = try await source(from)
        try original.close()
        let copy = try Log.open(dataDirectory: to.path, configuration: LogConfiguration(limits: limits()))
        defer { try? copy.close() }
        let all = try batches(from.path, partition: 0)
        let gap = await #expect(throws: LogError.self) { _ = try await copy.appendCopy(all[1], toPartition: 0) }
        #expect(gap?.code == .notContiguous)
        _ = try await copy.appendCopy(all[0], toPartition: 0)
        let repeated = await #expect(throws: LogError.self) { _ = try await copy.appendCopy(all[0], toPartition: 0) }
        #expect(repeated?.code == .notContiguous)
        var flipped = all[1]
        flipped[flipped.count - 1] ^= 0x40
        let damaged = await #expect(throws: LogError.self) { _ = try await copy.appendCopy(flipped, toPartition: 0) }
        #expect(damaged?.code == .corruptBatch)
        let short = await #expect(throws: LogError.self) { _ = try await copy.appendCopy(Array(all[1].dropLast()), toPartition: 0) }
        #expect(short?.code == .corruptBatch)
        let stray = await #expect(throws: LogError.self) { _ = try await copy.appendCopy(all[1], toPartition: 1) }
        #expect(stray?.code == .invalidArgument)
        // Nothing refused was written: the next batch still continues the copy.
        _ = try await copy.appendCopy(all[1], toPartition: 0)
        #expect(copy.partitions[0].endOffset == BatchHeaderEnd.next(all[1]))
    }
}

enum BatchHeaderEnd {
    static func next(_ batch: [UInt8]) -> Int64 {
        (try? batch.withUnsafeBytes { try BatchHeader.parse($0, maxBatchBytes: 32 << 20) }.nextOffset) ?? -1
    }
}
