#if canImport(Glibc)
import Glibc
#endif
import CRC32C
import Foundation
import SensorLogCore

/// Under `--fsync always`, the one file whose fdatasync makes an append to any partition durable.
///
/// Every batch is written to its partition's segment and then copied here; one fdatasync of this
/// file commits whatever every partition appended meanwhile. Without it each partition needs its
/// own fdatasync per commit: with 8 partitions and 16 one-reading requests in flight, that was
/// nearly one fdatasync per request, and on 2 cores their CPU (and the interrupts of the device
/// round trips) capped `POST /sensor/data` near 8 k requests/s. Segments are fdatasynced at a
/// checkpoint instead: when the journal file in use passes three quarters of
/// `Limits.commitJournalBytes`, appends move to the other file, every partition is synced, and
/// the old file is emptied.
///
/// After a crash `Log.open` replays both files into the partitions (`records`, `PartitionLoader.replay`); the
/// records carry the batches' offsets, so replay only appends what a segment lacks.
///
/// Both files are written full of zeros once and then overwritten in place, so an fdatasync
/// flushes the record and not also the file's size (2.5 device writes per fdatasync instead of
/// 3 in a bare loop on this machine's disk, 160 against 210 µs; POST measured the same). Which records are current is told by the lap: each
/// use of a file from its start draws a random lap number, and reading stops at the first record
/// of another lap, or with a bad CRC.
///
/// Record (little-endian): u32 magic, u32 CRC32C of the bytes after it, u64 lap, u32 partition,
/// u32 batch length, then the batch exactly as written to the segment.
final class CommitJournal: Committer, @unchecked Sendable {
    /// Whether the journal takes appends, and if not, the error they get.
    enum Health {
        case ok
        /// An fdatasync failed: the partitions are cutting off what was not durable.
        case rollingBack(LogError)
        /// The refused records are being zeroed and synced (retried every 100 ms).
        case erasing(LogError)
        /// A segment's fdatasync failed: appends are refused until the log is reopened (Linux
        /// reports a write-back error once, so no later success proves the data reached the disk).
        case poisoned(LogError)

        var refusal: LogError? {
            switch self {
            case .ok: nil
            case .rollingBack(let error), .erasing(let error), .poisoned(let error): error
            }
        }

        var isOK: Bool { refusal == nil }
        var isPoisoned: Bool {
            if case .poisoned = self { return true }
            return false
        }
    }

    static let headerSize = JournalRecord.headerSize

    /// An appended record not yet known durable.
    private struct Pending {
        let partition: any CommittedPartition
        let file: Int
        /// Position in `file` after the record.
        let journalEnd: Int64
        /// The partition's appends this record completes.
        let point: CommitPoint
    }

    /// What the sync thread does next, decided under the lock and done outside it.
    private enum Step {
        /// Zero and sync the refused records.
        case erase([Int: Range<Int64>])
        /// fdatasync these files (the retiring one first) up to `targets`.
        case commit(targets: [Int64], files: [Int])
        /// Sync every partition's segment, then empty this file.
        case checkpoint(Int)
    }

    private let condition = NSCondition()
    private let fileOperations: FileOperations
    private let limitBytes: Int64
    /// The two journal files (read back by `records` in JournalRecord.swift).
    let files: [SharedFile]
    private var written: [Int64] = [0, 0]
    private var laps: [UInt64] = [0, 0]
    private var durable: [Int64] = [0, 0]
    /// The file appends go to; the other is empty or being retired.
    private var current = 0
    /// The file being retired by a checkpoint (it takes no appends).
    private var retiring: Int?
    private var pending: [Pending] = []
    private var scratch: [UInt8] = []
    private var partitions: [any CommittedPartition] = []
    private var isClosed = false
    private var threadDone = true
    private var health = Health.ok
    /// Per file, the range of refused records to zero and sync (while rolling back, erasing, or
    /// poisoned: a crash must not replay a refused append).
    private var refusedRanges: [Int: Range<Int64>] = [:]
    private var syncCount = 0
    private let onSync: (@Sendable (_ nanoseconds: Int64) -> Void)?

    /// Opens (creating) both files in `directory`. What they hold is for `records` to replay;
    /// `empty()` then clears them before `start`.
    init(layout: DataLayout, limitBytes: Int, fileOperations: FileOperations, onSync: (@Sendable (Int64) -> Void)?) throws(LogError) {
        let directory = layout.log
        self.fileOperations = fileOperations
        self.limitBytes = Int64(limitBytes)
        self.onSync = onSync
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw LogError(.io, "cannot create the log directory", path: DataLayout.logName)
        }
        var files: [SharedFile] = []
        for journal in layout.journals {
            let fd = try FileDescriptor.open(journal.path, flags: O_RDWR | O_CREAT, displayPath: journal.display)
            files.append(SharedFile(fd, displayPath: journal.display))
        }
        self.files = files
        // The journals' names, and every partition directory a killed process created, then
        // `log` itself in the data directory: a new directory's name is durable only once its
        // parent is synced, and without it a power cut loses the whole log. On every open, so
        // that one created by a process killed before this sync is covered too.
        try fileOperations.syncDirectory(directory, display: DataLayout.logName)
        try fileOperations.syncDirectory(layout.root, display: DataLayout.logName)
    }

    var acknowledgesOnCommit: Bool { true }

    /// Starts the sync thread, committing for `partitions`.
    func start(partitions: [any CommittedPartition]) {
        condition.withLock {
            self.partitions = partitions
            threadDone = false
        }
        let thread = Thread { [self] in
            nameCurrentThread("slog-commit")
            self.syncLoop()
        }
        thread.start()
    }

    /// Copies `batch` (already written to `partition`'s `segment`, ending at `segmentPosition`)
    /// into the journal. Called with the partition's lock held: a partition's records are in
    /// offset order, and no record outlives a rollback of its partition.
    func record(_ batch: UnsafeRawBufferPointer, partition: any CommittedPartition, end: Int64, segment: SharedFile,
                segmentPosition: Int64) throws(LogError) {
        condition.lock()
        defer { condition.unlock() }
        guard !isClosed else { throw LogError(.closed, "the log is closed") }
        if let refusal = health.refusal { throw refusal }
        let total = Self.headerSize + batch.count
        if scratch.count < total { scratch = [UInt8](repeating: 0, count: max(total, scratch.count * 2, 4096)) }
        let file = current
        if written[file] == 0 { laps[file] = UInt64.random(in: 1...UInt64.max) }
        var failure: LogError?
        scratch.withUnsafeMutableBytes { raw in
            JournalRecord.encode(batch, lap: laps[file], partition: partition.id, into: raw)
            do throws(LogError) {
                try writeAll(fileOperations, fd: files[file].fd, UnsafeRawBufferPointer(rebasing: raw[0..<total]),
                             at: written[file], displayPath: files[file].displayPath)
            } catch {
                failure = error
            }
        }
        if let failure {
            // A partly written record fails its CRC; the next append overwrites it.
            throw failure
        }
        written[file] += Int64(total)
        pending.append(Pending(partition: partition, file: file, journalEnd: written[file],
                               point: CommitPoint(end: end, segment: segment, position: segmentPosition)))
        condition.broadcast()
    }

    /// The error appends get once poisoned.
    var poisonError: LogError? {
        condition.withLock {
            if case .poisoned(let error) = health { return error }
            return nil
        }
    }

    /// Refuses every append from now on, until the log is reopened: a segment's fdatasync failed,
    /// and Linux reports a write-back error once, so a retry that returns 0 proves nothing. The
    /// journal keeps what the segment may lack; reopening replays it.
    func poison(_ error: LogError) {
        let message = "\(error.message); appends are refused until sensorlogd restarts and replays the commit journal"
        // Not `.diskFull`, which heals by itself: this takes a restart.
        condition.withLock { health = .poisoned(LogError(.io, message, path: error.path, errno: error.errno)) }
    }

    /// The last fdatasync failure, until a later one succeeds (or for good once poisoned).
    var syncError: LogError? { condition.withLock { health.refusal } }

    /// Number of fdatasync calls that committed appends.
    var syncs: Int { condition.withLock { syncCount } }

    // MARK: The sync thread
    //
    // Each step is decided under the lock (`nextStep`), done without it (the fdatasyncs and the
    // partitions' callbacks: lock order is partition, then journal), and its outcome recorded
    // under the lock again, each in a function of its own.

    private func syncLoop() {
        var eraseFailed = false
        while let step = nextStep(afterFailedErase: eraseFailed) {
            eraseFailed = false
            switch step {
            case .erase(let ranges): eraseFailed = !erase(ranges)
            case .commit(let targets, let order): commit(targets, order)
            case .checkpoint(let old): checkpoint(old)
            }
        }
        condition.withLock {
            threadDone = true
            condition.broadcast()
        }
    }

    /// Waits for work and says what it is; nil once closed with nothing left to commit (refused
    /// records the device will not take are left to a reopen, which reads past them by lap).
    private func nextStep(afterFailedErase: Bool) -> Step? {
        condition.lock()
        defer { condition.unlock() }
        if afterFailedErase {
            if isClosed { return nil }
            _ = condition.wait(until: Date().addingTimeInterval(0.1))
        }
        while true {
            if !refusedRanges.isEmpty { return .erase(refusedRanges) }
            // Before the next commit, not only when idle: under steady load there is always more.
            if let old = retiring, written[old] == durable[old], health.isOK { return .checkpoint(old) }
            let unsynced = [1 - current, current].filter { written[$0] > durable[$0] }
            if !unsynced.isEmpty { return .commit(targets: written, files: unsynced) }
            if isClosed { return nil }
            condition.wait()
        }
    }

    /// One group commit: fdatasync the files with unsynced records, the retiring one first (its
    /// records are the older), then tell the partitions, and on a failure roll back.
    private func commit(_ targets: [Int64], _ order: [Int]) {
        var synced: [Int] = []
        var failure: LogError?
        for f in order {
            if let error = timedSync(fileOperations, files[f].fd, onSync: onSync) {
                failure = LogError.system("fsync failed", errno: error, path: files[f].displayPath)
                break
            }
            synced.append(f)
        }
        let done = recordSynced(synced, targets)
        // Before any rollback: what the retiring file made durable stays, even when the current
        // file's fdatasync failed. The highest end per partition.
        var ends: [ObjectIdentifier: Pending] = [:]
        for record in done { ends[ObjectIdentifier(record.partition)] = record }
        for record in ends.values { record.partition.committed(record.point) }
        if let failure { rollBack(failure) } else { recordHealthy() }
    }

    /// Files `synced` are durable up to their `targets`. Returns the records now acknowledged: a
    /// record is acknowledged only with every record before it, so the prefix now durable.
    private func recordSynced(_ synced: [Int], _ targets: [Int64]) -> [Pending] {
        condition.withLock {
            syncCount += 1
            for f in synced { durable[f] = targets[f] }
            let count = pending.prefix { durable[$0.file] >= $0.journalEnd }.count
            defer { pending.removeFirst(count) }
            return Array(pending.prefix(count))
        }
    }

    /// A commit succeeded: appends are taken again, and a file three quarters full retires.
    private func recordHealthy() {
        condition.withLock {
            if !health.isPoisoned { health = .ok }
            // Early enough that appends during the switch rarely grow the file past its zeros.
            if retiring == nil && written[current] >= limitBytes * 3 / 4 {
                retiring = current
                current = 1 - current
            }
        }
    }

    /// After a failed fdatasync nothing unsynced may become durable or visible: every partition
    /// with an unsynced record rolls back, and the unsynced records are marked refused, for
    /// `erase` to zero and sync before appends resume (so a crash cannot replay a refused
    /// append, nor let a refused record shadow a later one at the same offsets). The waiters
    /// fail last, once appends are taken again: one retried at once must not be refused.
    private func rollBack(_ error: LogError) {
        let touched = refuseUnsynced(error)
        let failed = touched.map { ($0, $0.rollBackUncommitted()) }
        condition.withLock {
            if case .rollingBack(let error) = health { health = refusedRanges.isEmpty ? .ok : .erasing(error) }
        }
        for (partition, waiters) in failed { partition.fail(waiters, error) }
    }

    /// Marks the unsynced records refused and drops them. Returns the partitions that had one.
    private func refuseUnsynced(_ error: LogError) -> [any CommittedPartition] {
        condition.withLock {
            if !health.isPoisoned { health = .rollingBack(error) }
            for f in 0..<2 where written[f] > durable[f] {
                let range = durable[f]..<written[f]
                refusedRanges[f] = refusedRanges[f].map { min($0.lowerBound, range.lowerBound)..<max($0.upperBound, range.upperBound) } ?? range
                written[f] = durable[f]
            }
            var touched: [ObjectIdentifier: any CommittedPartition] = [:]
            for record in pending { touched[ObjectIdentifier(record.partition)] = record.partition }
            pending.removeAll()
            return Array(touched.values)
        }
    }

    /// Zeroes and syncs the refused `ranges`. Returns whether no refused record is left (the
    /// thread retries every 100 ms until the device takes them).
    private func erase(_ ranges: [Int: Range<Int64>]) -> Bool {
        var erased: [Int] = []
        for (f, range) in ranges {
            guard (try? writeZeros(files[f], range)) != nil else { continue }
            if timedSync(fileOperations, files[f].fd, onSync: onSync) == nil { erased.append(f) }
        }
        return condition.withLock {
            for f in erased where refusedRanges[f] == ranges[f] { refusedRanges[f] = nil }
            if refusedRanges.isEmpty, case .erasing = health { health = .ok }
            return refusedRanges.isEmpty
        }
    }

    /// Syncs every partition's active segment (which holds everything `old` recorded: a batch
    /// reaches the segment before the journal), then empties `old`.
    private func checkpoint(_ old: Int) {
        let partitions = condition.withLock { self.partitions }
        do throws(LogError) {
            for partition in partitions { try partition.syncActiveSegment() }
            try invalidate(files[old])
        } catch {
            poison(error)
            return
        }
        condition.withLock {
            written[old] = 0
            durable[old] = 0
            retiring = nil
        }
    }

    /// Stops the sync thread after it commits what was appended. The partitions then sync their
    /// segments, after which `empty()` drops the journal's records.
    func close() {
        condition.lock()
        isClosed = true
        condition.broadcast()
        while !threadDone { condition.wait() }
        // Each partition holds this journal: keeping them would make a cycle that outlives the
        // closed log with all its buffers (the address sanitizer's leak report).
        partitions = []
        condition.unlock()
    }

    /// Drops both files' records, once every partition's segment is synced. With `preallocate`
    /// (the `always` policy) the files are first filled with zeros up to `limitBytes`.
    func empty(preallocate: Bool) throws(LogError) {
        for file in files {
            if preallocate {
                let size = try file.size()
                if size < limitBytes { try writeZeros(file, size..<limitBytes) }
                try invalidate(file)
            } else if try file.size() > 0 {
                guard fileOperations.truncate(file.fd, 0) == 0, fileOperations.sync(file.fd) == 0 else {
                    throw LogError.system("cannot empty the commit journal", errno: errno, path: file.displayPath)
                }
            }
        }
    }

    /// Zeroes the first record's header, which ends the file's lap for a reader, and syncs.
    private func invalidate(_ file: SharedFile) throws(LogError) {
        try writeZeros(file, 0..<Int64(Self.headerSize))
        guard fileOperations.sync(file.fd) == 0 else {
            throw LogError.system("cannot sync the commit journal", errno: errno, path: file.displayPath)
        }
    }

    /// Writes zeros over `range` of `file`, at most 1 MiB at a time.
    private func writeZeros(_ file: SharedFile, _ range: Range<Int64>) throws(LogError) {
        let zeros = [UInt8](repeating: 0, count: Int(min(range.count, 1 << 20)))
        var at = range.lowerBound
        while at < range.upperBound {
            let n = Int(min(Int64(zeros.count), range.upperBound - at))
            var failure: LogError?
            zeros.withUnsafeBytes { raw in
                do throws(LogError) {
                    try writeAll(fileOperations, fd: file.fd, UnsafeRawBufferPointer(rebasing: raw[0..<n]), at: at, displayPath: file.displayPath)
                } catch { failure = error }
            }
            if let failure { throw failure }
            at += Int64(n)
        }
    }
}
