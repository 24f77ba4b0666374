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
        try copyFile(source.dataDirectory + "/" + LogMetadata.fileName, to: target + "/" + LogMetadata.fileName, result: &result)
        for name in [Retention.floorFile] where FileManager.default.fileExists(atPath: source.dataDirectory + "/" + name) {
            try copyFile(source.dataDirectory + "/" + name, to: target + "/" + name, result: &result)
        }
        let groups = source.dataDirectory + "/groups"
        if FileManager.default.fileExists(atPath: groups) {
            try FileManager.default.createDirectory(atPath: target + "/groups", withIntermediateDirectories: true)
            for name in try FileManager.default.contentsOfDirectory(atPath: groups) where name.hasSuffix(".json") {
                try copyFile(groups + "/" + name, to: target + "/groups/" + name, result: &result)
            }
        }
        for p in 0..<source.partitionCount {
            let view = source.views[p]
            let out = target + "/" + view.displayDirectory
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let bases = try view.segmentBases()
            for (i, base) in bases.enumerated() {
                let stem = SegmentFiles.name(base)
                if i < bases.count - 1 {
                    for suffix in [SegmentFiles.logSuffix, SegmentFiles.offsetIndexSuffix, SegmentFiles.timeIndexSuffix]
                    where FileManager.default.fileExists(atPath: view.directory + "/" + stem + suffix) {
                        try takeClosed(view.directory + "/" + stem + suffix, to: out + "/" + stem + suffix, mode: mode, result: &result)
                    }
                } else {
                    // The active segment: up to the last complete, valid batch.
                    let name = stem + SegmentFiles.logSuffix
                    let fd = try FileDescriptor.open(view.directory + "/" + name, flags: O_RDONLY, displayPath: view.displayDirectory + "/" + name)
                    let file = SharedFile(fd, displayPath: view.displayDirectory + "/" + name)
                    let scanner = SegmentScanner(file: file, size: try file.size(), buffer: GrowableBuffer(capacity: 64 << 10),
                                                 maxBatchBytes: view.limits.maxBatchBytes)
                    var end: Int64 = 0
                    var expected = base
                    while case .batch(let h) = try scanner.probe(at: end, expectedOffset: expected, verifyCRC: true) {
                        end += Int64(h.length)
                        expected = h.nextOffset
                    }
                    try copyPrefix(file, bytes: end, to: out + "/" + name)
                    result.files += 1
                    result.copied += 1
                    result.bytes += end
                }
            }
            syncDirectory(out)
        }
        syncDirectory(target)
        return result
    }

    /// Restores a backup into `dataDirectory`, which must be empty or absent.
    public static func restore(from backup: String, into dataDirectory: String) throws -> Result {
        guard FileManager.default.fileExists(atPath: backup + "/" + LogMetadata.fileName) else {
            throw LogError(.invalidLog, "\(backup) is not a sensorlog backup (\(LogMetadata.fileName) missing)")
        }
        try makeEmptyDirectory(dataDirectory)
        var result = Result()
        guard let e = FileManager.default.enumerator(atPath: backup) else { return result }
        for case let relative as String in e {
            let from = backup + "/" + relative
            var isDirectory: ObjCBool = false
            _ = FileManager.default.fileExists(atPath: from, isDirectory: &isDirectory)
            if isDirectory.boolValue {
                try FileManager.default.createDirectory(atPath: dataDirectory + "/" + relative, withIntermediateDirectories: true)
            } else {
                try copyFile(from, to: dataDirectory + "/" + relative, result: &result)
            }
        }
        return result
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
        let synced = status == 0 && fsync(out.rawValue) == 0
        let syncFailure = errno
        out.close()
        if synced { return true }
        unlink(to)
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
            if fsync(fd) != 0 { throw LogError.system("fsync failed", errno: errno, path: path) }
        } catch {
            failure = error
        }
        out.close()
        if let failure { throw failure }
    }
}
