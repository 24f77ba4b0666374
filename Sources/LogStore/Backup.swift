#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SensorLogCore

/// Consistent copies of the log, taken while sensorlogd runs: closed segments are immutable, so
/// they are cloned whole (a reflink where the file system shares extents copy-on-write, else a
/// plain copy); the active segment is copied up to its last complete batch. Files are taken in an
/// order that keeps the copy consistent with itself.
public enum LogBackup {
    /// How closed segments reach the backup.
    public enum SegmentMode: Sendable {
        /// An independent copy: a reflink (FICLONE) where the file system offers one, else bytes copied.
        case copy
        /// A hard link (a copy across file systems): fast, but the backup shares the data's bytes,
        /// so damage to one is damage to both.
        case hardLink
    }

    public struct Result: Sendable {
        public var files = 0
        /// Closed-segment files cloned by the file system (independent, no bytes copied).
        public var reflinked = 0
        /// Files whose bytes were copied.
        public var copied = 0
        /// Closed-segment files hard-linked (only under `SegmentMode.hardLink`).
        public var linked = 0
        public var bytes: Int64 = 0

        mutating func add(_ other: Result) {
            files += other.files
            reflinked += other.reflinked
            copied += other.copied
            linked += other.linked
            bytes += other.bytes
        }
    }

    /// Copies the log of `dataDirectory` into `target` (created when absent), except
    /// `aggregates.sqlite`, which the caller copies first with SQLite's online backup.
    /// - Parameters:
    ///   - segments: how closed segments are taken; `.copy` unless the caller accepts shared bytes.
    /// - Throws: `.invalidLog` when `dataDirectory` holds no log; `LogError` on I/O errors.
    /// - Complexity: O(bytes of the log) copied, or O(files) where the file system reflinks.
    public static func backup(dataDirectory: String, to target: String, segments mode: SegmentMode = .copy) throws -> Result {
        let source = try LogDirectory(dataDirectory: dataDirectory)
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        var result = Result()
        let (from, to) = (source.layout, DataLayout(target))
        try copyFile(from.metadata, to: to.metadata, result: &result)
        if FileManager.default.fileExists(atPath: from.retentionFloors) {
            try copyFile(from.retentionFloors, to: to.retentionFloors, result: &result)
        }
        if FileManager.default.fileExists(atPath: from.groups) {
            try FileManager.default.createDirectory(atPath: to.groups, withIntermediateDirectories: true)
            for name in DataLayout.groupNames(in: try FileManager.default.contentsOfDirectory(atPath: from.groups)) {
                try copyFile(from.group(name).path, to: to.group(name).path, result: &result)
            }
        }
        for p in 0..<source.partitionCount {
            try backUpPartition(source.views[p], to: to.partition(p), mode: mode, result: &result)
        }
        try syncDirectory(target, display: target)
        return result
    }

    /// Copies one partition's segments. Beside a running server, retention may delete segments
    /// and a compaction swap them while they are copied: the copy counts only if no compaction
    /// was in progress (its manifest absent) and the list of segments was the same before and
    /// after; otherwise it is done again (a swap takes milliseconds, a pass runs once a minute).
    static func backUpPartition(_ view: ReadOnlyPartition, to out: PartitionPaths, mode: SegmentMode, result: inout Result) throws {
        for attempt in 1... {
            var copied = Result()
            let bases = try view.segmentBases()
            let copiedAll = try copySegments(view, bases, to: out, mode: mode, result: &copied)
            let after = try view.segmentBases()
            let settled = copiedAll && !Compactor.hasManifest(view.paths) && Array(after.prefix(bases.count - 1)) == Array(bases.dropLast())
            if settled || attempt == 50 {
                guard settled else { throw LogError(.io, "the segments kept changing while they were copied", path: view.displayDirectory) }
                result.add(copied)
                try syncDirectory(out.directory, display: out.display)
                return
            }
            try? FileManager.default.removeItem(atPath: out.directory)
            usleep(50_000)
        }
    }

    /// Copies the closed segments in `bases` and the active one's complete prefix. Returns false
    /// when a segment went meanwhile (retention or a compaction removed it).
    private static func copySegments(_ view: ReadOnlyPartition, _ bases: [Int64], to out: PartitionPaths, mode: SegmentMode,
                                     result: inout Result) throws -> Bool {
        try FileManager.default.createDirectory(atPath: out.directory, withIntermediateDirectories: true)
        if Compactor.hasManifest(view.paths) { return false }
        for (i, base) in bases.enumerated() {
            let (paths, copies) = (view.segmentPaths(base), out.segment(base))
            do {
                if i < bases.count - 1 {
                    for (file, copy) in zip(paths.files, copies.files) where FileManager.default.fileExists(atPath: file) {
                        try takeClosed(file, to: copy, mode: mode, result: &result)
                    }
                } else {
                    // The active segment: up to the last complete, valid batch.
                    let segment = try view.openSegment(base)
                    var batches = try segment.batches(expecting: base, verifyCRC: true, buffer: GrowableBuffer(capacity: 64 << 10))
                    while try batches.next() != nil {}
                    try copyPrefix(segment.file, bytes: batches.position, to: copies.log)
                    result.files += 1
                    result.copied += 1
                    result.bytes += batches.position
                }
            } catch let error as LogError where error.errno == ENOENT {
                return false
            }
        }
        return true
    }

    /// Restores a backup into `dataDirectory`, which must be empty or absent, holding its lock
    /// while the files land (a sensorlogd started on it meanwhile is refused as `locked`).
    public static func restore(from backup: String, into dataDirectory: String) throws -> Result {
        try requireBackup(backup)
        try requireRestorable(dataDirectory)  // before anything is created in it
        try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
        let parent = (dataDirectory as NSString).deletingLastPathComponent
        try syncDirectory(parent, display: parent)
        let lock = try DirectoryLock(dataDirectory: dataDirectory)
        defer { lock.release() }
        return try restore(from: backup, into: dataDirectory, held: lock)
    }

    /// Restores a backup into `dataDirectory`, which holds nothing but its lock file (a stopped
    /// server's is no data). Every file
    /// is synced, then every directory, so a restore that returned survives a power cut.
    public static func restore(from backup: String, into dataDirectory: String, held lock: DirectoryLock) throws -> Result {
        lock.requireHeld(for: dataDirectory)
        try requireBackup(backup)
        try requireRestorable(dataDirectory)
        var result = Result()
        var directories = [dataDirectory]
        guard let e = FileManager.default.enumerator(atPath: backup) else { return result }
        for case let relative as String in e where relative != DataLayout.lockName {
            let from = backup + "/" + relative
            var isDirectory: ObjCBool = false
            _ = FileManager.default.fileExists(atPath: from, isDirectory: &isDirectory)
            if isDirectory.boolValue {
                try FileManager.default.createDirectory(atPath: dataDirectory + "/" + relative, withIntermediateDirectories: true)
                directories.append(dataDirectory + "/" + relative)
            } else {
                try copyFile(from, to: dataDirectory + "/" + relative, result: &result)
            }
        }
        // Deepest first: a directory's entry is durable only once its parent is synced.
        for directory in directories.reversed() { try syncDirectory(directory, display: directory) }
        return result
    }

    /// `dataDirectory` is absent or holds nothing but a lock file.
    static func requireRestorable(_ dataDirectory: String) throws {
        guard FileManager.default.fileExists(atPath: dataDirectory) else { return }
        guard try FileManager.default.contentsOfDirectory(atPath: dataDirectory).allSatisfy({ $0 == DataLayout.lockName }) else {
            throw LogError(.invalidArgument, "\(dataDirectory) is not empty")
        }
    }

    static func requireBackup(_ backup: String) throws(LogError) {
        guard FileManager.default.fileExists(atPath: DataLayout(backup).metadata) else {
            throw LogError(.invalidLog, "\(backup) is not a sensorlog backup (\(LogMetadata.fileName) missing)")
        }
    }

    /// Creates `path`, or checks that it is an empty directory.
    /// - Throws: `.invalidArgument` when it holds anything (a backup or restore never mixes files in).
    public static func makeEmptyDirectory(_ path: String) throws {
        if FileManager.default.fileExists(atPath: path) {
            guard try FileManager.default.contentsOfDirectory(atPath: path).isEmpty else {
                throw LogError(.invalidArgument, "\(path) is not empty")
            }
        } else {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
    }

    /// A closed segment's file into the backup: linked only when asked, else cloned or copied.
    static func takeClosed(_ from: String, to: String, mode: SegmentMode, result: inout Result) throws {
        if mode == .hardLink && link(from, to) == 0 {
            result.files += 1
            result.linked += 1
            result.bytes += Compactor.fileSize(to)
            return
        }
        if try reflink(from, to: to) {
            result.files += 1
            result.reflinked += 1
            result.bytes += Compactor.fileSize(to)
            return
        }
        try copyFile(from, to: to, result: &result)
    }

    /// FICLONE (`_IOW(0x94, 9, int)`): the file system shares the extents copy-on-write, so a later
    /// write to either file leaves the other as it was.
    static let ficlone: UInt = 0x4004_9409

    /// Clones `from` into a new `to`.
    /// - Returns: false, leaving no file at `to`, when the file system cannot clone (ext4,
    ///   another file system, tmpfs), so that the caller copies instead.
    static func reflink(_ from: String, to: String) throws -> Bool {
        let source = SharedFile(try FileDescriptor.open(from, flags: O_RDONLY, displayPath: from), displayPath: from)
        let out = try FileDescriptor.open(to, flags: O_WRONLY | O_CREAT | O_TRUNC, displayPath: to)
        let status = ioctl(out.rawValue, ficlone, source.fd)
        let failure = errno
        let synced = status == 0 && FileOperations.system.fullSync(out.rawValue) == 0
        let syncFailure = errno
        out.close()
        if synced { return true }
        // Best effort: the clone's own failure is the one to report (and a copy replaces the file).
        _ = FileOperations.system.unlink(to)
        if status == 0 { throw LogError.system("fsync failed", errno: syncFailure, path: to) }
        guard [EOPNOTSUPP, EXDEV, EINVAL, ENOTTY, ENOSYS].contains(failure) else {
            throw LogError.system("cannot clone file", errno: failure, path: to)
        }
        return false
    }

    static func copyFile(_ from: String, to: String, result: inout Result) throws {
        let fd = try FileDescriptor.open(from, flags: O_RDONLY, displayPath: from)
        let file = SharedFile(fd, displayPath: from)
        try copyPrefix(file, bytes: try file.size(), to: to)
        result.files += 1
        result.copied += 1
        result.bytes += try file.size()
    }

    static func copyPrefix(_ file: SharedFile, bytes: Int64, to path: String) throws {
        let out = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_TRUNC, displayPath: path)
        let fd = out.rawValue
        var failure: LogError?
        do throws(LogError) {
            let buffer = GrowableBuffer(capacity: 1 << 20)
            var position: Int64 = 0
            while position < bytes {
                let n = try file.read(into: buffer.base, count: Int(min(Int64(buffer.capacity), bytes - position)), at: position)
                guard n > 0 else { break }
                try writeAll(.system, fd: fd, UnsafeRawBufferPointer(start: buffer.base, count: n), at: position, displayPath: path)
                position += Int64(n)
            }
            try FileOperations.system.fullSync(fd, display: path)
        } catch {
            failure = error
        }
        out.close()
        if let failure { throw failure }
    }
}
