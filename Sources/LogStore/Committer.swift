import Foundation
import SensorLogCore

/// The fsync policy, as a partition sees it: what makes its appends durable, and whether an
/// append waits for that before it is acknowledged.
///
/// Two implementations: `IntervalSyncer` (`interval` and `never`: an append is acknowledged once
/// written; segments are synced in the background, at a roll and at close) and `CommitJournal`
/// (`always`: acknowledged after one fdatasync that every partition's appends share). A
/// replicated partition is a third: acknowledged once the replicated log holds the batch. A
/// partition calls it with its own lock held; it calls the partition back through
/// `CommittedPartition` with its own lock released (lock order: partition, then committer).
protocol Committer: AnyObject, Sendable {
    /// True when an append is acknowledged, and visible to readers, only once committed.
    var acknowledgesOnCommit: Bool { get }
    /// Takes `batch`, just written to `partition`'s `segment` and ending at `segmentPosition`
    /// there (the partition's written end is then `end`), to commit. Called with the partition's
    /// lock held, so a partition's batches arrive in offset order.
    func record(_ batch: UnsafeRawBufferPointer, partition: any CommittedPartition, end: Int64, segment: SharedFile,
                segmentPosition: Int64) throws(LogError)
    /// The error every append gets until the log is reopened, once a segment's fdatasync failed.
    var poisonError: LogError? { get }
    /// A segment's fdatasync failed (at a roll or a flush).
    func poison(_ error: LogError)
    /// The last commit failure, until a later commit succeeds.
    var syncError: LogError? { get }
    /// fdatasync calls that committed appends.
    var syncs: Int { get }
    /// Starts committing for `partitions`.
    func start(partitions: [any CommittedPartition])
    /// Commits what was recorded, then stops. The partitions sync their segments after this.
    func close()
}

/// Where a partition's written appends end: what a commit makes durable.
struct CommitPoint {
    /// The partition's written end.
    let end: Int64
    /// The segment the last of them is in, and where it ends there.
    let segment: SharedFile
    let position: Int64
}

/// What a committer needs of a partition, and all it sees of one.
protocol CommittedPartition: AnyObject, Sendable {
    var id: Int { get }
    /// The written appends not yet committed, or nil when there are none.
    func uncommitted() -> CommitPoint?
    /// fdatasyncs `segment` (reported to the partition's metrics hook).
    func sync(_ segment: SharedFile) throws(LogError)
    /// fdatasyncs the active segment, before the journal file that covered it is emptied; throws
    /// when the partition's segment sync failed since (the journal must then keep its records).
    func syncActiveSegment() throws(LogError)
    /// Appends up to `point` are durable: complete their waiters.
    func committed(_ point: CommitPoint)
    /// A commit failed: cut what was not durable; returns the waiters to fail.
    func rollBackUncommitted() -> [DurabilityWaiter]
    /// Fails `waiters` with `error`, once the committer takes appends again.
    func fail(_ waiters: [DurabilityWaiter], _ error: LogError)
}

/// The `interval` and `never` policies: appends are acknowledged once written; under `interval`
/// one thread fdatasyncs every partition's new appends every `Limits.fsyncInterval` (one
/// fdatasync per partition covers whatever it appended meanwhile); under `never` only rolls,
/// flushes and close sync.
final class IntervalSyncer: Committer, @unchecked Sendable {
    private let condition = NSCondition()
    private let interval: Duration?
    private var partitions: [any CommittedPartition] = []
    private var isClosed = false
    private var threadDone = true
    /// The last failure per partition, until a later sync of that partition succeeds.
    private var failures: [Int: LogError] = [:]
    private var syncCount = 0

    /// - Parameter interval: the sync period; nil for `never`.
    init(interval: Duration?) { self.interval = interval }

    var acknowledgesOnCommit: Bool { false }

    func record(_ batch: UnsafeRawBufferPointer, partition: any CommittedPartition, end: Int64, segment: SharedFile,
                segmentPosition: Int64) throws(LogError) {}

    /// Under these policies a failed segment sync fails the roll or flush that made it, and
    /// appends go on (the data a crash could lose was never promised durable).
    var poisonError: LogError? { nil }
    func poison(_ error: LogError) {}

    /// The lowest-numbered partition's failure, so that the report does not hop between them.
    var syncError: LogError? { condition.withLock { failures.min { $0.key < $1.key }?.value } }
    var syncs: Int { condition.withLock { syncCount } }

    func start(partitions: [any CommittedPartition]) {
        guard let interval else { return }
        condition.withLock {
            self.partitions = partitions
            threadDone = false
        }
        let thread = Thread { [self] in
            nameCurrentThread("slog-sync")
            self.syncLoop(every: interval)
        }
        thread.start()
    }

    /// Syncs every partition's uncommitted appends once (the sync thread's round; tests call it
    /// to sync without waiting for the period).
    func syncRound() {
        let partitions = condition.withLock { self.partitions }
        for partition in partitions {
            guard let point = partition.uncommitted() else {
                // A roll or flush made it durable since a failed round: that failure is over.
                condition.withLock { _ = failures.removeValue(forKey: partition.id) }
                continue
            }
            let failure: LogError?
            do throws(LogError) {
                try partition.sync(point.segment)
                partition.committed(point)
                failure = nil
            } catch {
                failure = error
            }
            condition.withLock {
                syncCount += 1
                failures[partition.id] = failure
            }
        }
    }

    private func syncLoop(every interval: Duration) {
        let seconds = Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18
        while true {
            let closing = condition.withLock {
                let deadline = Date().addingTimeInterval(seconds)
                while !isClosed && Date() < deadline { _ = condition.wait(until: deadline) }
                return isClosed
            }
            // A last round on close is the partitions' own flush.
            if closing { break }
            syncRound()
        }
        condition.withLock {
            threadDone = true
            condition.broadcast()
        }
    }

    func close() {
        condition.withLock {
            isClosed = true
            condition.broadcast()
            while !threadDone { condition.wait() }
            // Each partition holds this syncer: keeping them would make a cycle that outlives the
            // closed log with all its buffers (the address sanitizer's leak report).
            partitions = []
        }
    }
}
