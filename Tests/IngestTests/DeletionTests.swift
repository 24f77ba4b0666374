import Foundation
@testable import Ingest
import LogStore
import SensorLogCore
import Synchronization
import Testing

import TestSupport

/// Deleting a sensor while the server ingests (`IngestPipeline.delete`): the deletion record goes
/// in between two batches, readers stop seeing the readings at once, the type is released, and a
/// resend of any deleted reading is refused `deleted` — before and after a restart.
@Suite struct DeletionTests {
    func appended(_ outcomes: [IngestOutcome]) -> Int {
        outcomes.filter { if case .appended = $0 { return true } else { return false } }.count
    }

    @Test func aDeletedSensorsReadingsAreRefusedItsTypeReleasedAndNewerOnesStartAfresh() async throws {
        let f = try await Fixture.make(partitions: 2)
        defer { f.close() }
        _ = try await f.pipeline.submit((0..<100).map { r("gone", Int64($0)) } + (0..<100).map { r("kept", Int64($0)) }, via: .tcp)
        let deletions = try await f.pipeline.delete(["gone", "never-seen"])
        let deletion = try #require(deletions[0])
        #expect(deletion.lastReading == 99 && deletions[1] == nil)
        let (gone, kept) = (await f.pipeline.knows("gone"), await f.pipeline.knows("kept"))
        #expect(!gone && kept)
        #expect(try f.stored().keys.filter { $0.hasPrefix("gone@") }.isEmpty, "readers see none of it at once")

        let resend = try await f.pipeline.submit([r("gone", 0), r("gone", 99)], via: .http)
        #expect(resend == [.deleted, .deleted])
        // Newer readings start it afresh, with a new type; a duplicate of them is a duplicate.
        let fresh = try await f.pipeline.submit([r("gone", 100, type: "humidity"), r("gone", 100, type: "humidity")], via: .http)
        #expect(appended(fresh) == 1 && fresh[1] == .duplicate)

        // After a restart the deletion record says it all again.
        let g = try await f.reopen()
        defer { g.close() }
        #expect(try await g.pipeline.submit([r("gone", 50, type: "humidity")], via: .tcp) == [.deleted])
        #expect(try await g.pipeline.submit([r("gone", 101, type: "humidity")], via: .tcp).count == 1)
        #expect(try g.stored().keys.filter { $0.hasPrefix("gone@") }.sorted() == ["gone@100", "gone@101"])
        #expect(try g.stored().keys.filter { $0.hasPrefix("kept@") }.count == 100)
    }

    /// Appends race a deletion: whatever the interleaving, every reading of the sensor at or
    /// before the deletion's newest reading is gone for readers, and every later one is there.
    @Test func aDeletionBetweenConcurrentBatchesLeavesNoDeletedReadingVisible() async throws {
        let seed = UInt64(ProcessInfo.processInfo.environment["SENSORLOG_TEST_SEED"] ?? "") ?? UInt64.random(in: 0..<1 << 32)
        print("SENSORLOG_TEST_SEED=\(seed)")
        var rng = SplitMix64(seed: seed)
        let f = try await Fixture.make(partitions: 1)
        defer { f.close() }
        let pipeline = f.pipeline
        let producers = (0..<4).map { k in
            Task {
                for j in 0..<50 { _ = try await pipeline.submit((0..<20).map { r("racer", Int64(k * 1_000_000 + j * 20 + $0)) }, via: .tcp) }
            }
        }
        for _ in 0..<Int(rng.next() % 2_000) { await Task.yield() }
        let deletion = try #require(try await pipeline.delete(["racer"])[0])
        for p in producers { try await p.value }
        let left = try f.stored().keys.filter { $0.hasPrefix("racer@") }.map { Int64($0.dropFirst(6))! }
        #expect(left.allSatisfy { $0 > deletion.lastReading }, "a reading at or before the deletion's newest is visible")
        // Every reading not deleted is there: those after the horizon, refused none of them.
        let all = (0..<4).flatMap { k in (0..<1000).map { Int64(k * 1_000_000 + $0) } }
        #expect(Set(left) == Set(all.filter { $0 > deletion.lastReading }))
    }
}
