#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import LogStore
import SensorLogCore

/// Replays the log from its first offset into a new aggregates database: what the live
/// aggregator would have built, bit for bit (`last_updated` aside).
public enum AggregateRebuild {
    public struct Result: Sendable {
        public var readings: Int64
        public var rows: Int
        public var seconds: Double
        public var offsets: [Int64]
        /// Rows of hours that began before the retained log, kept from the current store.
        public var keptRows = 0
    }

    /// Builds a complete store at `output` (which must not exist) from the log in `dataDirectory`,
    /// reading it read-only (safe while sensorlogd runs).
    /// - Parameters:
    ///   - until: fold only batches appended at or before this time (the aggregates as they stood then).
    ///   - progress: called now and then with (bytes read, bytes in the log).
    public static func build(dataDirectory: String, output: String, until: Int64? = nil,
                             progress: (Int64, Int64) -> Void = { _, _ in }) throws -> Result {
        guard !FileManager.default.fileExists(atPath: output) else {
            throw LogError(.invalidArgument, "\(output) exists; choose a new file")
        }
        let started = Date()
        let directory = try LogDirectory(dataDirectory: dataDirectory)
        let store = try AggregateStore(path: output)
        var fold = try Fold(store: store, partitions: directory.partitionCount, totalBytes: logBytes(directory.dataDirectory)) {
            directory.reader(partition: $0, from: $1)
        }
        try fold.run(until: until, progress: progress)
        let kept = try keepRowsBeforeFloors(into: store, dataDirectory: directory.dataDirectory, partitions: directory.partitionCount)
        try store.checkpoint()
        progress(fold.totalBytes, fold.totalBytes)
        let rows = try store.allAggregates().count
        return Result(readings: fold.readings, rows: rows, seconds: Date().timeIntervalSince(started), offsets: fold.offsets, keptRows: kept)
    }

    /// Once retention has cut a partition, the hours up to its floor lost readings the log no
    /// longer holds: the current store's rows for them are the complete ones. Copies them into
    /// `store`; returns how many.
    static func keepRowsBeforeFloors(into store: AggregateStore, dataDirectory: String, partitions: Int) throws -> Int {
        let floors = try Retention.floors(dataDirectory: dataDirectory, partitions: partitions)
        let currentPath = DataLayout(dataDirectory).aggregates
        guard floors.contains(where: { $0 != nil }), FileManager.default.fileExists(atPath: currentPath) else { return 0 }
        let current = try AggregateStore(path: currentPath, readOnly: true)
        let keep = try current.allAggregates().filter { row in
            guard let floor = floors[PartitionHash.partition(of: row.sensorID, partitions: partitions)],
                  let start = Timestamp.parseISO8601(row.hourBucket) else { return false }
            return start <= Timestamp.hourStart(floor)
        }
        try store.commit(rows: keep, deletedSensors: [], offsets: [])
        return keep.count
    }

    /// `rebuild-aggregates` in place while sensorlogd serves: folds the live log from its start
    /// into a new file while ingestion and the aggregator go on, never past what the aggregator
    /// has committed; then pauses the aggregator (which commits what it folded and closes its
    /// store), folds up to exactly where it stopped, and swaps the new store in. Both stores then
    /// reflect the same offsets, so the rows kept from the current store for hours before a
    /// retention floor are as up to date as the rest, and the aggregator resumes on the new
    /// store where it paused. Queries read the old store until the swap and the new one after,
    /// never a mix. One at a time (the caller's); blocking: run it on a thread of its own.
    /// - Parameters:
    ///   - until: see `build`; refused once retention has cut the log (see `refuseUntilAfterRetention`).
    ///   - stopped: asked between batches; true abandons the rebuild (shutdown).
    public static func rebuildWhileServing(log: Log, aggregator: AggregatorService, until: Int64? = nil, _ ops: FileOperations = .system,
                                           stopped: @escaping @Sendable () -> Bool = { false },
                                           progress: (Int64, Int64) -> Void = { _, _ in }) throws -> Result {
        let started = Date()
        let dataDirectory = log.dataDirectory
        try refuseUntilAfterRetention(until, dataDirectory: dataDirectory, partitions: log.partitions.count)
        let target = DataLayout(dataDirectory).aggregatesRebuilding
        for suffix in ["", "-wal", "-shm"] {  // left by an interrupted rebuild
            try ops.remove(target + suffix, display: DataLayout.aggregatesRebuildingDisplay + suffix)
        }
        do {
            var fold: Fold? = try Fold(store: try AggregateStore(path: target), partitions: log.partitions.count,
                                       totalBytes: logBytes(dataDirectory), stopped: stopped) { log.reader(partition: $0, from: $1) }
            try fold!.run(until: until, limit: { aggregator.committedOffsets[$0] }, progress: progress)
            var result = try aggregator.whilePaused { () throws -> Result in
                let paused = aggregator.committedOffsets
                try fold!.run(until: until, limit: { paused[$0] }, progress: progress)
                // Retention may have cut the log since the start (it does not wait for a rebuild).
                try refuseUntilAfterRetention(until, dataDirectory: dataDirectory, partitions: log.partitions.count)
                let kept = try keepRowsBeforeFloors(into: fold!.store, dataDirectory: dataDirectory, partitions: log.partitions.count)
                try fold!.store.checkpoint()
                let done = Result(readings: fold!.readings, rows: try fold!.store.allAggregates().count, seconds: 0,
                                  offsets: fold!.offsets, keptRows: kept)
                progress(fold!.totalBytes, fold!.totalBytes)
                fold = nil  // closes the new store before it is renamed into place
                try swapIn(target, dataDirectory: dataDirectory, ops)
                return done
            }
            result.seconds = Date().timeIntervalSince(started)
            return result
        } catch {
            _ = ops.unlink(target)
            throw error
        }
    }

    /// The bytes of every segment a full read of the log goes through (at least 1): the total
    /// of a progress bar.
    public static func logBytes(_ dataDirectory: String) -> Int64 {
        guard let directory = try? LogDirectory(dataDirectory: dataDirectory) else { return 1 }
        return max(1, (0..<directory.partitionCount).reduce(0) { $0 + ((try? directory.segmentBytes(partition: $1)) ?? 0) })
    }

    /// Replaces `dataDirectory/aggregates.sqlite` with `rebuilt` atomically. The server must be
    /// stopped (the caller checks the lock).
    public static func swapIn(_ rebuilt: String, dataDirectory: String, _ ops: FileOperations = .system) throws {
        let target = DataLayout(dataDirectory).aggregates
        // The old database's WAL must not be replayed onto the new file.
        for suffix in ["-wal", "-shm"] {
            try ops.remove(target + suffix, display: AggregateStore.fileName + suffix)
            try ops.remove(rebuilt + suffix, display: DataLayout.aggregatesRebuildingDisplay + suffix)
        }
        try ops.rename(rebuilt, to: target, display: AggregateStore.fileName)
        try ops.syncDirectory(dataDirectory, display: ".")
    }

    /// An in-place rebuild `until` a time keeps the current rows of the hours before a retention
    /// floor, which count readings appended after that time; the aggregator, resuming from the
    /// rebuilt offsets, would count those again. Refused then (`--output` is the way).
    static func refuseUntilAfterRetention(_ until: Int64?, dataDirectory: String, partitions: Int) throws {
        guard until != nil, try Retention.floors(dataDirectory: dataDirectory, partitions: partitions).contains(where: { $0 != nil }) else { return }
        throw LogError(.invalidArgument, "an in-place rebuild with --until keeps the rows of the hours retention cut, which would then count "
                       + "readings after that time twice; rebuild into another file with --output instead")
    }
}

extension AggregateRebuild {
    /// Present while `aggregates.sqlite` may hold folds of records the log no longer has: a
    /// repair writes it before it changes a segment and removes it once the rebuilt store is in
    /// place, so a repair interrupted in between is finished by the next `verify --repair`.
    public static let pendingMarker = DataLayout.aggregatesRebuildPendingDisplay

    /// Whether a repair changed the log and the aggregates were not rebuilt since.
    public static func isPending(dataDirectory: String) -> Bool {
        FileManager.default.fileExists(atPath: DataLayout(dataDirectory).aggregatesRebuildPending)
    }

    /// Writes the marker durably (before the log changes).
    public static func markPending(dataDirectory: String) throws {
        let path = DataLayout(dataDirectory).aggregatesRebuildPending
        guard FileManager.default.createFile(atPath: path, contents: Data("rebuild aggregates.sqlite: sensorlog verify --repair\n".utf8)) else {
            throw LogError.system("cannot create the rebuild marker", errno: errno, path: pendingMarker)
        }
        try syncDirectory(dataDirectory, display: ".")
    }

    /// Rebuilds `aggregates.sqlite` from the whole log into a new file beside it, swaps it in
    /// atomically (a crash leaves the old store or the new one, never a mix) and clears the
    /// marker. The server must be stopped: the caller holds the lock.
    /// - Parameter until: see `build`; the offsets then say where the aggregator resumes.
    public static func rebuildInPlace(dataDirectory: String, held lock: DirectoryLock, until: Int64? = nil, _ ops: FileOperations = .system,
                                      progress: (Int64, Int64) -> Void = { _, _ in }) throws -> Result {
        lock.requireHeld(for: dataDirectory)
        let layout = DataLayout(dataDirectory)
        let target = layout.aggregatesRebuilding
        for suffix in ["", "-wal", "-shm"] {  // left by an interrupted rebuild
            try ops.remove(target + suffix, display: DataLayout.aggregatesRebuildingDisplay + suffix)
        }
        try refuseUntilAfterRetention(until, dataDirectory: dataDirectory, partitions: try LogDirectory(dataDirectory: dataDirectory).partitionCount)
        let result: Result
        do {
            result = try build(dataDirectory: dataDirectory, output: target, until: until, progress: progress)
            try swapIn(target, dataDirectory: dataDirectory, ops)
        } catch {
            // Best effort: the failure to report is the rebuild's, and the next rebuild removes it.
            _ = ops.unlink(target)
            throw error
        }
        try ops.remove(layout.aggregatesRebuildPending, display: pendingMarker)
        try ops.syncDirectory(dataDirectory, display: ".")
        return result
    }
}
