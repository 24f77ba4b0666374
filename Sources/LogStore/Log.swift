#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
public import SensorLogCore

/// How to open a log for writing.
public struct LogConfiguration: Sendable {
    public var limits: Limits
    public var fsync: FsyncPolicy
    /// The seam for write and fdatasync (tests inject ENOSPC and EIO here).
    public var fileOperations: FileOperations
    /// Called after each background fdatasync: partition, duration in nanoseconds.
    public var onSync: (@Sendable (_ partition: Int, _ nanoseconds: Int64) -> Void)?
    /// Append times (and so segment age) come from its wall clock.
    public var time: any TimeSource

    public init(limits: Limits = Limits(), fsync: FsyncPolicy = .interval, fileOperations: FileOperations = .system,
                onSync: (@Sendable (Int, Int64) -> Void)? = nil, time: any TimeSource = SystemTime()) {
        self.limits = limits
        self.fsync = fsync
        self.fileOperations = fileOperations
        self.onSync = onSync
        self.time = time
    }
}

/// The log's metadata file, `meta.json`: fixed when the log is created.
public struct LogMetadata: Codable, Sendable, Equatable {
    public static let currentVersion = 1
    public static let fileName = DataLayout.metadataName

    public var format = "sensorlog"
    public var formatVersion = LogMetadata.currentVersion
    public var partitions: Int
    public var partitionHash = "fnv1a64"
    public var createdAt: Int64

    enum CodingKeys: String, CodingKey {
        case format, formatVersion = "format_version", partitions, partitionHash = "partition_hash", createdAt = "created_at_ns"
    }

    /// Reads and checks `meta.json` in `dataDirectory`; nil when there is none.
    package static func read(_ dataDirectory: String, maxPartitions: Int) throws(LogError) -> LogMetadata? {
        let path = DataLayout(dataDirectory).metadata
        guard let bytes = SegmentFiles.readWholeFile(path) else { return nil }
        let meta: LogMetadata
        do {
            meta = try JSONDecoder().decode(LogMetadata.self, from: Data(bytes))
        } catch {
            throw LogError(.invalidLog, "unreadable metadata file", path: fileName)
        }
        guard meta.format == "sensorlog" else { throw LogError(.invalidLog, "not a sensorlog data directory", path: fileName) }
        guard meta.formatVersion == currentVersion else {
            throw LogError(.invalidLog, "log format version \(meta.formatVersion); this build reads version \(currentVersion)", path: fileName)
        }
        guard meta.partitionHash == "fnv1a64" else { throw LogError(.invalidLog, "unknown partition hash \(meta.partitionHash)", path: fileName) }
        guard (1...maxPartitions).contains(meta.partitions) else {
            throw LogError(.invalidLog, "partition count \(meta.partitions) out of range", path: fileName)
        }
        return meta
    }

    package func write(_ dataDirectory: String) throws(LogError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data: Data
        do { data = try encoder.encode(self) } catch { fatalError("metadata always encodes") }
        try SegmentFiles.writeAtomically([UInt8](data) + [0x0A], to: DataLayout(dataDirectory).metadata,
                                         directory: dataDirectory, displayPath: Self.fileName)
    }
}


/// Creates `directory` and any missing parents, and syncs the parent of each directory it
/// created, the data directory's own parent every time: a power cut can otherwise take a new
/// data directory's name, and everything acknowledged in it, with it (also when the open that
/// created it died before its sync).
/// - Throws: `LogError` `.io` when a directory cannot be created or synced, or is a file.
private func createDurably(_ directory: String, _ ops: FileOperations) throws(LogError) {
    func syncParent(_ entry: String) throws(LogError) {
        let parent = (entry as NSString).deletingLastPathComponent
        try ops.syncDirectory(parent, display: parent)
    }
    var isDirectory: ObjCBool = false
    if FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) {
        guard isDirectory.boolValue else { throw LogError(.io, "data directory \(directory) is a file, not a directory") }
        return try syncParent(directory)
    }
    var created = [directory]
    var parent = (directory as NSString).deletingLastPathComponent
    while parent.count > 1, !FileManager.default.fileExists(atPath: parent) {
        created.append(parent)
        parent = (parent as NSString).deletingLastPathComponent
    }
    do {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    } catch {
        throw LogError(.io, "cannot create data directory \(directory): \(error.localizedDescription)")
    }
    for entry in created { try syncParent(entry) }  // deepest first
}

/// The exclusive lock on a data directory: `flock` on `LOCK`, which holds the owner's pid.
///
/// Operations that change the log's files with the server stopped (compaction, retention,
/// repair, an aggregates rebuild in place) take the held lock as a parameter: holding it is part
/// of their signature, not a sentence in their documentation.
public final class DirectoryLock: Sendable {
    static let fileName = DataLayout.lockName
    let fd: Int32
    /// The data directory it locks (standardised).
    public let dataDirectory: String

    public init(dataDirectory: String) throws(LogError) {
        let dataDirectory = URL(fileURLWithPath: dataDirectory).standardizedFileURL.path
        self.dataDirectory = dataDirectory
        let path = DataLayout(dataDirectory).lock
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw LogError.system("cannot open lock file", errno: errno, path: Self.fileName) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            var buffer = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buffer, 32, 0)
            _ = Glibc.close(fd)
            let pid = n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "unknown"
            throw LogError(.locked, "data directory \(dataDirectory) is in use by another process (pid \(pid)); stop it first")
        }
        // The pid is for the operator ("in use by pid N"); the flock is the lock. Best effort: on
        // a full disk the write may fail, and refusing the lock then would block the very
        // maintenance (retention, compaction) that frees space.
        let pid = Array("\(getpid())\n".utf8)
        _ = FileOperations.system.truncate(fd, 0)
        _ = try? writeAll(.system, fd: fd, pid, at: 0, displayPath: Self.fileName)
        self.fd = fd
    }

    /// Stops the process when this is not the lock of `directory`: an operation given another
    /// directory's lock would change files nobody locked.
    public func requireHeld(for directory: String) {
        precondition(dataDirectory == URL(fileURLWithPath: directory).standardizedFileURL.path,
                     "the lock of \(dataDirectory) held for an operation on \(directory)")
    }

    /// The pid written in `LOCK` if some process holds the lock now, else nil.
    static func holder(dataDirectory: String) -> Int32? {
        let fd = Glibc.open(DataLayout(dataDirectory).lock, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { _ = Glibc.close(fd) }
        if flock(fd, LOCK_SH | LOCK_NB) == 0 {
            _ = flock(fd, LOCK_UN)
            return nil
        }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = pread(fd, &buffer, 32, 0)
        guard n > 0 else { return -1 }
        return Int32(String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    private let released = Atomic<Bool>(false)

    /// Unlocks and closes; later calls do nothing (a second close(2) would close whatever file
    /// reused the descriptor number meanwhile).
    public func release() {
        guard !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
        _ = flock(fd, LOCK_UN)
        _ = Glibc.close(fd)
    }
}

/// A pool of batch encoders, so concurrent appends encode in parallel outside the partition lock.
final class EncoderPool: @unchecked Sendable {
    private let lock = NSLock()
    private var free: [BatchEncoder] = []

    func take() -> BatchEncoder {
        lock.lock()
        defer { lock.unlock() }
        return free.popLast() ?? BatchEncoder()
    }

    func give(_ encoder: BatchEncoder) {
        lock.lock()
        defer { lock.unlock() }
        if free.count < 64 { free.append(encoder) }
    }
}

/// The partitioned, segmented, append-only log, opened for writing by one process.
///
/// Open with `Log.open`; append with `append(_:toPartition:)`; read with `reader(partition:from:)`;
/// close with `close()`.
public final class Log: Sendable {
    public let dataDirectory: String
    public let metadata: LogMetadata
    public let partitions: [Partition]
    public let configuration: LogConfiguration
    /// The data directory's lock, held while the log is open: what the daemon's own
    /// maintenance (finishing an interrupted repair's rebuild) passes as proof.
    public let lock: DirectoryLock
    let encoders = EncoderPool()
    /// Serialises the read-modify-writes of `retention.json` (the retention pass, and a cluster
    /// follower starting a partition at a purged stream's floor).
    let retentionFloorsLock = Mutex(())
    /// Holds what was acknowledged under `always` and not yet in a segment (replayed on opening
    /// under any policy).
    private let journal: CommitJournal
    /// The fsync policy at work: the journal under `always`, an `IntervalSyncer` otherwise.
    private let committer: any Committer

    private init(dataDirectory: String, metadata: LogMetadata, partitions: [Partition], configuration: LogConfiguration,
                 lock: DirectoryLock, journal: CommitJournal, committer: any Committer) {
        self.journal = journal
        self.committer = committer
        self.dataDirectory = dataDirectory
        self.metadata = metadata
        self.partitions = partitions
        self.configuration = configuration
        self.lock = lock
    }

    /// Opens the log in `dataDirectory`, creating it (with `configuration.limits.partitions`
    /// partitions) when empty, and runs recovery on every partition.
    /// - Throws: `.locked` when another process holds the directory; `.corruptBatch` when a
    ///   partition has damage recovery must not cut away; `.invalidLog` for a foreign directory.
    public static func open(dataDirectory: String, configuration: LogConfiguration = LogConfiguration()) throws(LogError) -> Log {
        do { try configuration.limits.validate() } catch { throw LogError(.invalidArgument, error.description) }
        let directory = URL(fileURLWithPath: dataDirectory).standardizedFileURL.path
        try createDurably(directory, configuration.fileOperations)
        let lock = try DirectoryLock(dataDirectory: directory)
        var partitions: [Partition] = []
        do {
            var metadata = try LogMetadata.read(directory, maxPartitions: configuration.limits.maxPartitions)
            if metadata == nil {
                let created = LogMetadata(partitions: configuration.limits.partitions, createdAt: configuration.time.wallNanoseconds)
                try created.write(directory)
                metadata = created
            }
            let meta = metadata!
            // Whatever policy the log ran under before, what its journal holds was acknowledged.
            var journalOnSync: (@Sendable (Int64) -> Void)?
            if let hook = configuration.onSync { journalOnSync = { hook(-1, $0) } }
            let journal = try CommitJournal(
                layout: DataLayout(directory), limitBytes: configuration.limits.commitJournalBytes,
                fileOperations: configuration.fileOperations, onSync: journalOnSync)
            let replay = try journal.records(partitions: meta.partitions, maxBatchBytes: configuration.limits.maxBatchBytes)
            let committer: any Committer = switch configuration.fsync {
            case .always: journal
            case .interval: IntervalSyncer(interval: configuration.limits.fsyncInterval)
            case .never: IntervalSyncer(interval: nil)
            }
            for p in 0..<meta.partitions {
                let paths = DataLayout(directory).partition(p)
                var onSync: (@Sendable (Int64) -> Void)?
                if let hook = configuration.onSync { onSync = { hook(p, $0) } }
                let partition = try Partition(
                    id: p, directory: paths.directory, displayDirectory: paths.display, limits: configuration.limits,
                    committer: committer, fileOperations: configuration.fileOperations, onSync: onSync,
                    replay: replay[p] ?? [])
                partitions.append(partition)
            }
            // Every partition synced its segment on opening: the journal's records are in them.
            try journal.empty(preallocate: configuration.fsync == .always)
            committer.start(partitions: partitions)
            return Log(dataDirectory: directory, metadata: meta, partitions: partitions, configuration: configuration,
                       lock: lock, journal: journal, committer: committer)
        } catch {
            for p in partitions { try? p.close() }
            lock.release()
            throw error
        }
    }

    /// The partition `sensorID` belongs to.
    public func partition(for sensorID: String) -> Int {
        PartitionHash.partition(of: sensorID, partitions: partitions.count)
    }

    /// Encodes `readings` outside the partition lock, then writes them under it.
    private func encodeAndWrite(_ readings: UnsafeBufferPointer<Reading>, partition: Int) throws(LogError) -> (AppendResult, DurabilityWaiter?) {
        guard partitions.indices.contains(partition) else { throw LogError(.invalidArgument, "no partition \(partition)") }
        guard !readings.isEmpty else { throw LogError(.invalidArgument, "empty batch") }
        guard readings.count <= configuration.limits.maxBatchRecords else {
            throw LogError(.invalidArgument, "batch of \(readings.count) readings exceeds the limit of \(configuration.limits.maxBatchRecords)")
        }
        assert(readings.allSatisfy { self.partition(for: $0.sensorID) == partition }, "reading appended to the wrong partition")
        let encoder = encoders.take()
        defer { encoders.give(encoder) }
        let appendTime = configuration.time.wallNanoseconds
        let bytes = try encoder.encode(readings, appendTime: appendTime, maxBatchBytes: configuration.limits.maxBatchBytes)
        let maxTimestamp = Int64(littleEndian: bytes.loadUnaligned(fromByteOffset: 32, as: Int64.self))
        return try partitions[partition].write(encoded: bytes, count: readings.count, maxTimestamp: maxTimestamp, appendTime: appendTime)
    }

    /// Appends `readings` (all of one partition) as one batch and returns once they are durable
    /// under the fsync policy.
    /// - Returns: the offsets given to the readings, in order.
    ///
    /// Runs on the caller's executor (`nonisolated(nonsending)`): the ingest actor that calls it
    /// has nothing else to do meanwhile, and leaving it and coming back cost two task switches,
    /// often a thread wake-up each, per append (about a sixth of a one-reading POST).
    public nonisolated(nonsending) func append(_ readings: [Reading], toPartition partition: Int) async throws(LogError) -> AppendResult {
        var outcome: Result<(AppendResult, DurabilityWaiter?), LogError>!
        readings.withUnsafeBufferPointer { buffer in
            do throws(LogError) { outcome = .success(try encodeAndWrite(buffer, partition: partition)) } catch { outcome = .failure(error) }
        }
        let (result, waiter) = try outcome.get()
        if let waiter { try await partitions[partition].wait(waiter) }
        return result
    }

    /// The blocking form of `append(_:toPartition:)`, for tools, tests and benchmarks.
    public func appendBlocking(_ readings: UnsafeBufferPointer<Reading>, toPartition partition: Int) throws(LogError) -> AppendResult {
        let (result, waiter) = try encodeAndWrite(readings, partition: partition)
        if let waiter { try partitions[partition].wait(waiter) }
        return result
    }

    /// The blocking form of `append(_:toPartition:)` for an array.
    public func appendBlocking(_ readings: [Reading], toPartition partition: Int) throws(LogError) -> AppendResult {
        var outcome: Result<AppendResult, LogError>!
        readings.withUnsafeBufferPointer { buffer in
            do throws(LogError) { outcome = .success(try appendBlocking(buffer, toPartition: partition)) } catch { outcome = .failure(error) }
        }
        return try outcome.get()
    }

    /// Deletes `sensorID`'s readings: appends its deletion record, stamped with the timestamp of
    /// the newest reading it deletes (`lastReading`), and once the record is durable under the
    /// fsync policy masks the readings below it (`Partition.deletions`): from then on no reader
    /// of this log sees them, and a compaction drops them. Not before: a compaction that
    /// dropped them for a record that then failed to become durable could not be undone.
    public func appendDeletion(_ sensorID: String, lastReading: Int64, toPartition partition: Int) async throws(LogError) -> AppendResult {
        let (result, waiter) = try writeDeletion(sensorID, lastReading: lastReading, partition: partition)
        if let waiter { try await partitions[partition].wait(waiter) }
        partitions[partition].deletions.add(sensorID, before: result.baseOffset)
        return result
    }

    /// The blocking form of `appendDeletion`, for tools and tests.
    public func appendDeletionBlocking(_ sensorID: String, lastReading: Int64, toPartition partition: Int) throws(LogError) -> AppendResult {
        let (result, waiter) = try writeDeletion(sensorID, lastReading: lastReading, partition: partition)
        if let waiter { try partitions[partition].wait(waiter) }
        partitions[partition].deletions.add(sensorID, before: result.baseOffset)
        return result
    }

    private func writeDeletion(_ sensorID: String, lastReading: Int64, partition: Int) throws(LogError) -> (AppendResult, DurabilityWaiter?) {
        guard partitions.indices.contains(partition) else { throw LogError(.invalidArgument, "bad deletion batch") }
        let encoder = encoders.take()
        defer { encoders.give(encoder) }
        let appendTime = configuration.time.wallNanoseconds
        let bytes = try encoder.encodeDeletions([sensorID], timestamp: lastReading, appendTime: appendTime,
                                                maxBatchBytes: configuration.limits.maxBatchBytes)
        return try partitions[partition].write(encoded: bytes, count: 1, maxTimestamp: lastReading, appendTime: appendTime)
    }

    /// Closes every non-empty active segment (fsync, index files) and starts new ones, so that
    /// what was appended so far lies in closed segments. For offline maintenance: compaction and
    /// retention touch closed segments only.
    /// - Parameter only: the partitions to roll (all when nil).
    public func rollActiveSegments(only: Set<Int>? = nil) throws(LogError) {
        for p in partitions where only?.contains(p.id) ?? true { try p.rollNow() }
    }

    /// Starts an empty partition at `offset` instead of 0 (`Partition.start(at:)`): a cluster
    /// node joining after its stream was purged holds nothing below the stream's first batch.
    public func startEmptyPartition(_ partition: Int, at offset: Int64) throws(LogError) {
        try partitions[partition].start(at: offset)
    }

    /// A reader of `partition` from `offset`.
    public func reader(partition: Int, from offset: Int64) -> PartitionReader {
        partitions[partition].reader(from: offset)
    }

    /// The first offset of `partition` whose batch holds a reading at or after `timestamp`, via the
    /// time index; the partition's end offset when there is none.
    public func offset(partition: Int, atOrAfter timestamp: Int64) throws(LogError) -> Int64 {
        try PartitionReader.offset(atOrAfter: timestamp, in: partitions[partition])
    }

    /// The last failed commit's error, until a later commit succeeds.
    public var syncError: LogError? { committer.syncError }

    /// Number of fdatasync calls that committed appends (group commit makes it lower than the
    /// number of appends).
    public var commitSyncs: Int { committer.syncs }

    /// Commits now what the interval syncer would at its next tick (for tests: no waiting for the period).
    func syncRound() { (committer as? IntervalSyncer)?.syncRound() }

    /// Makes every appended batch durable now.
    public func flush() throws(LogError) {
        for p in partitions { try p.flush() }
    }

    /// Syncs and closes every partition and releases the directory lock. Closing again syncs
    /// again and releases nothing twice.
    public func close() throws(LogError) {
        var firstError: LogError?
        committer.close()
        for p in partitions {
            do throws(LogError) { try p.close() } catch { firstError = firstError ?? error }
        }
        // A poisoned journal holds what a segment may have lost: only a reopen's replay may drop it.
        if firstError == nil && journal.poisonError == nil {
            do throws(LogError) { try journal.empty(preallocate: configuration.fsync == .always) } catch { firstError = error }
        }
        lock.release()
        if let firstError { throw firstError }
    }
}
