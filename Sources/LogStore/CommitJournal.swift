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
/// What the commit journal needs of a partition, and all it sees of one: the journal commits,
/// rolls back and checkpoints partitions only through this.
protocol JournaledPartition: AnyObject, Sendable {
    var id: Int { get }
    /// Appends up to `end` (ending at `position` of `segment`) are durable: complete their waiters.
    func journalCommitted(upTo end: Int64, segment: SharedFile, position: Int64)
    /// A journal fdatasync failed: cut what was not durable; returns the waiters to fail.
    func journalRollBack() -> [DurabilityWaiter]
    /// Fails `waiters` with `error`, once the journal takes appends again.
    func fail(_ waiters: [DurabilityWaiter], _ error: LogError)
    /// Makes the active segment durable before the journal file that covered it is emptied.
    func syncForCheckpoint() throws(LogError)
}

final class CommitJournal: @unchecked Sendable {
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

    static let fileNames = DataLayout.journalNames
    static let headerSize = JournalRecord.headerSize

    /// An appended record not yet known durable.
    private struct Pending {
        let partition: any JournaledPartition
        let file: Int
        /// Position in `file` after the record.
        let journalEnd: Int64
        /// The partition's written end after this batch.
        let end: Int64
        let segment: SharedFile
        let segmentPosition: Int64
    }

    private let condition = NSCondition()
    private let fileOperations: FileOperations
    private let limitBytes: Int64
    private let files: [SharedFile]
    private var written: [Int64] = [0, 0]
    private var laps: [UInt64] = [0, 0]
    private var durable: [Int64] = [0, 0]
    /// The file appends go to; the other is empty or being retired.
    private var current = 0
    /// The file being retired by a checkpoint (it takes no appends).
    private var retiring: Int?
    private var pending: [Pending] = []
    private var scratch: [UInt8] = []
    private var partitions: [any JournaledPartition] = []
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
        try fileOperations.syncDirectory(directory, display: DataLayout.logName)
    }

    /// Starts the sync thread, committing for `partitions`.
    func start(partitions: [any JournaledPartition]) {
        condition.lock()
        self.partitions = partitions
        threadDone = false
        condition.unlock()
        let thread = Thread { [self] in
            nameCurrentThread("slog-commit")
            self.syncLoop()
        }
        thread.start()
    }

    /// Copies `batch` (already written to `partition`'s `segment`, ending at `segmentPosition`)
    /// into the journal. Called with the partition's lock held: a partition's records are in
    /// offset order, and no record outlives a rollback of its partition.
    func append(_ batch: UnsafeRawBufferPointer, partition: any JournaledPartition, end: Int64, segment: SharedFile,
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
        pending.append(Pending(partition: partition, file: file, journalEnd: written[file], end: end,
                               segment: segment, segmentPosition: segmentPosition))
        condition.broadcast()
    }

    /// The error appends get once poisoned.
    var poisonError: LogError? {
        condition.lock()
        defer { condition.unlock() }
        if case .poisoned(let error) = health { return error }
        return nil
    }

    /// Refuses every append from now on, until the log is reopened: a segment's fdatasync failed,
    /// and Linux reports a write-back error once, so a retry that returns 0 proves nothing. The
    /// journal keeps what the segment may lack; reopening replays it.
    func poison(_ error: LogError) {
        condition.lock()
        defer { condition.unlock() }
        let message = "\(error.message); appends are refused until sensorlogd restarts and replays the commit journal"
        // Not `.diskFull`, which heals by itself: this takes a restart.
        health = .poisoned(LogError(.io, message, path: error.path, errno: error.errno))
    }

    /// The last fdatasync failure, until a later one succeeds (or for good once poisoned).
    var syncError: LogError? {
        condition.lock()
        defer { condition.unlock() }
        return health.refusal
    }

    /// Number of fdatasync calls that committed appends.
    var syncs: Int {
        condition.lock()
        defer { condition.unlock() }
        return syncCount
    }

    private var hasWork: Bool { written[0] > durable[0] || written[1] > durable[1] }

    private func syncLoop() {
        condition.lock()
        while true {
            if !refusedRanges.isEmpty {
                eraseRefused()
                if !refusedRanges.isEmpty {
                    if isClosed { break }
                    _ = condition.wait(until: Date().addingTimeInterval(0.1))
                    continue
                }
            }
            if hasWork { commitRound() }
            // Not only when idle: under steady load there is always more to commit.
            if let old = retiring, written[old] == durable[old], refusedRanges.isEmpty, health.isOK {
                checkpoint(old)
                continue
            }
            if hasWork || !refusedRanges.isEmpty { continue }
            if isClosed { break }
            condition.wait()
        }
        threadDone = true
        condition.broadcast()
        condition.unlock()
    }

    /// One group commit: fdatasync the files with unsynced records, the retiring one first (its
    /// records are the older), then tell the partitions. Lock held on entry and exit.
    private func commitRound() {
        let targets = written
        let order = [1 - current, current].filter { written[$0] > durable[$0] }
        condition.unlock()
        var synced: [Int] = []
        var failure: (errno: Int32, file: Int)?
        for f in order {
            if let error = timedSync(fileOperations, files[f].fd, onSync: onSync) {
                failure = (error, f)
                break
            }
            synced.append(f)
        }
        condition.lock()
        syncCount += 1
        for f in synced { durable[f] = targets[f] }
        // A record is acknowledged only with every record before it: the prefix now durable.
        let count = pending.prefix { durable[$0.file] >= $0.journalEnd }.count
        let done = Array(pending.prefix(count))
        pending.removeFirst(count)
        condition.unlock()
        // Before any rollback: what the retiring file made durable stays, even when the current
        // file's fdatasync failed. The highest end per partition; lock order partition, journal.
        var ends: [ObjectIdentifier: Pending] = [:]
        for record in done { ends[ObjectIdentifier(record.partition)] = record }
        for record in ends.values {
            record.partition.journalCommitted(upTo: record.end, segment: record.segment, position: record.segmentPosition)
        }
        condition.lock()
        if let failure {
            fail(LogError.system("fsync failed", errno: failure.errno, path: files[failure.file].displayPath))
        } else {
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
    /// `eraseRefused` to zero and sync before appends resume (so a crash cannot replay a refused
    /// append, nor let a refused record shadow a later one at the same offsets). Lock held on entry and exit.
    private func fail(_ error: LogError) {
        if !health.isPoisoned { health = .rollingBack(error) }
        for f in 0..<2 where written[f] > durable[f] {
            let range = durable[f]..<written[f]
            refusedRanges[f] = refusedRanges[f].map { min($0.lowerBound, range.lowerBound)..<max($0.upperBound, range.upperBound) } ?? range
            written[f] = durable[f]
        }
        var touched: [ObjectIdentifier: any JournaledPartition] = [:]
        for record in pending { touched[ObjectIdentifier(record.partition)] = record.partition }
        pending.removeAll()
        condition.unlock()
        let failed = touched.values.map { ($0, $0.journalRollBack()) }
        condition.lock()
        if case .rollingBack(let error) = health { health = refusedRanges.isEmpty ? .ok : .erasing(error) }
        condition.unlock()
        for (partition, waiters) in failed { partition.fail(waiters, error) }
        condition.lock()
    }

    /// Zeroes and syncs the refused records; retried every 100 ms until the device takes both.
    /// Lock held on entry and exit.
    private func eraseRefused() {
        let ranges = refusedRanges
        condition.unlock()
        var erased: [Int] = []
        for (f, range) in ranges {
            guard (try? writeZeros(files[f], range)) != nil else { continue }
            if timedSync(fileOperations, files[f].fd, onSync: onSync) == nil { erased.append(f) }
        }
        condition.lock()
        for f in erased where refusedRanges[f] == ranges[f] { refusedRanges[f] = nil }
        if refusedRanges.isEmpty, case .erasing = health { health = .ok }
    }

    /// Syncs every partition's active segment (which holds everything `old` recorded: a batch
    /// reaches the segment before the journal), then empties `old`. Lock held on entry and exit.
    private func checkpoint(_ old: Int) {
        let partitions = self.partitions
        condition.unlock()
        var failure: LogError?
        for partition in partitions {
            do throws(LogError) { try partition.syncForCheckpoint() } catch { failure = error; break }
        }
        var invalidated = false
        if failure == nil {
            do throws(LogError) { try invalidate(files[old]); invalidated = true } catch { failure = error }
        }
        condition.lock()
        if invalidated {
            written[old] = 0
            durable[old] = 0
            retiring = nil
        } else if let failure {
            condition.unlock()
            poison(failure)
            condition.lock()
        }
    }

    /// Stops the sync thread after it commits what was appended. The partitions then sync their
    /// segments, after which `empty()` drops the journal's records.
    func close() {
        condition.lock()
        isClosed = true
        condition.broadcast()
        while !threadDone { condition.wait() }
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

/// A batch read back from the commit journal.
struct JournalBatch {
    let bytes: [UInt8]
    let baseOffset: Int64
    let nextOffset: Int64
    let maxTimestamp: Int64
    let appendTime: Int64
}

extension CommitJournal {
    /// Reads both files' records up to the first invalid one in each (an unsynced tail), and
    /// returns each partition's batches in offset order.
    func records(partitions: Int, maxBatchBytes: Int) throws(LogError) -> [Int: [JournalBatch]] {
        var result: [Int: [JournalBatch]] = [:]
        for file in files {
            let size = try file.size()
            guard size > 0 else { continue }
            var bytes = [UInt8](repeating: 0, count: Int(size))
            var readResult: Result<Int, LogError> = .success(0)
            bytes.withUnsafeMutableBytes { raw in
                do throws(LogError) { readResult = .success(try file.read(into: raw.baseAddress!, count: raw.count, at: 0)) } catch { readResult = .failure(error) }
            }
            let n = try readResult.get()
            bytes.withUnsafeBytes { raw in
                var at = 0
                var lap: UInt64?
                while let record = JournalRecord.parse(UnsafeRawBufferPointer(rebasing: raw[at..<n]), maxBatchBytes: maxBatchBytes),
                      lap == nil || lap == record.lap, record.partition < partitions {
                    lap = record.lap
                    let length = record.batch.count
                    let batch = record.batch
                    let partition = record.partition
                    guard let header = try? BatchHeader.parse(batch, maxBatchBytes: maxBatchBytes), header.length == length else { break }
                    result[partition, default: []].append(JournalBatch(
                        bytes: Array(batch), baseOffset: header.baseOffset, nextOffset: header.nextOffset,
                        maxTimestamp: header.maxTimestamp, appendTime: header.appendTime))
                    at += Self.headerSize + length
                }
            }
        }
        for key in result.keys { result[key]!.sort { $0.baseOffset < $1.baseOffset } }
        return result
    }
}

/// One commit-journal record (little-endian): u32 magic, u32 CRC32C of the bytes after it, u64
/// lap, u32 partition, u32 batch length, then the batch exactly as written to the segment.
struct JournalRecord {
    static let magic: UInt32 = 0x4C4A_4C53  // "SLJL"
    static let headerSize = 24

    let lap: UInt64
    let partition: Int
    /// The batch, within the buffer `parse` was given.
    let batch: UnsafeRawBufferPointer

    /// Writes the record of `batch` at the start of `raw` (which holds `headerSize + batch.count` bytes).
    static func encode(_ batch: UnsafeRawBufferPointer, lap: UInt64, partition: Int, into raw: UnsafeMutableRawBufferPointer) {
        let total = headerSize + batch.count
        raw.storeBytes(of: magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        raw.storeBytes(of: lap.littleEndian, toByteOffset: 8, as: UInt64.self)
        raw.storeBytes(of: UInt32(partition).littleEndian, toByteOffset: 16, as: UInt32.self)
        raw.storeBytes(of: UInt32(batch.count).littleEndian, toByteOffset: 20, as: UInt32.self)
        UnsafeMutableRawBufferPointer(rebasing: raw[headerSize..<total]).copyMemory(from: batch)
        let crc = sensorlog_crc32c(0, raw.baseAddress! + 8, total - 8)
        raw.storeBytes(of: crc.littleEndian, toByteOffset: 4, as: UInt32.self)
    }

    /// The record at the start of `raw`, or nil where a file's records end: no magic, a length
    /// out of bounds or past the bytes there, or a CRC that does not match.
    static func parse(_ raw: UnsafeRawBufferPointer, maxBatchBytes: Int) -> JournalRecord? {
        guard raw.count >= headerSize else { return nil }
        func load(_ offset: Int) -> UInt32 { UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
        let length = Int(load(20))
        guard load(0) == magic, length >= BatchHeader.size, length <= maxBatchBytes, headerSize + length <= raw.count,
              sensorlog_crc32c(0, raw.baseAddress! + 8, headerSize - 8 + length) == load(4)
        else { return nil }
        return JournalRecord(lap: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)), partition: Int(load(16)),
                             batch: UnsafeRawBufferPointer(rebasing: raw[headerSize..<(headerSize + length)]))
    }
}
