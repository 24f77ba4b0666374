public import JetStream
public import LogStore
public import SensorLogCore
import Synchronization

/// A node's ownership of one partition (docs/cluster-design.md): its lease, its fence in the
/// partition's stream, and its appends, each published to the stream before it enters the local
/// log. An actor: a partition has one writer, and its appends go one at a time.
public actor PartitionOwner {
    public enum Failure: Error, Equatable {
        /// Another node holds the partition, or fenced it first: this node has stepped down.
        case notOwner
    }

    public let partition: Int
    public let stream: PartitionStream
    public let lease: Lease
    public let log: Log
    /// How long one write to the stream may take before its outcome is left unresolved.
    public let writeWait: Duration
    public private(set) var follower: StreamFollower
    /// The epoch this node owns the partition under, or nil when it does not.
    public private(set) var epoch: UInt64?
    /// The stream's last sequence, as this owner wrote it.
    public private(set) var lastSequence: UInt64 = 0
    private let serial = AsyncSerial()
    /// Where the stream's floor is recorded when retention purges it (nil: never purged here).
    public let floors: KeyValueBucket?
    /// Told the retention floor (newest timestamp removed) of a purged stream this node starts
    /// after: the dedupe must refuse a resend of what is gone as too old.
    private let floorRaised: @Sendable (Int64) async -> Void

    public init(partition: Int, stream: PartitionStream, lease: Lease, log: Log, writeWait: Duration = .seconds(5),
                floors: KeyValueBucket? = nil, floorRaised: @escaping @Sendable (Int64) async -> Void = { _ in }) {
        self.partition = partition
        self.stream = stream
        self.lease = lease
        self.log = log
        self.writeWait = writeWait
        self.floors = floors
        self.floorRaised = floorRaised
        follower = StreamFollower(partition: partition)
    }

    /// Follows the stream into the local log, one read of at most 1 000 messages: the lock it
    /// holds also serialises takeovers and resignations, which must not wait for a long catch-up.
    /// - Returns: whether the log reached the stream's end.
    public func catchUp() async throws -> Bool {
        await serial.acquire()
        defer { serial.release() }
        return try await followToEnd(rounds: 1)
    }

    /// Reads and applies the stream, `rounds` reads at most (nil: to its end).
    /// - Returns: whether the log reached the stream's end (or a replica is behind, which ends
    ///   this read too).
    @discardableResult
    private func followToEnd(rounds: Int? = nil) async throws -> Bool {
        let stream = stream
        var round = 0
        while rounds.map({ round < $0 }) ?? true {
            round += 1
            let (from, floors, key) = (follower.nextSequence, floors, StreamFloor.key(partition))
            typealias Read = (entries: [StreamEntry], through: UInt64)
            let (tail, read, purged) = try await NATSConnection.offPool(Self.reads) { () throws(NATSError) -> (UInt64, Read, StreamFloor??) in
                let (first, tail) = try stream.bounds()
                // Purged past this follower: where the stream starts (the floor recorded before the
                // purge; one at or past the first sequence describes a start that is all purgeable),
                // and under which epoch. None usable yet: the owner heals the record.
                if from < first, from <= tail, let floors {
                    let floor = try floors.get(key).flatMap { StreamFloor($0.value) }
                    return (tail, ([], from - 1), .some(floor.flatMap { $0.sequence >= first ? $0 : nil }))
                }
                let read: Read = from <= tail ? try stream.entries(from: from, limit: 1_000) : ([], from - 1)
                return (tail, read, .none)
            }
            if case .some(let floor) = purged {
                guard let floor else { return false }  // not caught up: the next round asks again
                try await start(at: floor)
                continue
            }
            guard from <= tail else { return true }  // at the end
            guard read.through >= from else { return false }  // a replica behind, or purged meanwhile: next round
            var next = follower  // applied on a copy (an actor's property cannot be borrowed across an
            _ = try await next.apply(read.entries, to: log)  // await); `serial` keeps anyone else out meanwhile
            follower = next
            // Past what was read that is not an entry (another program's message, a purged start).
            follower.advance(through: read.through, epoch: follower.epoch)
            if read.through >= tail { return true }
        }
        return false
    }

    /// Starts following a stream purged below `floor`: an empty copy starts at the floor's offset,
    /// taking its retention floor first (so a crash between leaves the floor raised, and a
    /// restart raises it again); a copy that ends before the floor with records in it cannot go on.
    /// - Throws: `.invalidLog` for such a copy.
    private func start(at floor: StreamFloor) async throws {
        let p = log.partitions[partition]
        if p.startOffset == p.endOffset, p.endOffset <= floor.offset {
            if let timestamp = floor.timestamp {
                try log.raiseRetentionFloor(partition, to: timestamp)
                await floorRaised(timestamp)
            }
            if p.endOffset < floor.offset { try log.startEmptyPartition(partition, at: floor.offset) }
        } else if p.endOffset < floor.offset {
            throw LogError(.invalidLog, "partition \(partition): this node's copy ends at offset \(p.endOffset), and retention purged the cluster's stream up to offset \(floor.offset): restore this node from a backup of a member, or start it with an empty data directory")
        }
        follower.advance(through: floor.sequence - 1, epoch: floor.epoch)
    }

    /// As the owner, after retention moved the local log's start to `localStart`: removes from
    /// the stream the batches that lie wholly before it, never one that a live node has yet to
    /// apply (`appliedByAll`: the least applied sequence of the nodes' reports). The floor is
    /// recorded first, so a follower that finds the stream purged knows where it starts; a record
    /// left ahead of the stream (a purge that failed after it) is finished, and one behind it (a
    /// former owner's, written late) rewritten. Appends go on meanwhile: the purge is far behind
    /// the stream's end. - Returns: the stream's new first sequence, or nil when nothing changed.
    public func purge(localStart: Int64, retentionFloor: Int64?, appliedByAll: UInt64) async throws -> UInt64? {
        // The last sequence and the log's end, read together: an append holds `serial` from its
        // write to the stream to its write to the log.
        await serial.acquire()
        let (held, last, end) = (epoch, lastSequence, log.partitions[partition].endOffset)
        serial.release()
        guard let epoch = held, let floors else { return nil }
        let (stream, key, lease) = (stream, StreamFloor.key(partition), lease)
        return try await NATSConnection.offPool(Self.control) { () throws(NATSError) -> UInt64? in
            // A former owner woken from a pause (its lease another's now) purges nothing.
            guard try lease.currentHolder() == lease.holder else { return nil }
            let (first, _) = try stream.bounds()
            let entry = try floors.get(key)
            let recorded = entry.flatMap { StreamFloor($0.value) }
            let limit = min(last + 1, appliedByAll + 1)  // the highest first sequence allowed
            if let recorded, recorded.sequence > first {
                // Recorded, not purged (the purge failed after the record): finish it once no live
                // node still needs what it removes.
                guard recorded.sequence <= limit else { return nil }
                try stream.purge(below: recorded.sequence)
                return recorded.sequence
            }
            var sequence = first
            if first < limit, try stream.firstBatch(endingAfter: localStart, in: first...first) == nil {  // the head is kept: done
                sequence = try stream.firstBatch(endingAfter: localStart, in: first...(limit - 1))?.sequence ?? limit
            }
            guard sequence > first || (first > 1 && (recorded?.sequence ?? 0) < first) else { return nil }
            // Where the stream starts then, and under which epoch: every batch carries the epoch in
            // force at it (a former owner's write cannot follow a fence: the expected-sequence
            // check refuses it). Past the last batch: this owner's end and epoch, read together.
            let next = sequence <= last ? try stream.firstBatch(endingAfter: -1, in: sequence...last) : nil
            let floor = StreamFloor(sequence: sequence, epoch: next?.epoch ?? epoch, offset: next?.base ?? end, timestamp: retentionFloor)
            // By compare-and-set: of two writers (a former owner's late pass), one loses and
            // looks again on its next pass.
            do throws(NATSError) {
                if let entry { _ = try floors.update(key, floor.encoded, revision: entry.revision) } else { _ = try floors.create(key, floor.encoded) }
            } catch where error.kind == .wrongLastSequence {
                return nil
            }
            if sequence > first { try stream.purge(below: sequence) }
            return sequence
        }
    }

    /// The stream's reads and writes block on the network: they run on these threads, not on
    /// the cooperative pool (see `NATSConnection.offPool`).
    static let reads = BlockingPool(name: "cluster-reads", threads: 4)
    static let writes = BlockingPool(name: "cluster-writes", threads: 8)
    /// Leases, fences and the control loop's other calls.
    static let control = BlockingPool(name: "cluster-control", threads: 2)

    /// Takes the partition over: the lease, then the local log caught up to the stream's end,
    /// then a fence after that end, so that a former owner's next write is refused.
    /// - Returns: false when another node holds the lease, or wrote after the end first.
    public func takeOver() async throws -> Bool {
        await serial.acquire()
        defer { serial.release() }
        let (stream, lease, wait) = (stream, lease, writeWait)
        let taken = try await NATSConnection.offPool(Self.control) { () throws(NATSError) in
            _ = try stream.open()  // the stream exists from here on
            return try lease.take()
        }
        guard let newEpoch = taken else { return false }
        do {
            try await followToEnd()
            let tail = follower.nextSequence - 1
            let fenced = try await NATSConnection.offPool(Self.control) { () throws(NATSError) in
                try stream.writeFence(epoch: newEpoch, after: tail, deadline: .now + wait)
            }
            guard case .stored(let sequence) = fenced else {
                await releaseLease()
                return false
            }
            follower.advance(through: sequence, epoch: newEpoch)
            lastSequence = sequence
            epoch = newEpoch
            return true
        } catch {
            await releaseLease()  // let another node have it without waiting out the TTL
            throw error
        }
    }

    private func releaseLease() async {
        let lease = lease
        _ = try? await NATSConnection.offPool(Self.control) { () throws(NATSError) in try lease.release() }
    }

    /// Appends `readings` (all of this partition) as its owner: the batch is written to the
    /// stream, and then to the local log. - Returns: where the local log put them.
    /// - Parameter expectedEnd: the local log's end the caller judged `readings` against (its
    ///   dedupe): refused `.unavailable` if the log has moved since (the caller's view is stale:
    ///   another epoch's batches came in meanwhile), nothing written, still the owner.
    /// - Throws: `Failure.notOwner` when fenced; the stream's or the log's error otherwise. Either
    ///   way this node steps down: after a write whose outcome it could not learn, or a batch the
    ///   stream holds and its log does not, only a new `takeOver` (which catches up from the
    ///   stream) makes its log and the stream agree again.
    public func append(_ readings: [Reading], expectedEnd: Int64? = nil) async throws -> AppendResult {
        await serial.acquire()
        defer { serial.release() }
        guard let epoch else { throw Failure.notOwner }
        if let expectedEnd, expectedEnd != log.partitions[partition].endOffset {
            throw LogError(.unavailable, "partition \(partition) moved on while the readings were checked; retry")
        }
        do {
            let batch = try log.encodeNext(readings, partition: partition)
            guard batch.count <= Int(stream.spec.maxMessageBytes) else {
                throw LogError(.invalidArgument, "a batch of \(batch.count) bytes is over the stream's message limit of \(stream.spec.maxMessageBytes)")
            }
            let base = batch.withUnsafeBytes { Int64(littleEndian: $0.loadUnaligned(as: Int64.self)) }
            let (stream, last, deadline) = (stream, lastSequence, ContinuousClock.now + writeWait)
            let outcome = try await NATSConnection.offPool(Self.writes) { () throws(NATSError) in
                try stream.writeBatch(batch, baseOffset: base, epoch: epoch, after: last, deadline: deadline)
            }
            guard case .stored(let sequence) = outcome else {
                throw Failure.notOwner
            }
            let result = try await log.appendCopy(batch, toPartition: partition)
            lastSequence = sequence
            follower.advance(through: sequence, epoch: epoch)
            return result
        } catch let error as LogError where error.code == .invalidArgument {
            throw error  // refused before anything was written: still the owner
        } catch {
            stepDown()
            throw error
        }
    }

    /// Renews the lease; steps down when it was lost. - Returns: whether this node still owns.
    public func renew() async throws -> Bool {
        guard epoch != nil else { return false }
        let lease = lease
        if try await NATSConnection.offPool(Self.control, { () throws(NATSError) in try lease.renew() }) { return true }
        stepDown()
        return false
    }

    /// Gives the partition up on purpose (another node is preferred, or shutdown): after the
    /// append under way, the lease is released so the next owner need not wait out its TTL.
    public func resign() async {
        await serial.acquire()
        defer { serial.release() }
        stepDown()
        await releaseLease()
    }

    /// Steps down without a word to the cluster (its renewals failed for too long).
    public func abandon() { stepDown() }

    private func stepDown() {
        epoch = nil
    }
}

/// One holder at a time across suspension points: an actor runs other calls while one awaits,
/// and a partition's writes must not interleave.
final class AsyncSerial: @unchecked Sendable {
    private let state = Mutex<(busy: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))

    func acquire() async {
        let free = state.withLock { s -> Bool in
            if s.busy { return false }
            s.busy = true
            return true
        }
        if free { return }
        await withCheckedContinuation { continuation in
            let now = state.withLock { s -> Bool in
                if s.busy { s.waiting.append(continuation); return false }
                s.busy = true
                return true
            }
            if now { continuation.resume() }
        }
    }

    func release() {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.waiting.isEmpty { s.busy = false; return nil }
            return s.waiting.removeFirst()
        }
        next?.resume()
    }
}
