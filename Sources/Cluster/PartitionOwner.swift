public import JetStream
public import LogStore
public import SensorLogCore

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

    public init(partition: Int, stream: PartitionStream, lease: Lease, log: Log, writeWait: Duration = .seconds(5)) {
        self.partition = partition
        self.stream = stream
        self.lease = lease
        self.log = log
        self.writeWait = writeWait
        follower = StreamFollower(partition: partition)
    }

    /// Follows the stream into the local log up to its current end.
    public func catchUp() async throws {
        let tail = try stream.open()
        while follower.nextSequence <= tail {
            let entries = try stream.entries(from: follower.nextSequence, limit: 1_000)
            var next = follower  // applied on a copy: an actor's stored property cannot be borrowed across an await
            _ = try await next.apply(entries, to: log)
            follower = next
            if entries.isEmpty {
                // Nothing of ours up to the end (purged, or not a sensorlog message): past it.
                follower.advance(through: tail, epoch: follower.epoch)
            }
        }
    }

    /// Takes the partition over: the lease, then the local log caught up to the stream's end,
    /// then a fence after that end, so that a former owner's next write is refused.
    /// - Returns: false when another node holds the lease, or wrote after the end first.
    public func takeOver() async throws -> Bool {
        guard let newEpoch = try lease.take() else { return false }
        try await catchUp()
        let tail = follower.nextSequence - 1
        switch try stream.writeFence(epoch: newEpoch, after: tail, deadline: .now + writeWait) {
        case .stored(let sequence):
            follower.advance(through: sequence, epoch: newEpoch)
            lastSequence = sequence
            epoch = newEpoch
            return true
        case .fenced:
            try lease.release()
            return false
        }
    }

    /// Appends `readings` (all of this partition) as its owner: the batch is written to the
    /// stream, and then to the local log. - Returns: where the local log put them.
    /// - Throws: `Failure.notOwner` when fenced (this node steps down); the stream's or the log's
    ///   error otherwise, the outcome then unknown: the follower will find the batch, or not.
    public func append(_ readings: [Reading]) async throws -> AppendResult {
        guard let epoch else { throw Failure.notOwner }
        let batch = try log.encodeNext(readings, partition: partition)
        let base = log.partitions[partition].endOffset
        switch try stream.writeBatch(batch, baseOffset: base, epoch: epoch, after: lastSequence, deadline: .now + writeWait) {
        case .stored(let sequence):
            lastSequence = sequence
            follower.advance(through: sequence, epoch: epoch)
        case .fenced:
            stepDown()
            throw Failure.notOwner
        }
        return try await log.appendCopy(batch, toPartition: partition)
    }

    /// Renews the lease; steps down when it was lost. - Returns: whether this node still owns.
    public func renew() throws -> Bool {
        guard epoch != nil else { return false }
        if try lease.renew() { return true }
        stepDown()
        return false
    }

    private func stepDown() {
        epoch = nil
    }
}
