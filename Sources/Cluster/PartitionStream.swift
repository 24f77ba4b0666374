#if canImport(Glibc)
import Glibc
#endif
public import JetStream

/// One entry of a partition's stream: a batch of the partition's log, or the fence a new owner
/// writes when it takes the partition.
public struct StreamEntry: Sendable, Equatable {
    public enum Kind: String, Sendable { case batch, fence }
    public var sequence: UInt64
    public var kind: Kind
    /// The owner's epoch (its lease's revision) when it wrote the entry.
    public var epoch: UInt64
    /// The batch's bytes, as the owner's log encoded and numbered them (empty for a fence).
    public var batch: [UInt8]
}

/// Where a partition's stream starts after retention purged it: its first sequence, the epoch a
/// follower starting there reads it under (the fences before it are gone), the log offset of its
/// first batch, and the retention floor (the newest timestamp removed) the owner had. Written to
/// the cluster's configuration bucket before the purge, so every follower finds it replicated.
public struct StreamFloor: Sendable, Equatable {
    public var sequence: UInt64
    public var epoch: UInt64
    public var offset: Int64
    public var timestamp: Int64?

    public init(sequence: UInt64, epoch: UInt64, offset: Int64, timestamp: Int64?) {
        (self.sequence, self.epoch, self.offset, self.timestamp) = (sequence, epoch, offset, timestamp)
    }

    public static func key(_ partition: Int) -> String { "floor.p\(partition)" }

    public var encoded: [UInt8] { Array("\(sequence),\(epoch),\(offset),\(timestamp.map(String.init) ?? "")".utf8) }

    public init?(_ bytes: [UInt8]) {
        let f = String(decoding: bytes, as: UTF8.self).split(separator: ",", omittingEmptySubsequences: false)
        guard f.count == 4, let s = UInt64(f[0]), let e = UInt64(f[1]), let o = Int64(f[2]), o >= 0, f[3].isEmpty || Int64(f[3]) != nil else { return nil }
        self.init(sequence: s, epoch: e, offset: o, timestamp: Int64(f[3]))
    }
}

/// A partition's JetStream stream, as its owner writes it and every node reads it
/// (docs/cluster-design.md). Every write expects the stream's last sequence, so a former owner's
/// write after a new owner's fence is refused; every message id carries the epoch, so a former
/// owner's retry is never taken for a duplicate of the new owner's message.
public final class PartitionStream: @unchecked Sendable {
    public static let epochHeader = "Slog-Epoch"
    public static let kindHeader = "Slog-Kind"

    public let connection: NATSConnection
    public let partition: Int
    public let spec: StreamSpec

    public init(_ connection: NATSConnection, partition: Int, replicas: Int = 3, duplicateWindow: Duration = .seconds(120),
                maxMessageBytes: Int32 = 1 << 20) {
        self.connection = connection
        self.partition = partition
        spec = StreamSpec(name: "SLOG_P\(partition)", subject: "slog.p\(partition)", replicas: replicas,
                          duplicateWindowNanoseconds: Int64(duplicateWindow / .nanoseconds(1)), maxMessageBytes: maxMessageBytes)
    }

    /// Creates the stream, or finds it. - Returns: its last sequence.
    public func open() throws(NATSError) -> UInt64 { try connection.ensureStream(spec).lastSequence }

    /// The stream's last sequence now (0 when empty).
    public func lastSequence() throws(NATSError) -> UInt64 { try connection.streamState(spec.name).lastSequence }

    /// The stream's first and last sequences now (first is last + 1 when it is empty).
    public func bounds() throws(NATSError) -> (first: UInt64, last: UInt64) {
        let state = try state()
        return (state.firstSequence, state.lastSequence)
    }

    /// The stream's state as its leader reports it (bounds, leader, replicas).
    public func state() throws(NATSError) -> StreamState { try connection.streamState(spec.name) }

    /// The first batch in `range` that ends past `offset` (holds an offset at or after it): a
    /// binary search, since the batches' offsets grow with their sequence. Fences, and messages
    /// that are not sensorlog's, are stepped over.
    /// - Returns: its sequence, epoch and base offset; nil when none in `range` does.
    public func firstBatch(endingAfter offset: Int64, in range: ClosedRange<UInt64>) throws(NATSError) -> (sequence: UInt64, epoch: UInt64, base: Int64)? {
        var (lo, hi) = (range.lowerBound, range.upperBound + 1)  // the answer is in lo...hi (hi: none)
        var found: (sequence: UInt64, epoch: UInt64, base: Int64)?
        while lo < hi {
            let mid = lo + (hi - lo) / 2
            guard let batch = try batch(atOrAfter: mid, through: hi - 1) else {
                hi = mid  // only fences from mid on: the answer, if any, is below
                continue
            }
            if batch.next > offset {
                found = (batch.sequence, batch.epoch, batch.base)
                hi = mid
            } else {
                lo = batch.sequence + 1
            }
        }
        return found
    }

    private func batch(atOrAfter sequence: UInt64, through last: UInt64) throws(NATSError) -> (sequence: UInt64, epoch: UInt64, base: Int64, next: Int64)? {
        var s = sequence
        while s <= last {
            if let m = try connection.message(spec.name, sequence: s), m.headers[Self.kindHeader] == StreamEntry.Kind.batch.rawValue,
               let epoch = m.headers[Self.epochHeader].flatMap(UInt64.init), let (base, next) = StreamFollower.offsets(of: m.data) {
                return (s, epoch, base, next)
            }
            s += 1
        }
        return nil
    }

    /// Removes every message below `sequence`.
    public func purge(below sequence: UInt64) throws(NATSError) { try connection.purge(spec.name, below: sequence) }

    /// What a write's outcome was, once resolved.
    public enum WriteOutcome: Sendable, Equatable {
        /// Stored at this sequence (by this call or an earlier attempt of it).
        case stored(UInt64)
        /// Someone else wrote first: the writer has lost the partition and steps down.
        case fenced
    }

    /// Writes the fence of `epoch` after `last` (the stream's last sequence, as the new owner read it).
    public func writeFence(epoch: UInt64, after last: UInt64, deadline: ContinuousClock.Instant) throws(NATSError) -> WriteOutcome {
        try write([], kind: .fence, id: "P\(partition):\(epoch):fence", epoch: epoch, after: last, deadline: deadline)
    }

    /// Writes a batch of the partition's log after `last`.
    public func writeBatch(_ batch: [UInt8], baseOffset: Int64, epoch: UInt64, after last: UInt64,
                           deadline: ContinuousClock.Instant) throws(NATSError) -> WriteOutcome {
        try write(batch, kind: .batch, id: "P\(partition):\(epoch):\(baseOffset)", epoch: epoch, after: last, deadline: deadline)
    }

    /// Publishes, and resolves an outcome the publish could not tell (no answer in time, the
    /// connection lost, no leader) by publishing again with the same id and expectation until
    /// `deadline`: never reports a write stored or fenced before it knows. Past the deadline it
    /// throws, the outcome still unknown: the caller acknowledges nothing and steps down, and
    /// whoever catches up next applies the batch if the stream has it.
    private func write(_ data: [UInt8], kind: StreamEntry.Kind, id: String, epoch: UInt64, after last: UInt64,
                       deadline: ContinuousClock.Instant) throws(NATSError) -> WriteOutcome {
        let headers = [Self.epochHeader: String(epoch), Self.kindHeader: kind.rawValue]
        while true {
            let attempt = data.withUnsafeBytes { raw in
                Result { () throws(NATSError) in
                    try connection.publish(raw, subject: spec.subject, messageID: id, expectedLastSequence: last, headers: headers)
                }
            }
            do throws(NATSError) {
                switch attempt {
                case .success(let ack) where !ack.duplicate && ack.sequence == last + 1:
                    return .stored(ack.sequence)
                case .success:
                    // A duplicate: JetStream checks the id before the expectation, so it is ours
                    // only if the message after `last` is this very write.
                    return try isOurs(at: last + 1, id: id, data: data, epoch: epoch) ? .stored(last + 1) : .fenced
                case .failure(let error) where error.kind == .wrongLastSequence:
                    return try isOurs(at: last + 1, id: id, data: data, epoch: epoch) ? .stored(last + 1) : .fenced
                case .failure(let error):
                    throw error
                }
            } catch where error.isIndeterminate && ContinuousClock.now < deadline {
                usleep(50_000)  // no answer: the same id and expectation again
            }
        }
    }

    /// Whether the message at `sequence` is this write: its id, its epoch and its bytes.
    private func isOurs(at sequence: UInt64, id: String, data: [UInt8], epoch: UInt64) throws(NATSError) -> Bool {
        guard let stored = try connection.message(spec.name, sequence: sequence) else { return false }
        return stored.headers[NATSConnection.messageIDHeader] == id && stored.headers[Self.epochHeader] == String(epoch)
            && stored.data == data
    }

    /// The entries from `sequence` on, at most `limit`, in order: what a follower applies, and
    /// the sequence it has read through (past messages that are not sensorlog's). Nothing when
    /// `sequence` was purged: the caller starts at the stream's floor instead.
    /// Stops early at a message that cannot be read: reads may be served by a replica that is
    /// behind the leader, whose "not found" is no purge. Nothing is ever deleted from a stream but
    /// by a purge of its start, so only a sequence below the first is gone for good.
    public func entries(from sequence: UInt64, limit: Int) throws(NATSError) -> (entries: [StreamEntry], through: UInt64) {
        let state = try connection.streamState(spec.name)
        // Purged past `sequence` since the caller looked: nothing read, so that it learns where
        // the stream starts now (its floor) instead of skipping to it.
        guard sequence >= state.firstSequence else { return ([], sequence - 1) }
        var out: [StreamEntry] = []
        var next = sequence
        while next <= state.lastSequence, out.count < limit {
            guard let message = try connection.message(spec.name, sequence: next) else { break }  // not on this replica yet
            next += 1
            guard let kind = message.headers[Self.kindHeader].flatMap(StreamEntry.Kind.init(rawValue:)),
                  let epoch = message.headers[Self.epochHeader].flatMap(UInt64.init) else { continue }  // not ours
            out.append(StreamEntry(sequence: message.sequence, kind: kind, epoch: epoch, batch: message.data))
        }
        return (out, next - 1)
    }
}
