import Foundation
import SensorLogCore
import Synchronization

/// What the running server keeps: readings younger than `maxAge`, and at most `maxBytes` per
/// partition (as Kafka's `retention.ms` and `retention.bytes`). Both nil: retention is off.
public struct RetentionPolicy: Sendable, Equatable {
    public var maxAge: Duration?
    public var maxBytes: Int64?

    public init(maxAge: Duration? = nil, maxBytes: Int64? = nil) {
        self.maxAge = maxAge
        self.maxBytes = maxBytes
    }

    public var isOff: Bool { maxAge == nil && maxBytes == nil }
}

/// What one retention pass over the live log did.
public struct RetentionPassResult: Sendable, Equatable {
    /// One partition's deletion.
    public struct Removed: Sendable, Equatable {
        public var partition: Int
        public var segments: Int
        public var bytes: Int64
        /// The partition's first offset afterwards.
        public var startOffset: Int64
        /// Readings at or before this timestamp are now refused as too old.
        public var floor: Int64
    }

    public var removed: [Removed] = []
    /// Per partition held back by what the aggregator has not folded yet: why, for the log.
    public var blocked: [Int: String] = [:]

    public var segments: Int { removed.reduce(0) { $0 + $1.segments } }
    public var bytes: Int64 { removed.reduce(0) { $0 + $1.bytes } }
}

extension Log {
    /// One retention pass while the log serves: closes an active segment whose readings are all
    /// older than the cutoff, then deletes whole closed segments from the start of each partition
    /// that are too old or over the size, never past `foldedUpTo` (the aggregator's committed
    /// offsets: what it has not folded stays). The new floors are made durable and handed to
    /// `floorsRaised` (the ingest, which refuses readings at or before them) before any file goes,
    /// so a resend of a deleted reading is refused `too_old`, never stored twice.
    /// - Parameter now: wall-clock nanoseconds the age is measured from.
    ///
    /// The file work (a roll's fsync, the floors' write and sync, the unlinks) runs on a thread of
    /// its own, not on the caller's executor: on two cores it would stall the ingest's actors.
    public func applyRetention(_ policy: RetentionPolicy, now: Int64, foldedUpTo: [Int64],
                               floorsRaised: ([Int64?]) async -> Void) async throws(LogError) -> RetentionPassResult {
        guard !policy.isOff else { return RetentionPassResult() }
        let (cuts, floors, blocked) = try await onThread("slog-maintain") { () throws(LogError) in
            try self.planRetention(policy, now: now, foldedUpTo: foldedUpTo)
        }
        var result = RetentionPassResult()
        result.blocked = blocked
        guard !cuts.isEmpty else { return result }
        await floorsRaised(floors)
        result.removed = try await onThread("slog-maintain") { () throws(LogError) in try self.dropCuts(cuts, floors: floors) }
        return result
    }

    /// Raises `partition`'s retention floor to `timestamp`, durably, as if retention had removed
    /// the readings up to it: a cluster node starting its copy after a purged stream's start
    /// must refuse a resend of what is gone as too old, as the owner that purged it does.
    public func raiseRetentionFloor(_ partition: Int, to timestamp: Int64) throws(LogError) {
        try retentionFloorsLock.withLock { _ throws(LogError) in
            var floors = try Retention.floors(dataDirectory: dataDirectory, partitions: partitions.count)
            guard (floors[partition] ?? .min) < timestamp else { return }
            floors[partition] = timestamp
            try Retention.writeFloors(floors, dataDirectory: dataDirectory, configuration.fileOperations)
        }
    }

    /// Decides what goes (rolling an all-old active segment), and makes the raised floors durable.
    private func planRetention(_ policy: RetentionPolicy, now: Int64, foldedUpTo: [Int64])
        throws(LogError) -> ([Int: [ClosedSegment]], [Int64?], [Int: String]) {
        let cutoff = policy.maxAge.map { now - Int64($0 / .nanoseconds(1)) }
        var cuts: [Int: [ClosedSegment]] = [:]
        var blocked: [Int: String] = [:]
        for partition in partitions {
            if let halted = partition.haltedMaintenance {
                blocked[partition.id] = halted
                continue
            }
            let (segments, why) = try retentionCut(partition, cutoff: cutoff, maxBytes: policy.maxBytes, folded: foldedUpTo[partition.id])
            if !segments.isEmpty { cuts[partition.id] = segments }
            if let why { blocked[partition.id] = why }
        }
        guard !cuts.isEmpty else { return (cuts, [], blocked) }
        let floors = try retentionFloorsLock.withLock { _ throws(LogError) -> [Int64?] in
            var floors = try Retention.floors(dataDirectory: dataDirectory, partitions: partitions.count)
            // Capped at `now`: one reading stamped far in the future must not become a floor that
            // refuses every reading from then on (such a reading, deleted, could be sent again).
            for (p, segments) in cuts { floors[p] = max(floors[p] ?? .min, min(now, segments.map(\.maxTimestamp).max()!)) }
            try Retention.writeFloors(floors, dataDirectory: dataDirectory, configuration.fileOperations)
            return floors
        }
        return (cuts, floors, blocked)
    }

    private func dropCuts(_ cuts: [Int: [ClosedSegment]], floors: [Int64?]) throws(LogError) -> [RetentionPassResult.Removed] {
        var removed: [RetentionPassResult.Removed] = []
        for (p, segments) in cuts.sorted(by: { $0.key < $1.key }) {
            let bytes = segments.reduce(Int64(0)) { $0 + partitions[p].segmentPaths($1.baseOffset).bytesOnDisk }
            let dropped = try partitions[p].dropSegments(endingBy: segments.last!.nextOffset)
            removed.append(.init(partition: p, segments: dropped.count, bytes: bytes, startOffset: partitions[p].startOffset,
                                 floor: floors[p]!))
        }
        return removed
    }

    /// The closed segments of `partition` retention deletes now, oldest first, and why it stopped
    /// short when the aggregator held it back. Rolls an active segment that is wholly too old.
    private func retentionCut(_ partition: Partition, cutoff: Int64?, maxBytes: Int64?, folded: Int64)
        throws(LogError) -> ([ClosedSegment], blocked: String?)
    {
        func held(_ end: Int64) -> String {
            "the aggregator has folded partition \(partition.id) up to offset \(folded); the next segment to delete ends at \(end)"
        }
        var (closed, active) = partition.retentionView()
        var blocked: String?
        // A log that never filled a segment (64 MiB by default) would otherwise keep everything.
        if let cutoff, active.size > 0, active.maxTimestamp < cutoff {
            if active.nextOffset <= folded {
                try partition.rollNow()
                (closed, active) = partition.retentionView()
            } else {
                blocked = held(active.nextOffset)
            }
        }
        let sizes = closed.map { partition.segmentPaths($0.baseOffset).bytesOnDisk }
        var total = sizes.reduce(active.size, +)
        var cut: [ClosedSegment] = []
        for (segment, bytes) in zip(closed, sizes) {
            guard Retention.isDue(newest: segment.maxTimestamp, cutoff: cutoff, total: total, maxBytes: maxBytes) else { break }
            guard segment.nextOffset <= folded else {
                blocked = held(segment.nextOffset)
                break
            }
            cut.append(segment)
            total -= bytes
        }
        return (cut, blocked)
    }
}
