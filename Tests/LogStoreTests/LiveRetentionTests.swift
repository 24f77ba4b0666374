import Foundation
import SensorLogCore
import Synchronization
import TestSupport
import Testing

@testable import LogStore

/// Retention inside the running server (`Log.applyRetention`): whole closed segments from the
/// start, never past what the aggregator folded, the floor raised before any file goes, and
/// readers that keep reading across the deletion.
@Suite struct LiveRetentionTests {
    static let limits: Limits = {
        var limits = Limits()
        limits.partitions = 1
        limits.segmentBytes = 64 << 10
        return limits
    }()

    /// A one-partition log of 64 KiB segments, readings an hour apart ending a day before `time`.
    func open(_ dir: TemporaryDirectory, _ time: ManualTime, readings: Int = 30_000) throws -> Log {
        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: Self.limits, fsync: .never, time: time))
        let start = time.wallNanoseconds - Int64(readings + 24) * 3_600_000_000_000
        // Values that do not compress to nothing, so that 64 KiB segments really roll.
        var rng = SplitMix64(seed: 7)
        _ = try log.appendAll((0..<readings).map {
            Reading(sensorID: "s", type: "temperature", value: Double(rng.next() % 100_000) / 1000, location: "lab",
                    timestamp: start + Int64($0) * 3_600_000_000_000 + Int64(rng.next() % 1000))
        }, batch: 500)
        return log
    }

    func offsets(_ log: Log, from offset: Int64 = 0) throws -> [Int64] {
        var out: [Int64] = []
        let reader = log.reader(partition: 0, from: offset)
        var batch = DecodedBatch()
        while let first = try reader.next(into: &batch) { out += (first..<batch.count).map { batch.offset(at: $0) } }
        return out
    }

    @Test func nothingGoesPastWhatTheAggregatorFolded() async throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let time = ManualTime()
        let log = try open(dir, time)
        defer { try? log.close() }
        let segments = log.partitions[0].segmentCount
        let result = try await log.applyRetention(RetentionPolicy(maxAge: .seconds(3600)), now: time.wallNanoseconds, foldedUpTo: [0],
                                                  floorsRaised: { _ in Issue.record("floors raised with nothing to delete") })
        #expect(result.removed.isEmpty)
        #expect(result.blocked[0]?.contains("folded partition 0 up to offset 0") == true, "\(result.blocked)")
        #expect(log.partitions[0].segmentCount == segments && log.partitions[0].startOffset == 0)
        #expect(!FileManager.default.fileExists(atPath: DataLayout(dir.path).retentionFloors))
    }

    @Test func oldSegmentsGoUpToTheFoldedOffsetAfterTheirFloorIsRaised() async throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let time = ManualTime()
        let log = try open(dir, time)
        let all = try offsets(log)
        let folded: Int64 = 12_345
        // A reader in the middle of the first segment when the pass runs.
        let early = log.reader(partition: 0, from: 0)
        var batch = DecodedBatch()
        _ = try early.next(into: &batch)
        let firstSegment = try #require(try log.partitions[0].segmentBases().first)
        let firstFile = log.partitions[0].segmentPaths(firstSegment).log
        let raised = Mutex<[Int64?]>([])
        let result = try await log.applyRetention(RetentionPolicy(maxAge: .seconds(3600)), now: time.wallNanoseconds, foldedUpTo: [folded],
                                                  floorsRaised: { floors in
            raised.withLock { $0 = floors }
            #expect(FileManager.default.fileExists(atPath: firstFile), "a file went before its floor was raised")
        })
        let removed = try #require(result.removed.first)
        #expect(removed.startOffset <= folded && removed.startOffset > 0 && removed.segments > 0)
        #expect(log.partitions[0].startOffset == removed.startOffset)
        #expect(raised.withLock { $0 } == [removed.floor])
        #expect(result.blocked[0] != nil, "the next segment is past the folded offset")
        #expect(!FileManager.default.fileExists(atPath: firstFile))
        // Every deleted reading is at or before the floor; every kept one after it.
        #expect(try offsets(log) == Array(all[Int(removed.startOffset)...]))
        // The early reader reads its open segment to the end, then on from the new start.
        var seen = (0..<batch.count).map { batch.offset(at: $0) }
        while let first = try early.next(into: &batch) { seen += (first..<batch.count).map { batch.offset(at: $0) } }
        #expect(seen.last == all.last)
        #expect(Set(seen).isSuperset(of: all[Int(removed.startOffset)...]))
        try log.close()

        // Reopened: the start and the floor are where the pass left them.
        let reopened = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: Self.limits, fsync: .never, time: time))
        defer { try? reopened.close() }
        #expect(reopened.partitions[0].startOffset == removed.startOffset)
        #expect(try Retention.floors(dataDirectory: dir.path, partitions: 1) == [removed.floor])
    }

    /// A reader that retention does not wait for (a consumer group, a query) is inside the first
    /// segment when retention deletes it and the next ones: it goes on from the new start.
    @Test func aReaderLeftBehindByRetentionGoesOnFromTheNewStart() async throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let time = ManualTime()
        let log = try open(dir, time)
        defer { try? log.close() }
        let bases = try log.partitions[0].segmentBases()
        try #require(bases.count >= 4)
        let behind = log.reader(partition: 0, from: 0)
        var batch = DecodedBatch()
        _ = try behind.next(into: &batch)
        let result = try await log.applyRetention(RetentionPolicy(maxAge: .seconds(3600)), now: time.wallNanoseconds, foldedUpTo: [bases[3]],
                                                  floorsRaised: { _ in })
        #expect(result.removed.first?.segments == 3)
        var offsets: [Int64] = []
        while let first = try behind.next(into: &batch) { offsets += (first..<batch.count).map { batch.offset(at: $0) } }
        #expect(offsets.last == log.partitions[0].endOffset - 1)
        #expect(offsets.drop { $0 < bases[3] } == ArraySlice(bases[3]..<log.partitions[0].endOffset))
    }

    @Test func aSizeLimitKeepsTheNewestAndAnOldActiveSegmentIsClosedToGo() async throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let time = ManualTime()
        let log = try open(dir, time)
        defer { try? log.close() }
        let end = log.partitions[0].endOffset
        let bySize = try await log.applyRetention(RetentionPolicy(maxBytes: 200_000), now: time.wallNanoseconds, foldedUpTo: [end],
                                                  floorsRaised: { _ in })
        #expect(bySize.segments > 0 && bySize.blocked.isEmpty)
        let kept = try log.partitions[0].segmentBases().map { log.partitions[0].segmentPaths($0).bytesOnDisk }
        #expect(kept.reduce(0, +) <= 200_000)
        #expect(kept.reduce(0, +) + kept.first! > 200_000, "deleted one segment too many")

        // Every reading is older than a day: the active segment is closed and goes too.
        let byAge = try await log.applyRetention(RetentionPolicy(maxAge: .seconds(3600)), now: time.wallNanoseconds, foldedUpTo: [end],
                                                 floorsRaised: { _ in })
        #expect(byAge.segments > 0)
        #expect(log.partitions[0].startOffset == end && log.partitions[0].endOffset == end)
        #expect(try offsets(log).isEmpty)
        _ = try log.appendBlocking([Reading(sensorID: "s", type: "temperature", value: 1, location: "lab", timestamp: time.wallNanoseconds)],
                                   toPartition: 0)
        #expect(try offsets(log) == [end])
    }
}
