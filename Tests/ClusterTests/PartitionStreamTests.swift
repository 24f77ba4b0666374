import Cluster
import Foundation
import JetStream
import LogStore
import SensorLogCore
import TestSupport
import Testing

/// A partition's stream written by its owners and followed into other nodes' logs, on three real
/// nats-servers: the follower's log is the owner's byte for byte; a former owner is fenced; a
/// former owner's write that slips in after a fence is skipped by every follower; a retried write
/// is stored once.
extension NATSSuites {
    @Suite struct PartitionStreamTests {
        static var limits: Limits {
            var l = Limits()
            l.partitions = 1
            return l
        }

        /// The batches of a one-partition source log: what owners publish, in order.
        func sourceBatches(_ dir: TemporaryDirectory, sensors: Int = 200) throws -> [[UInt8]] {
            let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: Self.limits))
            let readings = standardWorkload(seconds: 2, sensors: sensors, seed: testSeed())
            _ = try log.appendAll(readings, batch: 100)
            try log.close()
            return try storedBatches(dir.path, partition: 0)
        }

        func base(_ batch: [UInt8]) -> Int64 { batch.withUnsafeBytes { Int64(littleEndian: $0.loadUnaligned(as: Int64.self)) } }
        var soon: ContinuousClock.Instant { .now + .seconds(20) }

        func follow(_ stream: PartitionStream, into dir: TemporaryDirectory) async throws -> (Log, StreamFollower) {
            let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: Self.limits))
            var follower = StreamFollower(partition: 0)
            _ = try await follower.apply(try stream.entries(from: 1, limit: 100_000).entries, to: log)
            return (log, follower)
        }

        /// A cluster, a connection, a source log's batches and an empty directory for a follower.
        func withSource(_ body: (NATSConnection, [[UInt8]], TemporaryDirectory) async throws -> Void) async throws {
            let cluster = try NATSTestCluster()
            defer { cluster.stop() }
            let c = try cluster.connect()
            defer { c.close() }
            let source = TemporaryDirectory(), copy = TemporaryDirectory()
            defer { source.cleanup(); copy.cleanup() }
            let batches = try sourceBatches(source)
            try await body(c, batches, copy)
        }

        @Test func aFollowersLogIsTheOwnersByteForByte() async throws {
            try await withSource { c, batches, copy in
                let stream = PartitionStream(c, partition: 0)
                var last = try stream.open()
                #expect(try stream.writeFence(epoch: 7, after: last, deadline: soon) == .stored(1))
                last = 1
                for batch in batches {
                    guard case .stored(let sequence) = try stream.writeBatch(batch, baseOffset: base(batch), epoch: 7, after: last, deadline: soon) else {
                        Issue.record("fenced without a rival")
                        return
                    }
                    last = sequence
                }
                let (log, follower) = try await follow(stream, into: copy)
                try log.close()
                #expect(follower.nextSequence == last + 1 && follower.epoch == 7 && follower.skipped == 0)
                #expect(try storedBatches(copy.path, partition: 0) == batches)
            }
        }

        @Test func aFormerOwnerIsFencedAndItsLateWriteIsSkipped() async throws {
            try await withSource { c, batches, copy in
                #expect(batches.count >= 4)
                let stream = PartitionStream(c, partition: 0)
                _ = try stream.open()
                // Owner A, epoch 1: its fence and two batches.
                _ = try stream.writeFence(epoch: 1, after: 0, deadline: soon)
                _ = try stream.writeBatch(batches[0], baseOffset: base(batches[0]), epoch: 1, after: 1, deadline: soon)
                _ = try stream.writeBatch(batches[1], baseOffset: base(batches[1]), epoch: 1, after: 2, deadline: soon)
                // Owner B, epoch 2, reads the tail (3) and fences after it.
                #expect(try stream.writeFence(epoch: 2, after: 3, deadline: soon) == .stored(4))
                // A wakes up and writes its next batch where it believes the stream ends: fenced.
                #expect(try stream.writeBatch(batches[2], baseOffset: base(batches[2]), epoch: 1, after: 3, deadline: soon) == .fenced)
                // Should A's write slip in after the fence all the same (the expected-sequence check is
                // made before replication), followers skip it: here it is forced in with B's expectation.
                try batches[2].withUnsafeBytes { raw in
                    _ = try c.publish(raw, subject: stream.spec.subject, messageID: "P0:1:late", expectedLastSequence: 4,
                                      headers: [PartitionStream.epochHeader: "1", PartitionStream.kindHeader: "batch"])
                }
                // B goes on from the offsets it holds (A's two batches) after the stream's end (5).
                #expect(try stream.writeBatch(batches[2], baseOffset: base(batches[2]), epoch: 2, after: 5, deadline: soon) == .stored(6))
                #expect(try stream.writeBatch(batches[3], baseOffset: base(batches[3]), epoch: 2, after: 6, deadline: soon) == .stored(7))
                let (log, follower) = try await follow(stream, into: copy)
                try log.close()
                #expect(follower.epoch == 2 && follower.skipped == 1)
                #expect(try storedBatches(copy.path, partition: 0) == Array(batches.prefix(4)))
            }
        }

        /// A write retried after its acknowledgement was lost is stored once, and reported stored;
        /// the same batch under another epoch, or other bytes under the same id, are fenced.
        @Test func aRetriedWriteIsStoredOnce() throws {
            let cluster = try NATSTestCluster()
            defer { cluster.stop() }
            let c = try cluster.connect()
            defer { c.close() }
            let stream = PartitionStream(c, partition: 0, duplicateWindow: .seconds(60))
            _ = try stream.open()
            let batch = Array("not a real batch, the stream does not look".utf8)
            _ = try stream.writeFence(epoch: 3, after: 0, deadline: soon)
            #expect(try stream.writeBatch(batch, baseOffset: 0, epoch: 3, after: 1, deadline: soon) == .stored(2))
            #expect(try stream.writeBatch(batch, baseOffset: 0, epoch: 3, after: 1, deadline: soon) == .stored(2))
            #expect(try stream.writeBatch(batch, baseOffset: 0, epoch: 4, after: 1, deadline: soon) == .fenced)
            // The same id with other bytes (an unresolved write's retry that re-encoded): not ours.
            #expect(try stream.writeBatch(Array("another batch at the same offset".utf8), baseOffset: 0, epoch: 3, after: 1,
                                          deadline: soon) == .fenced)
            #expect(try c.streamState(stream.spec.name).lastSequence == 2)
        }
    }
}
