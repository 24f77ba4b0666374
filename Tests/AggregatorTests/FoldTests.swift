import Foundation
import LogStore
import SensorLogCore
import TestSupport
import Testing

@testable import Aggregator

/// The parallel fold of a rebuild: whatever the number of workers, the hand-off size and the
/// rows each keeps in memory (small ones force rows out of memory and back from the store), and
/// whether it runs at once or in several runs, the rows are those of one serial fold, bit for bit.
@Suite struct FoldTests {
    /// Three partitions; sensors that move, readings an hour late, a sensor deleted mid-stream and
    /// written again afterwards.
    func makeLog(_ path: String, seed: UInt64) throws -> Log {
        var limits = Limits()
        limits.partitions = 3
        let log = try Log.open(dataDirectory: path, configuration: LogConfiguration(limits: limits))
        var rng = SplitMix64(seed: seed)
        for round in 0..<40 {
            var batch: [Reading] = []
            for i in 0..<300 {
                var ts = Int64(1_763_978_400_000_000_000) + Int64(round * 300 + i) * 1_000_000_000
                if rng.next() % 15 == 0 { ts -= 3_600_000_000_000 }
                batch.append(Reading(sensorID: "s\(rng.next() % 60)", type: "temperature", value: Double(rng.next() % 100_000) / 7,
                                     location: "l\(rng.next() % 2)", timestamp: ts))
            }
            try log.appendAll(batch, batch: 97)
            if round == 20 {
                _ = try log.appendDeletionBlocking("s7", lastReading: Int64.max / 2, toPartition: log.partition(for: "s7"))
            }
        }
        return log
    }

    func fold(_ log: Log, into path: String, tuning: AggregateRebuild.Fold.Tuning, runs: Int) throws -> [Aggregate] {
        let store = try AggregateStore(path: path)
        var fold = try AggregateRebuild.Fold(store: store, partitions: log.partitions.count, totalBytes: 1, tuning: tuning) {
            log.reader(partition: $0, from: $1)
        }
        for run in 1...runs {
            // Earlier runs stop part way, as an in-place rebuild's first run stops at the aggregator.
            let ends = log.partitions.map { $0.endOffset * Int64(run) / Int64(runs) }
            try fold.run(until: nil, limit: { ends[$0] }, progress: { _, _ in })
        }
        #expect(fold.offsets == log.partitions.map(\.endOffset))
        return try store.allAggregates().map { var a = $0; a.lastUpdated = ""; return a }
    }

    @Test func anyTuningFoldsTheSameRowsAsOneSerialFold() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try makeLog(dir.path + "/data", seed: testSeed())
        defer { try? log.close() }
        let serial = try fold(log, into: dir.path + "/serial.sqlite", tuning: .init(workers: 1, handOffRows: 1 << 30, maxCachedRows: 1 << 30), runs: 1)
        #expect(serial.count > 100 && !serial.contains { $0.sensorID == "s7" && $0.count > 200 })
        // Small hand-offs and caches: rows leave memory often, after hand-offs nobody waited for.
        let tunings = [(2, 1_000, 1_000), (3, 5, 10), (4, 1, 1), (2, 2, 3), (2, 40, 50), (1, 2, 3)]
        for (k, (n, handOff, cached)) in tunings.enumerated() {
            let tuning = AggregateRebuild.Fold.Tuning(workers: n, handOffRows: handOff, maxCachedRows: cached, queuedHandOffs: 1 + k % 2)
            for runs in [1, 3] {
                let rows = try fold(log, into: dir.path + "/\(k)-\(runs).sqlite", tuning: tuning, runs: runs)
                let what = "workers \(n), hand-offs of \(tuning.handOffRows), \(tuning.maxCachedRows) cached, \(runs) runs"
                #expect(rows.count == serial.count, "\(what)")
                let differ = zip(rows, serial).first { $0 != $1 || $0.sum.bitPattern != $1.sum.bitPattern }
                #expect(differ == nil, "\(what): \(String(describing: differ).prefix(400))")
            }
        }
    }

    /// Readings stamped in the first and the last hour of the Int64 range (the line protocol
    /// takes any integer but Int64.min): the fold trapped in `hourStart` on the first, and a
    /// query's `to` in the last hour trapped in the bound (docs/testing.md, "Fuzzing").
    @Test func theEndsOfTheTimestampRangeFoldAndQuery() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let log = try Log.open(dataDirectory: dir.path + "/data", configuration: LogConfiguration())
        defer { try? log.close() }
        let stamps: [Int64] = [.min + 1, .min + 2, -1, 0, .max - 1, .max]
        _ = try log.appendAll(stamps.map { Reading(sensorID: "edge", type: "temperature", value: 1, location: "l", timestamp: $0) })
        let rows = try fold(log, into: dir.path + "/a.sqlite", tuning: .init(workers: 1, handOffRows: 1 << 30, maxCachedRows: 1 << 30), runs: 1)
        #expect(rows.map(\.count).reduce(0, +) == Int64(stamps.count))
        let store = try AggregateStore(path: dir.path + "/a.sqlite")
        #expect(try store.aggregates(sensorID: "edge", from: .min + 1, to: .max).map(\.count).reduce(0, +) == Int64(stamps.count))
        #expect(try store.aggregates(from: .min, to: .max, type: nil, location: nil, after: nil, limit: 100).count == rows.count)
    }
}
