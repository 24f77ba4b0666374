import Cluster
import Foundation
import JetStream
import LogStore
import SensorLogCore
import TestSupport
import Testing

extension NATSSuites {
    /// Two nodes and a follower on three real nats-servers: the owner's appends reach the
    /// follower byte for byte; a former owner whose lease lapsed is fenced at its next append
    /// and steps down; the new owner goes on from the former's last batch.
    @Suite struct PartitionOwnerTests {
        static var limits: Limits {
            var l = Limits()
            l.partitions = 1
            return l
        }

        func open(_ dir: TemporaryDirectory) throws -> Log {
            try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: Self.limits))
        }

        func owner(_ c: NATSConnection, _ bucket: KeyValueBucket, node: String, log: Log) -> PartitionOwner {
            PartitionOwner(partition: 0, stream: PartitionStream(c, partition: 0), lease: Lease(bucket: bucket, key: "p0", holder: node), log: log)
        }

        @Test func aFormerOwnerIsFencedAndTheNewOneGoesOn() async throws {
            let cluster = try NATSTestCluster()
            defer { cluster.stop() }
            let c = try cluster.connect()
            defer { c.close() }
            let dirs = (0..<3).map { _ in TemporaryDirectory() }
            defer { dirs.forEach { $0.cleanup() } }
            let bucket = try KeyValueBucket(c, name: "slog-leases", replicas: 3, ttl: .seconds(2))
            let (logA, logB, logF) = (try open(dirs[0]), try open(dirs[1]), try open(dirs[2]))
            let a = owner(c, bucket, node: "node-a", log: logA), b = owner(c, bucket, node: "node-b", log: logB)
            let readings = standardWorkload(seconds: 10, sensors: 50, seed: testSeed())
            let chunks = stride(from: 0, to: readings.count, by: 100).map { Array(readings[$0..<min($0 + 100, readings.count)]) }
            #expect(chunks.count >= 4)

            #expect(try await a.takeOver())
            #expect(try await b.takeOver() == false)
            for chunk in chunks.prefix(2) { _ = try await a.append(chunk) }
            // node-a stalls: its lease lapses and node-b takes over (catching up from the stream).
            let start = ContinuousClock.now
            var taken = false
            while !taken, ContinuousClock.now - start < .seconds(20) {
                taken = (try? await b.takeOver()) ?? false
                if !taken { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(taken)
            // node-a wakes and appends: fenced, it steps down.
            await #expect(throws: PartitionOwner.Failure.notOwner) { _ = try await a.append(chunks[2]) }
            #expect(await a.epoch == nil)
            for chunk in chunks.suffix(from: 2) { _ = try await b.append(chunk) }

            var follower = StreamFollower(partition: 0)
            _ = try await follower.apply(try PartitionStream(c, partition: 0).entries(from: 1, limit: 100_000).entries, to: logF)
            for log in [logA, logB, logF] { try log.close() }
            let (batchesA, batchesB, batchesF) = (try storedBatches(dirs[0].path, partition: 0),
                                                  try storedBatches(dirs[1].path, partition: 0),
                                                  try storedBatches(dirs[2].path, partition: 0))
            #expect(batchesF == batchesB && batchesB.count == chunks.count)
            #expect(Array(batchesB.prefix(2)) == batchesA && batchesA.count == 2)
        }
    }
}
