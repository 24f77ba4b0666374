#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TestSupport

@testable import LogStore

/// A disk that can lose power: every file effect of the log goes through `operations` to the
/// real files, and a model keeps what a power cut would leave of them.
///
/// The model, per POSIX and no more (ext4's ordered mode gives no more for data):
/// - a file's contents are durable as of its last `fdatasync`/`fsync` (`sync`, `fullSync`),
///   size included; writes and truncations after it are lost (`UnsyncedWrites.lost`) or a
///   prefix of them survives in the order they were made, the last one torn (`.prefix`);
/// - a directory's entries (creates, renames, unlinks, new subdirectories) are durable as of
///   the last `syncDirectory` of that directory: a file whose entry was never synced is gone,
///   a rename or unlink not followed by one is undone; an `fsync` of a file does not make its
///   name durable;
/// - a file that was never synced is empty (its name may survive, per its directory).
///
/// Not modelled: metadata operations of one directory persisting partly or out of order
/// between two directory syncs (all or none of them survive), out-of-order write-back within
/// a file (a later unsynced write kept while an earlier one is lost), writes and creations that
/// bypass `FileOperations` (`open` with `O_CREAT`/`O_TRUNC`, `mkdir`: they count as unsynced
/// until a sync), sector-level garbage, and a disk that lies about `fsync`.
///
/// `syncDirectory`, `sync` and `fullSync` do not call the real system calls (the model decides
/// what survives, so the test does not wait on the device). Unlinked and replaced files are
/// kept alive by hard links in a graveyard beside the root, so that no inode number is reused
/// while the model may still name it.
final class SimulatedDisk: @unchecked Sendable {
    enum UnsyncedWrites: String, CaseIterable, Sendable {
        case lost
        case prefix
    }

    private enum Entry: Equatable {
        case file(UInt64)
        case directory
    }

    private enum Change {
        case write(Int64, [UInt8])
        case truncate(Int64)
    }

    /// The data directory (standardised, as the log names it).
    let root: String
    private let graveyard: String
    private let lock = NSLock()
    private var count = 0
    private var cutAt: Int?
    private var matcher: (@Sendable (String) -> Bool)?
    private var matched = 0
    private var isCut = false
    /// The operation the power was cut at, as "thread op file".
    private(set) var cutOperation: String?
    /// Durable contents by inode.
    private var data: [UInt64: [UInt8]] = [:]
    /// Changes since each inode's last sync.
    private var changes: [UInt64: [Change]] = [:]
    /// Durable entries by directory, relative to the root ("" is the root).
    private var listings: [String: [String: Entry]] = [:]
    private var buried = 0

    /// Takes what is on disk under `root` now as durable.
    init(root: String) {
        self.root = URL(fileURLWithPath: root).standardizedFileURL.path
        graveyard = self.root + ".graveyard"
        try? FileManager.default.removeItem(atPath: graveyard)
        try! FileManager.default.createDirectory(atPath: graveyard, withIntermediateDirectories: true)
        snapshotTree("")
    }

    /// File effects counted so far.
    var operationCount: Int { lock.withLock { count } }
    var hasCut: Bool { lock.withLock { isCut } }

    /// Cuts the power at the `n`-th file effect from now on (counting from 1) for which
    /// `matching` holds (given "thread-or-label operation file"; every effect when nil): it and
    /// every later one fail with EIO and change nothing.
    func cut(atOperation n: Int, matching: (@Sendable (String) -> Bool)? = nil) {
        lock.withLock {
            matcher = matching
            matched = 0
            cutAt = matching == nil ? count + n : n
        }
    }

    static let afterTheLastOperation = "after the last operation"

    /// Cuts the power now (if not cut already).
    func cutNow() {
        lock.withLock {
            if !isCut {
                isCut = true
                cutOperation = Self.afterTheLastOperation
            }
        }
    }

    /// Runs `body` with the operations of this thread reported as `label`'s (instead of the
    /// thread's name) should the power be cut during them.
    static func labelled<T>(_ label: String, _ body: () throws -> T) rethrows -> T {
        Thread.current.threadDictionary[labelKey] = label
        defer { Thread.current.threadDictionary[labelKey] = nil }
        return try body()
    }

    private static let labelKey = "SimulatedDisk.label"

    var operations: FileOperations {
        FileOperations(
            write: { fd, bytes, offset in self.write(fd, bytes, offset) },
            sync: { fd in self.sync(fd, "sync") },
            fullSync: { fd in self.sync(fd, "fsync") },
            truncate: { fd, length in self.truncate(fd, length) },
            rename: { from, to in self.rename(from, to) },
            unlink: { path in self.unlink(path) },
            syncDirectory: { path in self.syncDirectory(path) })
    }

    // MARK: The operations

    /// Counts an operation; false once the power is cut. Lock held.
    private func proceed(_ what: @autoclosure () -> String) -> Bool {
        guard !isCut else { return false }
        count += 1
        var fires = count == cutAt
        var description: String?
        if let matcher {
            description = "\(Self.who()) \(what())"
            if matcher(description!) { matched += 1 }
            fires = matched == cutAt
        }
        if fires {
            isCut = true
            cutOperation = description ?? "\(Self.who()) \(what())"
            return false
        }
        return true
    }

    /// The label of this thread's work, or the thread's name.
    private static func who() -> String {
        Thread.current.threadDictionary[labelKey] as? String ?? threadName()
    }

    private func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, _ offset: Int64) -> Int {
        let n: Int = lock.withLock {
            let zeros = bytes.allSatisfy { $0 == 0 }
            guard proceed("\(zeros ? "write-zeros" : "write") \(kind(fdPath(fd)))") else { return -1 }
            let n = pwrite(fd, bytes.baseAddress, bytes.count, off_t(offset))
            if n > 0 { changes[inode(fd), default: []].append(.write(offset, Array(bytes[0..<n]))) }
            return n
        }
        if n < 0 { errno = EIO }
        return n
    }

    private func sync(_ fd: Int32, _ name: String) -> Int32 {
        let ok: Bool = lock.withLock {
            guard proceed("\(name) \(kind(fdPath(fd)))") else { return false }
            var st = stat()
            fstat(fd, &st)
            // Through /proc: the descriptor may be write-only.
            let reader = Glibc.open("/proc/self/fd/\(fd)", O_RDONLY | O_CLOEXEC)
            precondition(reader >= 0, "cannot read back a file being synced")
            defer { _ = Glibc.close(reader) }
            var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
            let n = bytes.withUnsafeMutableBytes { pread(reader, $0.baseAddress, $0.count, 0) }
            precondition(n == bytes.count, "short read of a file being synced")
            data[UInt64(st.st_ino)] = bytes
            changes[UInt64(st.st_ino)] = nil
            return true
        }
        if !ok { errno = EIO }
        return ok ? 0 : -1
    }

    private func truncate(_ fd: Int32, _ length: Int64) -> Int32 {
        let (result, error): (Int32, Int32) = lock.withLock {
            guard proceed("truncate \(kind(fdPath(fd)))") else { return (-1, EIO) }
            let r = ftruncate(fd, off_t(length))
            let error = errno
            if r == 0 { changes[inode(fd), default: []].append(.truncate(length)) }
            return (r, error)
        }
        if result < 0 { errno = error }
        return result
    }

    private func rename(_ from: String, _ to: String) -> Int32 {
        lock.lock()
        guard proceed("rename \(kind(from))") else {
            lock.unlock()
            errno = EIO
            return -1
        }
        bury(to)
        let r = Glibc.rename(from, to)
        let saved = errno
        lock.unlock()
        errno = saved
        return r
    }

    private func unlink(_ path: String) -> Int32 {
        lock.lock()
        guard proceed("unlink \(kind(path))") else {
            lock.unlock()
            errno = EIO
            return -1
        }
        bury(path)
        let r = Glibc.unlink(path)
        let saved = errno
        lock.unlock()
        errno = saved
        return r
    }

    private func syncDirectory(_ path: String) -> Int32 {
        let ok: Bool = lock.withLock {
            guard proceed("syncdir \(kind(path))") else { return false }
            if let rel = relative(path) { listings[rel] = list(rel) }
            return true
        }
        if !ok { errno = EIO }
        return ok ? 0 : -1
    }

    // MARK: Power loss

    /// Rewrites the files under the root to what survives the power cut (cutting it now if it
    /// was not cut yet). Call once the log that used this disk is closed.
    /// - Returns: the files kept and the unsynced changes kept in part (`.prefix`).
    @discardableResult
    func restoreDurableState(_ unsynced: UnsyncedWrites, _ rng: inout SplitMix64) -> (files: Int, partlyKept: Int) {
        cutNow()
        var files: [(path: String, contents: [UInt8]?)] = []
        var partlyKept = 0
        lock.withLock {
            func walk(_ rel: String) {
                for (name, entry) in (listings[rel] ?? [:]).sorted(by: { $0.key < $1.key }) {
                    let child = rel.isEmpty ? name : rel + "/" + name
                    switch entry {
                    case .directory:
                        files.append((child, nil))
                        walk(child)
                    case .file(let ino):
                        var contents = data[ino] ?? []
                        if unsynced == .prefix, let pending = changes[ino], !pending.isEmpty {
                            let kept = Int(rng.next() % UInt64(pending.count + 1))
                            for change in pending.prefix(kept) { Self.apply(change, to: &contents) }
                            if kept < pending.count, case .write(let offset, let bytes) = pending[kept] {
                                Self.apply(.write(offset, Array(bytes.prefix(Int(rng.next() % UInt64(bytes.count))))), to: &contents)
                            }
                            if kept > 0 { partlyKept += 1 }
                        }
                        files.append((child, contents))
                    }
                }
            }
            walk("")
        }
        let fm = FileManager.default
        for name in (try? fm.contentsOfDirectory(atPath: root)) ?? [] { try! fm.removeItem(atPath: root + "/" + name) }
        for file in files {
            let path = root + "/" + file.path
            if let contents = file.contents {
                precondition(fm.createFile(atPath: path, contents: Data(contents)), "cannot restore \(path)")
            } else {
                try! fm.createDirectory(atPath: path, withIntermediateDirectories: false)
            }
        }
        try? fm.removeItem(atPath: graveyard)
        return (files.filter { $0.contents != nil }.count, partlyKept)
    }

    private static func apply(_ change: Change, to contents: inout [UInt8]) {
        switch change {
        case .write(let offset, let bytes):
            let end = Int(offset) + bytes.count
            if contents.count < end { contents += [UInt8](repeating: 0, count: end - contents.count) }
            contents.replaceSubrange(Int(offset)..<end, with: bytes)
        case .truncate(let length):
            let length = Int(length)
            if contents.count > length { contents.removeLast(contents.count - length) } else {
                contents += [UInt8](repeating: 0, count: length - contents.count)
            }
        }
    }

    // MARK: Helpers (lock held)

    /// Everything under `rel` counts as durable (the disk as found).
    private func snapshotTree(_ rel: String) {
        listings[rel] = list(rel)
        for (name, entry) in listings[rel]! {
            let child = rel.isEmpty ? name : rel + "/" + name
            switch entry {
            case .directory: snapshotTree(child)
            case .file(let ino): data[ino] = SegmentFiles.readWholeFile(root + "/" + child) ?? []
            }
        }
    }

    /// The entries of directory `rel` now.
    private func list(_ rel: String) -> [String: Entry] {
        let directory = rel.isEmpty ? root : root + "/" + rel
        var entries: [String: Entry] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            var st = stat()
            guard lstat(directory + "/" + name, &st) == 0 else { continue }
            switch st.st_mode & S_IFMT {
            case S_IFDIR: entries[name] = .directory
            case S_IFREG: entries[name] = .file(UInt64(st.st_ino))
            default: continue  // sockets, links: not the log's
            }
        }
        return entries
    }

    /// Keeps the file at `path` (if any) alive under another name, so its inode is not reused.
    private func bury(_ path: String) {
        buried += 1
        _ = Glibc.link(path, graveyard + "/\(buried)")
    }

    private func relative(_ path: String) -> String? {
        let path = URL(fileURLWithPath: path).standardizedFileURL.path
        if path == root { return "" }
        return path.hasPrefix(root + "/") ? String(path.dropFirst(root.count + 1)) : nil
    }

    private func inode(_ fd: Int32) -> UInt64 {
        var st = stat()
        fstat(fd, &st)
        return UInt64(st.st_ino)
    }

    private func fdPath(_ fd: Int32) -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)")) ?? "fd \(fd)"
    }

    /// What kind of file `path` is, for the report of where power was cut.
    private func kind(_ path: String) -> String {
        var name = (path as NSString).lastPathComponent
        var wrappers: [String] = []
        for suffix in [".tmp", Compactor.pendingSuffix] where name.hasSuffix(suffix) {
            name.removeLast(suffix.count)
            wrappers.append(String(suffix.dropFirst()))
        }
        let base: String
        if relative(path) == "" { base = "data-dir" }
        else if name == DataLayout.logName { base = "log-dir" }
        else if name.hasPrefix("partition-") { base = "partition-dir" }
        else if name.hasSuffix(".journal") { base = "journal" }
        else if let dot = name.lastIndex(of: "."), name[..<dot].count == 20 { base = String(name[dot...]) }
        else { base = name }
        return ([base] + wrappers.reversed()).joined(separator: ".")
    }

    private static func threadName() -> String {
        guard let name = SegmentFiles.readWholeFile("/proc/thread-self/comm") else { return "?" }
        let text = String(decoding: name, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        // The log's threads are "slog-…"; a test's own are named by it, or are the pool's.
        return text.isEmpty || text.contains(" ") ? "test" : text.hasSuffix("default-qos") ? "test" : text
    }
}
