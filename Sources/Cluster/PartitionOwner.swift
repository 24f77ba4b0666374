public import JetStream
public import LogStore
public import SensorLogCore
import Dispatch
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

    public init(partition: Int, stream: PartitionStream, lease: Lease, log: Log, writeWait: Duration = .seconds(5)) {
        self.partition = partition
        self.stream = stream
        self.lease = lease
        self.log = log
        self.writeWait = writeWait
        follower = StreamFollower(partition: partition)
    }

    /// Follows the stream into the local log up to its current end. - Returns: batches appended.
    @discardableResult
    public func catchUp() async throws -> Int {
        await serial.acquire()
        defer { serial.release() }
        return try await followToEnd()
    }

    private func followToEnd() async throws -> Int {
        var appended = 0
        let stream = stream
        while true {
            let from = follower.nextSequence
            let (tail, entries) = try await NATSConnection.offPool(Self.reads) { () throws(NATSError) in
                let tail = try stream.lastSequence()
                return (tail, from <= tail ? try stream.entries(from: from, limit: 1_000) : [])
            }
            guard from <= tail else { return appended }
            var next = follower  // applied on a copy (an actor's property cannot be borrowed across an
            appended += try await next.apply(entries, to: log)  // await); `serial` keeps anyone else out meanwhile
            follower = next
            if entries.isEmpty {
                // Nothing of ours up to the end (not a sensorlog message): past it.
                follower.advance(through: tail, epoch: follower.epoch)
            }
        }
    }

    /// The stream's reads and writes block on the network: they run on these threads, not on
    /// the cooperative pool (see `NATSConnection.offPool`).
    static let reads = DispatchQueue(label: "sensorlog.cluster.reads", attributes: .concurrent)
    static let writes = DispatchQueue(label: "sensorlog.cluster.writes", attributes: .concurrent)

    /// Takes the partition over: the lease, then the local log caught up to the stream's end,
    /// then a fence after that end, so that a former owner's next write is refused.
    /// - Returns: false when another node holds the lease, or wrote after the end first.
    public func takeOver() async throws -> Bool {
        await serial.acquire()
        defer { serial.release() }
        _ = try stream.open()  // the stream exists from here on
        guard let newEpoch = try lease.take() else { return false }
        do {
            try await followToEnd()
            let tail = follower.nextSequence - 1
            guard case .stored(let sequence) = try stream.writeFence(epoch: newEpoch, after: tail, deadline: .now + writeWait) else {
                try? lease.release()
                return false
            }
            follower.advance(through: sequence, epoch: newEpoch)
            lastSequence = sequence
            epoch = newEpoch
            return true
        } catch {
            try? lease.release()  // let another node have it without waiting out the TTL
            throw error
        }
    }

    /// Appends `readings` (all of this partition) as its owner: the batch is written to the
    /// stream, and then to the local log. - Returns: where the local log put them.
    /// - Throws: `Failure.notOwner` when fenced; the stream's or the log's error otherwise. Either
    ///   way this node steps down: after a write whose outcome it could not learn, or a batch the
    ///   stream holds and its log does not, only a new `takeOver` (which catches up from the
    ///   stream) makes its log and the stream agree again.
    public func append(_ readings: [Reading]) async throws -> AppendResult {
        await serial.acquire()
        defer { serial.release() }
        guard let epoch else { throw Failure.notOwner }
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
    public func renew() throws -> Bool {
        guard epoch != nil else { return false }
        if try lease.renew() { return true }
        stepDown()
        return false
    }

    /// Gives the partition up on purpose (another node is preferred, or shutdown): after the
    /// append under way, the lease is released so the next owner need not wait out its TTL.
    public func resign() async {
        await serial.acquire()
        defer { serial.release() }
        stepDown()
        try? lease.release()
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
