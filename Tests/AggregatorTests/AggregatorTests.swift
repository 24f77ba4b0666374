import Aggregator
import Foundation
import Ingest
import LogStore
import Logging
import SensorLogCore
import TestSupport
import Testing

@Suite struct AggregatorTests {
    /// Runs the live aggregator until its committed offsets reach the log's end. Cancel the task
    /// once it is stopped: `run` waits for a graceful shutdown until then, and a task left waiting
    /// keeps the service and the log in memory for good.
    func aggregate(_ log: Log) async throws -> (AggregatorService, Task<Void, Never>) {
        let service = try AggregatorService(log: log, logger: Logger(label: "test"), commitInterval: .milliseconds(5), commitRecords: 777)
        return (service, Task.detached { try? await service.run() })
    }

    func waitCaughtUp(_ service: AggregatorService, _ log: Log) async throws {
        let deadline = Date().addingTimeInterval(30 * testTimeScale)
        while service.committedOffsets != log.partitions.map(\.endOffset) {
            #expect(Date() < deadline)
            if Date() > deadline { return }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    @Test func liveFoldEqualsRebuildBitForBitAndTheReference() async throws {
        let f = try await Fixture.make(partitions: 3)
        defer { f.close() }
        var rng = SplitMix64(seed: 5)
        var readings: [Reading] = []
        for i in 0..<30_000 {
            var ts = Int64(1_763_978_400_000_000_000) + Int64(i / 50) * 1_000_000_000 + Int64(i % 50)
            if rng.next() % 20 == 0 { ts -= 3_600_000_000_000 + Int64(rng.next() % 1_000_000) }  // hour-late
            readings.append(Reading(sensorID: "s\(i % 50)", type: ["temperature", "pressure"][i % 50 % 2],
                                    value: Double(rng.next() % 1_000_000) / 997, location: "l\(i % 3)", timestamp: ts))
        }
        let (service, running) = try await aggregate(f.log)
        for chunk in stride(from: 0, to: readings.count, by: 1111) {
            _ = try await f.pipeline.submit(Array(readings[chunk..<min(chunk + 1111, readings.count)]), via: .tcp)
        }
        try await waitCaughtUp(service, f.log)
        service.requestStop()
        await service.waitUntilFinished()
        running.cancel()
        await running.value

        let live = try AggregateStore(path: f.path + "/aggregates.sqlite", readOnly: true).allAggregates()
        let out = f.path + "/rebuilt.sqlite"
        let result = try AggregateRebuild.build(dataDirectory: f.path, output: out)
        #expect(result.readings == Int64(Set(readings.map { "\($0.sensorID)@\($0.timestamp)" }).count))
        let rebuilt = try AggregateStore(path: out, readOnly: true).allAggregates()
        func strip(_ a: [Aggregate]) -> [Aggregate] { a.map { var x = $0; x.lastUpdated = ""; return x } }
        #expect(strip(live) == strip(rebuilt))

        // Against an independent reference over the distinct readings, summed in log order.
        var reference: [String: (Int64, Double, Double, Double)] = [:]
        var seen = Set<String>()
        for r in readings where seen.insert("\(r.sensorID)@\(r.timestamp)").inserted {
            let key = r.sensorID + "|" + Timestamp.hourBucket(r.timestamp)
            let a = reference[key] ?? (0, 0, .infinity, -.infinity)
            reference[key] = (a.0 + 1, a.1 + r.value, min(a.2, r.value), max(a.3, r.value))
        }
        #expect(live.count == reference.count)
        for row in live {
            let ref = try #require(reference[row.sensorID + "|" + row.hourBucket])
            #expect(row.count == ref.0 && row.min == ref.2 && row.max == ref.3)
            #expect(abs(row.sum - ref.1) <= 1e-9 * abs(ref.1))
        }
    }

    /// `rebuild-aggregates` in place while the server serves: appends go on during the fold,
    /// the aggregator pauses for the swap only and resumes on the new store, and the store is
    /// the fold of the whole log afterwards.
    @Test func anInPlaceRebuildWhileAppendsGoOnEqualsTheFoldOfTheLog() async throws {
        let f = try await Fixture.make(partitions: 2)
        defer { f.close() }
        let readings = (0..<40_000).map { i in
            Reading(sensorID: "s\(i % 40)", type: "temperature", value: Double(i % 1013) / 7, location: "l",
                    timestamp: 1_763_978_400_000_000_000 + Int64(i) * 10_000_000)
        }
        let (service, running) = try await aggregate(f.log)
        _ = try await f.pipeline.submit(Array(readings[..<20_000]), via: .tcp)
        try await waitCaughtUp(service, f.log)
        let before = FileOperations.inode(f.path + "/aggregates.sqlite")
        let pipeline = f.pipeline
        let producer = Task {
            for chunk in stride(from: 20_000, to: 40_000, by: 500) { _ = try await pipeline.submit(Array(readings[chunk..<chunk + 500]), via: .http) }
        }
        let log = f.log
        let result = try await onThread("test-rebuild") { try AggregateRebuild.rebuildWhileServing(log: log, aggregator: service) }
        try await producer.value
        #expect(result.readings >= 20_000)
        #expect(FileOperations.inode(f.path + "/aggregates.sqlite") != before, "swapped in")
        try await waitCaughtUp(service, f.log)
        service.requestStop()
        await service.waitUntilFinished()
        running.cancel()
        await running.value
        let live = try AggregateStore(path: f.path + "/aggregates.sqlite", readOnly: true).allAggregates()
        let out = f.path + "/reference.sqlite"
        _ = try AggregateRebuild.build(dataDirectory: f.path, output: out)
        func strip(_ a: [Aggregate]) -> [Aggregate] { a.map { var x = $0; x.lastUpdated = ""; return x } }
        #expect(strip(live) == strip(try AggregateStore(path: out, readOnly: true).allAggregates()))
        #expect(live.reduce(0) { $0 + $1.count } == 40_000)
    }

    @Test func untilFoldsOnlyWhatWasAppendedBefore() async throws {
        let time = ManualTime()
        let f = try await Fixture.make(partitions: 1, time: time)
        defer { f.close() }
        _ = try await f.pipeline.submit((0..<10).map { r("u", Int64($0)) }, via: .tcp)
        let cut = time.wallNanoseconds
        time.advance(by: .nanoseconds(1))
        _ = try await f.pipeline.submit((10..<25).map { r("u", Int64($0)) }, via: .tcp)
        let out = f.path + "/until.sqlite"
        let result = try AggregateRebuild.build(dataDirectory: f.path, output: out, until: cut)
        #expect(result.readings == 10)
        #expect(try AggregateStore(path: out, readOnly: true).allAggregates().first?.count == 10)
    }
}

@Suite struct ConsumerGroupTests {
    @Test func groupsAreIndependentAndResetByOffsetTimeAndEnds() async throws {
        let f = try await Fixture.make(partitions: 2)
        defer { f.close() }
        let base: Int64 = 1_700_000_000_000_000_000
        for i in 0..<100 { _ = try await f.pipeline.submit([r("g\(i % 4)", base + Int64(i) * 1_000_000_000)], via: .tcp) }
        let groups = ConsumerGroups(dataDirectory: f.path, partitions: 2)
        #expect(try groups.committed("alpha") == nil)
        try groups.commit("alpha", offsets: [3, 4])
        try groups.commit("beta", offsets: [10, 0])
        #expect(try groups.committed("alpha") == [3, 4])
        #expect(try groups.committed("beta") == [10, 0])
        #expect(groups.list() == ["alpha", "beta"])
        let log = f.log
        func reset(_ target: ConsumerGroups.ResetTarget, partition: Int? = nil) throws -> [Int64] {
            try groups.resetOffsets("alpha", to: target, partition: partition,
                                    start: { log.partitions[$0].startOffset }, end: { log.partitions[$0].endOffset },
                                    seek: { (p: Int, t: Int64) throws(LogError) -> Int64 in try log.offset(partition: p, atOrAfter: t) })
        }
        let ends = log.partitions.map(\.endOffset)
        #expect(try reset(.earliest) == [0, 0])
        #expect(try reset(.latest) == ends)
        #expect(try reset(.latest, partition: 1) == [3, ends[1]])
        #expect(try reset(.offset(1_000_000)) == ends)
        #expect(try reset(.timestamp(base + 1000 * 1_000_000_000)) == ends)
        let middle = try reset(.timestamp(base + 50 * 1_000_000_000))
        #expect(middle[0] > 0 && middle[0] < ends[0])
        #expect(try groups.committed("beta") == [10, 0], "resetting one group leaves another alone")
        #expect(throws: LogError.self) { try groups.commit("aggregator", offsets: [0, 0]) }
        #expect(throws: LogError.self) { try groups.commit("../evil", offsets: [0, 0]) }
    }
}
