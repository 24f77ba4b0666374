#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SensorLogCore

/// When an append counts as durable.
public enum FsyncPolicy: String, Sendable, Equatable, CaseIterable, CustomStringConvertible {
    /// The append returns after an fdatasync of the commit journal, which concurrent appends to
    /// every partition share (group commit); segments are synced at journal checkpoints.
    case always
    /// A background fdatasync every `Limits.fsyncInterval`; the append returns after the write.
    case interval
    /// Only on segment roll and close; the OS decides the rest.
    case never

    public var description: String { rawValue }
}

/// Where an append landed.
public struct AppendResult: Sendable, Equatable {
    public var partition: Int
    public var baseOffset: Int64
    public var count: Int
    /// The offsets of the appended records, in order.
    public var offsets: Range<Int64> { baseOffset..<(baseOffset + Int64(count)) }
}

/// What opening a partition found and did.
public struct PartitionRecovery: Sendable, Equatable {
    public var partition: Int
    public var segments: Int
    public var startOffset: Int64
    public var endOffset: Int64
    public var bytes: Int64
    /// Bytes cut from the active segment's torn tail (0 when the tail was clean).
    public var truncatedBytes: Int64
    /// Where the tail was cut, relative to the data directory, with the byte position.
    public var truncatedSegment: String?
    public var truncatedAtPosition: Int64?
    /// Why the tail was cut.
    public var truncationReason: String?
    /// Segments whose index files were missing or corrupt and were rebuilt.
    public var rebuiltIndexes: Int
    /// Batches appended from the commit journal (acknowledged before a crash, not yet in the segment).
    public var journalBatches: Int = 0
    /// Set when the commit journal resumed past the segment's end (its records were not replayed).
    public var journalGap: String?
}

/// A closed (immutable) segment, as the partition remembers it: its index stays on disk.
struct ClosedSegment {
    var baseOffset: Int64
    var nextOffset: Int64
    var size: Int64
    var maxTimestamp: Int64
}

/// Read access a `PartitionReader` needs, from the writer in this process or from files alone.
protocol PartitionView: AnyObject, Sendable {
    var directory: String { get }
    var displayDirectory: String { get }
    var limits: Limits { get }
    /// Base offsets of the segments, ascending.
    func segmentBases() throws(LogError) -> [Int64]
    /// Records at or beyond this offset are not to be read yet; nil reads whatever is complete on disk.
    func visibleEnd() -> Int64?
    /// The sparse index of a segment, or nil to scan it from the start.
    func index(forSegment base: Int64) -> SegmentIndex?
    /// Max timestamp of a segment, when known without a scan.
    func maxTimestamp(ofSegment base: Int64) -> Int64?
    /// Opens segment `base` with its sparse index as one consistent pair: a compaction that
    /// swaps the segment meanwhile leaves the caller with the old file and the old index (or
    /// the new and the new), never one of each.
    func openIndexed(_ base: Int64) throws(LogError) -> (Segment, SegmentIndex?)
    /// Opens segment `base` with the batches of it that may hold `sensorID`, as one consistent
    /// pair (as `openIndexed`); nil when the segment cannot be indexed now (a damaged batch).
    func openSensorIndexed(_ base: Int64, sensorID: String) throws(LogError) -> (segment: Segment, batches: [SensorIndex.BatchRef])?
    /// Deleted sensors whose readings readers leave out (the live partition's); nil for files
    /// read from outside the server.
    var deletionMask: DeletionMask? { get }
}

/// One partition of the log: a directory of segments and its single writer. When an append is
/// durable is the committer's business (the fsync policy); the partition keeps the ledger of it.
///
/// All mutable state is guarded by `condition` (an `NSCondition`, not a `Mutex`, because
/// blocking appenders wait on it).
public final class Partition: PartitionView, CommittedPartition, @unchecked Sendable {
    public let id: Int
    let directory: String
    let displayDirectory: String
    let limits: Limits
    let fileOperations: FileOperations

    private let condition = NSCondition()
    private var closedSegments: [ClosedSegment] = []
    private var active: ActiveSegment
    /// Written and durable ends, and the appends waiting for durability.
    private var ledger: DurabilityLedger
    private var writtenEnd: Int64 { ledger.writtenEnd }
    private var isClosed = false
    /// Counts compaction swaps, so that `openIndexed` can tell one happened while it opened.
    private var swaps = 0
    /// Why maintenance must leave this partition alone until the log is reopened: a compaction
    /// decided its swap (the manifest is durable) but could not rename it into place, so the
    /// files and the segment list disagree until recovery completes the swap.
    private var maintenanceHalt: String?
    /// Makes appends durable: the fsync policy.
    private let committer: any Committer
    /// Called after each fdatasync with its duration in nanoseconds (metrics hook).
    let onSync: (@Sendable (_ nanoseconds: Int64) -> Void)?

    public let recovery: PartitionRecovery
    /// Sensors deleted while their readings may still be in the files.
    public let deletions = DeletionMask()
    var deletionMask: DeletionMask? { deletions }
    /// Which batches hold each sensor, per segment.
    let sensorIndexes: SensorIndexCache

    init(
        id: Int, directory: String, displayDirectory: String, limits: Limits, committer: any Committer,
        fileOperations: FileOperations, onSync: (@Sendable (Int64) -> Void)?, replay: [JournalBatch] = []
    ) throws(LogError) {
        self.id = id
        self.committer = committer
        self.directory = directory
        self.displayDirectory = displayDirectory
        self.limits = limits
        self.fileOperations = fileOperations
        self.onSync = onSync
        sensorIndexes = SensorIndexCache(budget: limits.sensorIndexCacheBytes)

        let loaded = try PartitionLoader(
            id: id, paths: PartitionPaths(directory: directory, display: displayDirectory), limits: limits, ops: fileOperations
        ).load(replay: replay)
        self.closedSegments = loaded.closed
        self.active = loaded.active
        self.ledger = DurabilityLedger(durableUpTo: loaded.active.nextOffset, position: loaded.active.size)
        self.recovery = loaded.recovery
    }

    // MARK: Appending

    /// Writes an encoded batch (its base offset is patched in here) and returns where it landed,
    /// plus the waiter to await when the committer acknowledges on commit. With `expectedBase`
    /// (a copied batch), only if the partition ends there.
    func write(encoded batch: UnsafeRawBufferPointer, count: Int, maxTimestamp: Int64, appendTime: Int64, at expectedBase: Int64? = nil)
        throws(LogError) -> (AppendResult, DurabilityWaiter?)
    {
        condition.lock()
        defer { condition.unlock() }
        guard !isClosed else { throw LogError(.closed, "the log is closed") }
        if let expectedBase, expectedBase != writtenEnd {
            throw LogError(.notContiguous, "a batch at offset \(expectedBase) does not continue partition \(id), which ends at \(writtenEnd)")
        }

        if active.size > 0 {
            let tooBig = active.size + Int64(batch.count) > Int64(limits.segmentBytes)
            let tooOld = active.firstAppendTime.map { appendTime - $0 > Int64(limits.segmentMaxAge / .nanoseconds(1)) } ?? false
            let offsetsFull = writtenEnd + Int64(count) - active.baseOffset > Int64(UInt32.max)
            if tooBig || tooOld || offsetsFull {
                // A roll syncs and closes the segment; after a failed segment sync that must wait
                // for the reopen's replay (`CommitJournal.poison`).
                if let poisoned = committer.poisonError { throw poisoned }
                try roll()
            }
        }

        let base = writtenEnd
        let mutable = UnsafeMutableRawBufferPointer(mutating: batch)
        mutable.storeBytes(of: base.littleEndian, toByteOffset: 0, as: Int64.self)
        let position = active.size
        do {
            try active.write(batch, fileOperations)
            try committer.record(batch, partition: self, end: base + Int64(count), segment: active.file,
                                 segmentPosition: position + Int64(batch.count))
        } catch {
            // Leave the file as it was. Should the cut fail too, nothing is lost: the bytes past
            // `position` are not in the index or the written end, and the next append overwrites
            // them; the append's own error is the one to report.
            _ = fileOperations.truncate(active.file.fd, position)
            throw error
        }
        active.commit(length: batch.count, end: base + Int64(count), maxTimestamp: maxTimestamp, appendTime: appendTime,
                      indexInterval: limits.indexIntervalBytes)
        ledger.wrote(upTo: base + Int64(count))

        let result = AppendResult(partition: id, baseOffset: base, count: count)
        guard committer.acknowledgesOnCommit else { return (result, nil) }
        return (result, ledger.waiter())
    }

    // MARK: CommittedPartition

    func uncommitted() -> CommitPoint? {
        condition.withLock {
            ledger.hasUnsynced ? CommitPoint(end: writtenEnd, segment: active.file, position: active.size) : nil
        }
    }

    func sync(_ segment: SharedFile) throws(LogError) {
        if let failure = timedSync(fileOperations, segment.fd, onSync: onSync) {
            throw LogError.system("fsync failed", errno: failure, path: segment.displayPath)
        }
    }

    /// Under the lock, as a roll and a flush sync: a roll whose fdatasync failed has poisoned the
    /// committer before this sync can return 0 for the same lost write-back.
    func syncActiveSegment() throws(LogError) {
        condition.lock()
        defer { condition.unlock() }
        try sync(active.file)
        if let poisoned = committer.poisonError { throw poisoned }
    }

    func committed(_ point: CommitPoint) {
        condition.lock()
        defer { condition.unlock() }
        // A roll (which syncs the segment) or a rollback may have moved on meanwhile.
        guard point.end > ledger.durableEnd, point.end <= writtenEnd else { return }
        succeed(ledger.madeDurable(upTo: point.end, position: point.segment === active.file ? point.position : nil))
    }

    /// A commit failed: what was not durable is cut off (none of it was acknowledged, and none may
    /// become visible). Returns the appends that waited on it, for `fail` once the committer takes
    /// appends again (an append retried at once must not find it still rolling back).
    func rollBackUncommitted() -> [DurabilityWaiter] {
        condition.lock()
        defer { condition.unlock() }
        let failed = ledger.rollBack()
        active.truncate(to: ledger.durablePosition, end: writtenEnd, indexInterval: limits.indexIntervalBytes, fileOperations)
        return failed
    }

    func fail(_ failed: [DurabilityWaiter], _ error: LogError) {
        condition.lock()
        defer { condition.unlock() }
        complete(failed, with: error)
    }

    /// Closes the active segment now if it holds anything, so that maintenance which rewrites or
    /// deletes closed segments only (compaction, retention) reaches every record written so far.
    func rollNow() throws(LogError) {
        condition.lock()
        defer { condition.unlock() }
        guard !isClosed else { throw LogError(.closed, "the log is closed") }
        guard active.size > 0 else { return }
        if let poisoned = committer.poisonError { throw poisoned }
        try roll()
    }

    /// Closes the active segment and starts a new one at `writtenEnd`. Called with the lock held.
    private func roll() throws(LogError) {
        let old = active
        guard fileOperations.sync(old.file.fd) == 0 else {
            let error = LogError.system("fsync failed while rolling the segment", errno: errno, path: old.file.displayPath)
            // A retry could close the segment on an fdatasync that returns 0 without the data.
            committer.poison(error)
            throw error
        }
        let sealed = try old.seal(directory: directory, fileOperations)
        let next = try Segment.create(SegmentPaths(directory: directory, displayDirectory: displayDirectory, base: writtenEnd),
                                      maxBatchBytes: limits.maxBatchBytes)
        try fileOperations.syncDirectory(directory, display: displayDirectory)
        closedSegments.append(sealed)
        active = ActiveSegment(segment: next, size: 0, nextOffset: writtenEnd, index: SegmentIndex(), firstAppendTime: nil)
        succeed(ledger.rolled())
    }

    /// Moves the start of a partition that holds nothing to `base`: a cluster node that joins
    /// after the stream was purged below `base` starts its copy there. The empty segment file is
    /// removed before the new one is made, so a crash between leaves no segment (the partition
    /// reopens empty, at 0) rather than a gap.
    /// - Throws: `.invalidArgument` when the partition holds records, or `base` is below its end.
    func start(at base: Int64) throws(LogError) {
        condition.lock()
        defer { condition.unlock() }
        guard !isClosed else { throw LogError(.closed, "the log is closed") }
        guard closedSegments.isEmpty, active.size == 0, !ledger.hasUnsynced, base >= active.nextOffset else {
            throw LogError(.invalidArgument, "partition \(id) holds records (or ends past \(base)): only an empty partition can start later")
        }
        guard base > active.nextOffset else { return }
        try segmentPaths(active.baseOffset).removeAll(fileOperations)
        try fileOperations.syncDirectory(directory, display: displayDirectory)  // gone before the next exists
        let next = try Segment.create(SegmentPaths(directory: directory, displayDirectory: displayDirectory, base: base),
                                      maxBatchBytes: limits.maxBatchBytes)
        try fileOperations.syncDirectory(directory, display: displayDirectory)
        active = ActiveSegment(segment: next, size: 0, nextOffset: base, index: SegmentIndex(), firstAppendTime: nil)
        ledger = DurabilityLedger(durableUpTo: base, position: 0)
    }

    /// Blocks until `waiter` completes.
    func wait(_ waiter: DurabilityWaiter) throws(LogError) {
        condition.lock()
        while waiter.result == nil { condition.wait() }
        let result = waiter.result!
        condition.unlock()
        try result.get()
    }

    /// Suspends until `waiter` completes.
    nonisolated(nonsending) func wait(_ waiter: DurabilityWaiter) async throws(LogError) {
        let result: Result<Void, LogError> = await withCheckedContinuation { continuation in
            condition.lock()
            if let result = waiter.result {
                condition.unlock()
                continuation.resume(returning: result)
            } else {
                waiter.continuation = continuation
                condition.unlock()
            }
        }
        try result.get()
    }

    /// Completes waiters whose records are durable. Lock held; wakes blocked appenders.
    private func succeed(_ done: [DurabilityWaiter]) {
        for waiter in done { waiter.complete(.success(())) }
        condition.broadcast()
    }

    /// Lock held.
    private func complete(_ failed: [DurabilityWaiter], with error: LogError) {
        for waiter in failed { waiter.complete(.failure(error)) }
        condition.broadcast()
    }

    /// Makes everything written so far durable now, whatever the policy.
    public func flush() throws(LogError) {
        condition.lock()
        defer { condition.unlock() }
        guard fileOperations.sync(active.file.fd) == 0 else {
            let error = LogError.system("fsync failed", errno: errno, path: active.file.displayPath)
            committer.poison(error)
            throw error
        }
        succeed(ledger.allDurable(position: active.size))
    }

    /// Syncs and closes (after the committer stopped). Appends after this throw `.closed`.
    func close() throws(LogError) {
        condition.withLock { isClosed = true }
        try flush()
    }

    // MARK: Retention

    /// Bytes of the closed segments (what a compaction may read).
    public var closedSegmentBytes: Int64 { retentionView().closed.reduce(0) { $0 + $1.size } }

    /// What retention decides on: the closed segments, oldest first, and the active segment.
    func retentionView() -> (closed: [ClosedSegment], active: ClosedSegment) {
        condition.withLock {
            (closedSegments, ClosedSegment(baseOffset: active.baseOffset, nextOffset: writtenEnd, size: active.size,
                                           maxTimestamp: active.index.maxTimestamp))
        }
    }

    /// Forgets the closed segments that end at or before `end` (whole segments from the start)
    /// and deletes their files. A reader with one of them open reads on (the file lives while
    /// open); one that looks for it afterwards starts at the new first segment.
    /// - Returns: the segments dropped.
    func dropSegments(endingBy end: Int64) throws(LogError) -> [ClosedSegment] {
        let dropped: [ClosedSegment] = condition.withLock {
            let n = closedSegments.prefix { $0.nextOffset <= end }.count
            defer { closedSegments.removeFirst(n) }
            return Array(closedSegments.prefix(n))
        }
        // Oldest first: a failure leaves a contiguous log, and the next pass deletes the rest.
        for segment in dropped { try segmentPaths(segment.baseOffset).removeAll(fileOperations) }
        if !dropped.isEmpty { try fileOperations.syncDirectory(directory, display: displayDirectory) }
        return dropped
    }

    // MARK: State

    /// First offset still in the log.
    public var startOffset: Int64 {
        condition.lock()
        defer { condition.unlock() }
        return closedSegments.first?.baseOffset ?? active.baseOffset
    }

    /// The next offset to be written that readers may see (the durable end when appends are
    /// acknowledged on commit).
    public var endOffset: Int64 {
        condition.lock()
        defer { condition.unlock() }
        return committer.acknowledgesOnCommit ? ledger.durableEnd : writtenEnd
    }

    /// Bytes of all segment files.
    public var bytes: Int64 {
        condition.lock()
        defer { condition.unlock() }
        return closedSegments.reduce(Int64(0)) { $0 + $1.size } + active.size
    }

    public var segmentCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return closedSegments.count + 1
    }

    // MARK: PartitionView

    func segmentBases() throws(LogError) -> [Int64] {
        condition.lock()
        defer { condition.unlock() }
        return closedSegments.map(\.baseOffset) + [active.baseOffset]
    }

    func visibleEnd() -> Int64? { endOffset }

    func index(forSegment base: Int64) -> SegmentIndex? {
        condition.lock()
        if base == active.baseOffset {
            let index = active.index
            condition.unlock()
            return index
        }
        let segment = closedSegments.first { $0.baseOffset == base }
        condition.unlock()
        guard let segment else { return nil }
        return loadIndexFiles(segmentPaths(base), size: segment.size, records: segment.nextOffset - base)
    }

    func maxTimestamp(ofSegment base: Int64) -> Int64? {
        condition.lock()
        defer { condition.unlock() }
        if base == active.baseOffset { return active.index.maxTimestamp }
        return closedSegments.first { $0.baseOffset == base }?.maxTimestamp
    }

    /// Opens without holding the lock across the I/O, and opens again when a swap came between.
    func openIndexed(_ base: Int64) throws(LogError) -> (Segment, SegmentIndex?) {
        while true {
            let before = condition.withLock { swaps }
            let segment = try openSegment(base)
            let index = index(forSegment: base)
            if condition.withLock({ swaps }) == before { return (segment, index) }
        }
    }

    /// The segment's shape and the swap count, read together so that a file opened after them
    /// and found under the same count is the one the shape describes.
    /// - Returns: nil when the partition no longer lists `base`.
    func sensorIndexState(_ base: Int64) -> (closed: SensorIndexCache.Shape?, swaps: Int)? {
        condition.withLock {
            if base == active.baseOffset { return (nil, swaps) }
            guard let c = closedSegments.first(where: { $0.baseOffset == base }) else { return nil }
            return (SensorIndexCache.Shape(size: c.size, records: c.nextOffset - base), swaps)
        }
    }

    func openSensorIndexed(_ base: Int64, sensorID: String) throws(LogError) -> (segment: Segment, batches: [SensorIndex.BatchRef])? {
        while true {
            guard let (closed, before) = sensorIndexState(base) else { return nil }
            let segment = try openSegment(base)
            let end = endOffset
            let refs = try sensorIndexes.batches(holding: sensorID, segment: base, closed: closed, visibleEnd: end,
                                                 paths: segmentPaths(base), open: { segment })
            if condition.withLock({ swaps }) == before { return refs.map { (segment, $0) } }
            sensorIndexes.forget(base)  // it may describe the file the swap replaced
        }
    }

    // MARK: Compaction

    /// Set once a compaction could not complete a decided swap; see `maintenanceHalt`.
    var haltedMaintenance: String? { condition.withLock { maintenanceHalt } }

    func haltMaintenance(_ why: String) { condition.withLock { maintenanceHalt = why } }

    /// Puts a compacted segment in place of the closed segments `run` (which end where `merged`
    /// ends): `rename` moves its files over the first one's names, under the lock, and the
    /// partition then lists `merged` instead of the run. Readers that have an old file open read
    /// on from it; the old files other than the first are the caller's to delete afterwards.
    /// - Returns: false, changing nothing, when the run is no longer the partition's (retention
    ///   deleted part of it).
    func swapCompacted(run: [Int64], merged: ClosedSegment, rename: () throws(LogError) -> Void) throws(LogError) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard let first = closedSegments.firstIndex(where: { $0.baseOffset == run[0] }),
              first + run.count <= closedSegments.count,
              closedSegments[first..<(first + run.count)].map(\.baseOffset) == run,
              closedSegments[first + run.count - 1].nextOffset == merged.nextOffset
        else { return false }
        try rename()
        closedSegments.replaceSubrange(first..<(first + run.count), with: [merged])
        swaps += 1
        for base in run { sensorIndexes.forget(base) }
        return true
    }

    /// A reader from `offset` (clamped to the log's start) that sees what this process appended.
    public func reader(from offset: Int64) -> PartitionReader {
        PartitionReader(view: self, startOffset: offset, partition: id)
    }
}

/// Loads and validates a closed segment's index files; nil when missing or inconsistent.
func loadIndexFiles(_ paths: SegmentPaths, size: Int64, records: Int64) -> SegmentIndex? {
    guard let offsets = SegmentFiles.readWholeFile(paths.offsetIndex),
          let times = SegmentFiles.readWholeFile(paths.timeIndex)
    else { return nil }
    return SegmentIndex.parse(offsetFile: offsets, timeFile: times, segmentSize: size, recordCount: records)
}
