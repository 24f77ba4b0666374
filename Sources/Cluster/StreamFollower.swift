public import LogStore

/// Applies a partition's stream to the local log, in the stream's order: a fence raises the
/// epoch; a batch is applied only under the latest fence's epoch (a former owner's write that
/// slipped in after a new owner's fence is skipped, so replay equals live; one of an epoch whose
/// fence this follower never read is refused) and only where it continues the local log (one the
/// log already holds, as the owner's own, is passed over).
public struct StreamFollower: Sendable {
    public let partition: Int
    /// The next stream sequence to apply.
    public private(set) var nextSequence: UInt64 = 1
    /// The latest fence's epoch: a batch of a lower one is a former owner's.
    public private(set) var epoch: UInt64 = 0
    /// Batches skipped for a stale epoch, for the cluster's status.
    public private(set) var skipped = 0

    public init(partition: Int) { self.partition = partition }

    /// Applies `entries` (in sequence order, from `nextSequence` on). - Returns: batches appended.
    /// - Throws: the log's error; `.notContiguous` when a batch of the current epoch starts past
    ///   the log's end, or overlaps it (a gap or a fork the stream should not have); `.invalidLog`
    ///   for a batch of an epoch above the latest fence read.
    public mutating func apply(_ entries: [StreamEntry], to log: Log) async throws(LogError) -> Int {
        var appended = 0
        for entry in entries where entry.sequence >= nextSequence {
            switch entry.kind {
            case .fence:
                epoch = max(epoch, entry.epoch)
            case .batch where entry.epoch < epoch:
                skipped += 1  // a former owner's write that got in after a newer fence
            case .batch where entry.epoch > epoch:
                // Its fence is not in what this follower read (purged, or it started past it):
                // applying would trust an owner it never saw take over.
                throw LogError(.invalidLog, "stream of partition \(partition) at \(entry.sequence): a batch of epoch \(entry.epoch) after no fence of it (the follower is at epoch \(epoch))")
            case .batch:
                if try await appendUnlessHeld(entry.batch, to: log) { appended += 1 }
            }
            nextSequence = entry.sequence + 1
        }
        return appended
    }

    /// Records that the stream holds, up to `sequence`, only what the log already holds under
    /// `epoch`: the owner's own writes, which it appended itself.
    public mutating func advance(through sequence: UInt64, epoch: UInt64) {
        nextSequence = max(nextSequence, sequence + 1)
        self.epoch = max(self.epoch, epoch)
    }

    private func appendUnlessHeld(_ batch: [UInt8], to log: Log) async throws(LogError) -> Bool {
        do {
            _ = try await log.appendCopy(batch, toPartition: partition)
            return true
        } catch where error.code == .notContiguous {
            // Already in the log (the owner's own batch, or applied before a restart) only if it
            // ends within it; a batch that overlaps the end is a fork.
            let end = log.partitions[partition].endOffset
            guard let (base, next) = StreamFollower.offsets(of: batch), base < end, next <= end else { throw error }
            return false
        }
    }

    static func offsets(of batch: [UInt8]) -> (base: Int64, next: Int64)? {
        batch.withUnsafeBytes { raw in
            (try? BatchHeader.parse(raw, maxBatchBytes: raw.count)).map { ($0.baseOffset, $0.nextOffset) }
        }
    }
}
