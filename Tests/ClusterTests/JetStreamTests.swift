import Foundation
import JetStream
import TestSupport
import Testing

/// The JetStream calls cluster mode rests on, against three real nats-servers: a publish that
/// expects the stream's last sequence (the fence a former owner runs into), message ids, reads by
/// sequence and of the tail, purges by sequence, and leases by compare-and-set.
extension NATSSuites {
    @Suite struct JetStreamTests {
        static let spec = StreamSpec(name: "SLOG_P0", subject: "slog.p0", replicas: 3,
                                     duplicateWindowNanoseconds: 2_000_000_000, maxMessageBytes: 1 << 20)

        func withCluster(_ body: (NATSTestCluster, NATSConnection) throws -> Void) throws {
            let cluster = try NATSTestCluster()
            defer { cluster.stop() }
            let connection = try cluster.connect()
            defer { connection.close() }
            try body(cluster, connection)
        }

        func publish(_ c: NATSConnection, _ text: String, id: String? = nil, expecting last: UInt64?) throws -> PublishAck {
            try Array(text.utf8).withUnsafeBytes {
                try c.publish($0, subject: Self.spec.subject, messageID: id, expectedLastSequence: last, headers: ["Slog-Epoch": "1"])
            }
        }

        @Test func aPublishExpectingAnotherLastSequenceIsRefused() throws {
            try withCluster { _, c in
                let created = try c.ensureStream(Self.spec)
                #expect(created.lastSequence == 0 && created.replicas.count == 2)
                // Expecting 0 on the empty stream: the first fence of a new partition.
                #expect(try publish(c, "fence", id: "P0:0:1", expecting: 0) == PublishAck(sequence: 1, duplicate: false))
                #expect(try publish(c, "batch", id: "P0:0:2", expecting: 1) == PublishAck(sequence: 2, duplicate: false))
                let stale = #expect(throws: NATSError.self) { try publish(c, "zombie", id: "P0:9:9", expecting: 1) }
                #expect(stale?.kind == .wrongLastSequence && stale?.apiCode == 10071)
                let again = #expect(throws: NATSError.self) { try publish(c, "again", id: "P0:9:10", expecting: 0) }
                #expect(again?.kind == .wrongLastSequence)
                // A retry with the same id inside the window: acknowledged as a duplicate, not stored.
                #expect(try publish(c, "batch", id: "P0:0:2", expecting: 1) == PublishAck(sequence: 2, duplicate: true))
                #expect(try c.streamState(Self.spec.name).lastSequence == 2)
                // A second node finds the stream as it is.
                #expect(try c.ensureStream(Self.spec).lastSequence == 2)
            }
        }

        @Test func messagesReadBySequenceAndTailAndPurgeBySequence() throws {
            try withCluster { _, c in
                _ = try c.ensureStream(Self.spec)
                #expect(try c.lastMessage(Self.spec.name, subject: Self.spec.subject) == nil)
                for i in 0..<5 { _ = try publish(c, "m\(i)", id: "id\(i)", expecting: UInt64(i)) }
                let third = try #require(try c.message(Self.spec.name, sequence: 3))
                #expect(third.data == Array("m2".utf8) && third.headers["Slog-Epoch"] == "1" && third.headers["Nats-Msg-Id"] == "id2")
                #expect(try c.lastMessage(Self.spec.name, subject: Self.spec.subject)?.sequence == 5)
                #expect(try c.message(Self.spec.name, sequence: 6) == nil)
                try c.purge(Self.spec.name, below: 4)
                let state = try c.streamState(Self.spec.name)
                #expect(state.firstSequence == 4 && state.lastSequence == 5 && state.messages == 2)
                #expect(try c.message(Self.spec.name, sequence: 2) == nil)
                // The sequence goes on after a purge: an owner's expectation still holds.
                #expect(try publish(c, "m5", id: "id5", expecting: 5).sequence == 6)
            }
        }

        @Test func leasesAreTakenAndRenewedOnlyByCompareAndSet() throws {
            try withCluster { _, c in
                let a = try KeyValueBucket(c, name: "slog-leases", replicas: 3)
                let b = try KeyValueBucket(c, name: "slog-leases", replicas: 3)  // another node opening it
                #expect(try a.get("p0") == nil)
                let first = try a.create("p0", Array("node-a".utf8))
                let taken = #expect(throws: NATSError.self) { try b.create("p0", Array("node-b".utf8)) }
                #expect(taken?.kind == .wrongLastSequence)
                let renewed = try a.update("p0", Array("node-a".utf8), revision: first)
                #expect(renewed > first)
                let stale = #expect(throws: NATSError.self) { try b.update("p0", Array("node-b".utf8), revision: first) }
                #expect(stale?.kind == .wrongLastSequence)
                let now = try #require(try b.get("p0"))
                #expect(now.value == Array("node-a".utf8) && now.revision == renewed)
            }
        }

        /// kill -9 of the stream's leader: the publish that follows is retried with the same id and
        /// expectation until a new leader answers; nothing is stored twice, and the killed server,
        /// restarted, catches up.
        @Test func publishesResumeAfterTheStreamLeaderIsKilled() throws {
            try withCluster { cluster, c in
                _ = try c.ensureStream(Self.spec)
                for i in 0..<20 { _ = try publish(c, "m\(i)", id: "id\(i)", expecting: UInt64(i)) }
                let leader = try #require(try c.streamState(Self.spec.name).leader)
                cluster.kill(leader)
                let start = ContinuousClock.now
                var ack: PublishAck?
                while ack == nil, ContinuousClock.now - start < .seconds(30) {
                    do { ack = try publish(c, "m20", id: "id20", expecting: 20) } catch let error as NATSError where error.kind != .wrongLastSequence {
                        usleep(50_000)  // no leader yet: the same id and expectation again
                    }
                }
                #expect(ack?.sequence == 21)
                try cluster.restart(leader)
                var state = try c.streamState(Self.spec.name)
                while state.replicas.contains(where: { !$0.current || $0.lag > 0 }) || state.replicas.count < 2, ContinuousClock.now - start < .seconds(60) {
                    usleep(100_000)
                    state = try c.streamState(Self.spec.name)
                }
                #expect(state.lastSequence == 21 && state.messages == 21)
                #expect(state.replicas.allSatisfy { $0.current && !$0.offline })
            }
        }
    }
}

/// Leases on a bucket whose entries expire, against the real cluster: one holder at a time, an
/// epoch that grows with every take, a lease that lapses when not renewed, and a release.
/// Key-value reads may come from a follower that is behind (`allow_direct`), so a take that finds
/// the lease held, or a holder read, is asked again until a deadline, as an owner would.
extension NATSSuites {
    @Suite struct LeaseTests {
        /// `attempt` until it gives a value, asking again on nil or a timeout, for up to 20 s.
        func eventually<T>(_ attempt: () throws -> T?) throws -> T? {
            let start = ContinuousClock.now
            while ContinuousClock.now - start < .seconds(20) {
                do {
                    if let value = try attempt() { return value }
                } catch {
                    guard (error as? NATSError)?.kind == .timeout else { throw error }
                }
                usleep(100_000)
            }
            return nil
        }

        @Test func oneHolderAtATimeAndALapsedLeaseIsTakenWithAHigherEpoch() throws {
            let cluster = try NATSTestCluster()
            defer { cluster.stop() }
            let c = try cluster.connect()
            defer { c.close() }
            let bucket = try KeyValueBucket(c, name: "slog-leases", replicas: 3, ttl: .seconds(2))
            let a = Lease(bucket: bucket, key: "p0", holder: "node-a"), b = Lease(bucket: bucket, key: "p0", holder: "node-b")
            let first = try #require(try a.take())
            #expect(try b.take() == nil && b.epoch == nil)
            #expect(try eventually { try b.currentHolder() } == "node-a")
            #expect(try a.renew())
            // node-a stops renewing: once the servers expire the entry, node-b takes it.
            let taken = try #require(try eventually { try b.take() })
            #expect(taken > first)
            #expect(try a.renew() == false && a.epoch == nil)  // the former holder learns it lost
            // A release frees it at once; the next take has a higher epoch still.
            try b.release()
            let third = try #require(try eventually { try a.take() })
            #expect(third > taken)
            // A restarted holder takes its own lease back, with a new epoch.
            let again = Lease(bucket: bucket, key: "p0", holder: "node-a")
            #expect(try #require(try eventually { try again.take() }) > third)
            #expect(try a.renew() == false)
        }
    }
}
