#if canImport(Glibc)
import Glibc
#endif
import Dispatch

/// Every file effect of the storage engine (writes, syncs, truncations, renames, unlinks,
/// directory syncs), behind one seam: the system calls that can fail on a healthy process (the
/// disk fills, the device errs), so tests can inject ENOSPC and EIO at any of them without a
/// real full disk. Each returns what the system call returns, with `errno` set on failure.
public struct FileOperations: Sendable {
    /// `pwrite(2)`: returns bytes written, or -1.
    public var write: @Sendable (_ fd: Int32, _ bytes: UnsafeRawBufferPointer, _ offset: Int64) -> Int
    /// `fdatasync(2)`: the data and what is needed to read it back.
    public var sync: @Sendable (_ fd: Int32) -> Int32
    /// `fsync(2)`: data and metadata (a file about to be renamed into place).
    public var fullSync: @Sendable (_ fd: Int32) -> Int32
    /// `ftruncate(2)`.
    public var truncate: @Sendable (_ fd: Int32, _ length: Int64) -> Int32
    /// `rename(2)`.
    public var rename: @Sendable (_ from: String, _ to: String) -> Int32
    /// `unlink(2)`.
    public var unlink: @Sendable (_ path: String) -> Int32
    /// `fsync(2)` of a directory, so that a create, rename or unlink inside it is durable.
    public var syncDirectory: @Sendable (_ path: String) -> Int32

    public init(
        write: @escaping @Sendable (Int32, UnsafeRawBufferPointer, Int64) -> Int = FileOperations.systemWrite,
        sync: @escaping @Sendable (Int32) -> Int32 = FileOperations.systemSync,
        fullSync: @escaping @Sendable (Int32) -> Int32 = FileOperations.systemFullSync,
        truncate: @escaping @Sendable (Int32, Int64) -> Int32 = FileOperations.systemTruncate,
        rename: @escaping @Sendable (String, String) -> Int32 = FileOperations.systemRename,
        unlink: @escaping @Sendable (String) -> Int32 = FileOperations.systemUnlink,
        syncDirectory: @escaping @Sendable (String) -> Int32 = FileOperations.systemSyncDirectory
    ) {
        self.write = write
        self.sync = sync
        self.fullSync = fullSync
        self.truncate = truncate
        self.rename = rename
        self.unlink = unlink
        self.syncDirectory = syncDirectory
    }

    /// The real system calls.
    public static let system = FileOperations()

    public static let systemWrite: @Sendable (Int32, UnsafeRawBufferPointer, Int64) -> Int = { fd, bytes, offset in
        pwrite(fd, bytes.baseAddress, bytes.count, off_t(offset))
    }

    public static let systemSync: @Sendable (Int32) -> Int32 = { fdatasync($0) }
    public static let systemFullSync: @Sendable (Int32) -> Int32 = { fsync($0) }
    public static let systemTruncate: @Sendable (Int32, Int64) -> Int32 = { ftruncate($0, off_t($1)) }
    public static let systemRename: @Sendable (String, String) -> Int32 = { Glibc.rename($0, $1) }
    public static let systemUnlink: @Sendable (String) -> Int32 = { Glibc.unlink($0) }

    public static let systemSyncDirectory: @Sendable (String) -> Int32 = { path in
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return -1 }
        let result = fsync(fd)
        let saved = errno
        _ = Glibc.close(fd)
        errno = saved
        return result
    }
}

/// The same effects, each throwing a `LogError` that names the file as messages show it.
extension FileOperations {
    func fullSync(_ fd: Int32, display: String) throws(LogError) {
        guard fullSync(fd) == 0 else { throw LogError.system("fsync failed", errno: errno, path: display) }
    }

    func truncate(_ fd: Int32, to length: Int64, display: String) throws(LogError) {
        guard truncate(fd, length) == 0 else { throw LogError.system("cannot truncate", errno: errno, path: display) }
    }

    public func rename(_ from: String, to: String, display: String) throws(LogError) {
        guard rename(from, to) == 0 else { throw LogError.system("cannot rename into place", errno: errno, path: display) }
    }

    /// Removes `path`; one already gone is fine (that was the goal).
    public func remove(_ path: String, display: String) throws(LogError) {
        guard unlink(path) == 0 || errno == ENOENT else { throw LogError.system("cannot remove", errno: errno, path: display) }
    }

    public func syncDirectory(_ path: String, display: String) throws(LogError) {
        guard syncDirectory(path) == 0 else { throw LogError.system("cannot sync the directory", errno: errno, path: display) }
    }
}

/// An open file descriptor with one owner. Forgetting to close it is a bug, caught in debug builds.
struct FileDescriptor: ~Copyable {
    let rawValue: Int32
    private var isClosed = false

    init(rawValue: Int32) {
        precondition(rawValue >= 0)
        self.rawValue = rawValue
    }

    /// Opens `path`; throws a `LogError` naming `displayPath`.
    static func open(_ path: String, flags: Int32, mode: mode_t = 0o644, displayPath: String) throws(LogError) -> FileDescriptor {
        let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
        guard fd >= 0 else { throw LogError.system("cannot open file", errno: errno, path: displayPath) }
        return FileDescriptor(rawValue: fd)
    }

    consuming func close() {
        _ = Glibc.close(rawValue)
        isClosed = true
        discard self
    }

    deinit {
        assert(isClosed, "file descriptor \(rawValue) was never closed")
        _ = Glibc.close(rawValue)
    }
}

/// A shared, reference-counted open file: the descriptor closes when the last user lets go, so a
/// background fsync can never race a close and hit a reused descriptor number.
final class SharedFile: @unchecked Sendable {
    private var descriptor: FileDescriptor?
    let fd: Int32
    /// Path relative to the data directory, for error messages.
    let displayPath: String

    init(_ descriptor: consuming FileDescriptor, displayPath: String) {
        self.fd = descriptor.rawValue
        self.descriptor = .some(consume descriptor)
        self.displayPath = displayPath
    }

    deinit {
        descriptor.take()?.close()
    }

    /// Reads exactly `count` bytes at `offset` into `buffer`, or fewer at end of file.
    /// - Returns: the number of bytes read.
    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: Int64) throws(LogError) -> Int {
        var done = 0
        while done < count {
            let n = pread(fd, buffer + done, count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw LogError.system("read failed", errno: errno, path: displayPath)
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// The file's current size.
    func size() throws(LogError) -> Int64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw LogError.system("stat failed", errno: errno, path: displayPath) }
        return Int64(st.st_size)
    }
}

/// Writes all of `bytes` at `offset` through `ops`, retrying short writes and EINTR.
func writeAll(_ ops: FileOperations, fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64, displayPath: String) throws(LogError) {
    var done = 0
    while done < bytes.count {
        let n = ops.write(fd, UnsafeRawBufferPointer(rebasing: bytes[done...]), offset + Int64(done))
        if n < 0 {
            if errno == EINTR { continue }
            throw LogError.system("write failed", errno: errno, path: displayPath)
        }
        if n == 0 { throw LogError(.io, "write made no progress", path: displayPath) }
        done += n
    }
}

/// `writeAll` of an array's bytes.
func writeAll(_ ops: FileOperations, fd: Int32, _ bytes: [UInt8], at offset: Int64, displayPath: String) throws(LogError) {
    var failure: LogError?
    bytes.withUnsafeBytes { raw in
        do throws(LogError) { try writeAll(ops, fd: fd, raw, at: offset, displayPath: displayPath) } catch { failure = error }
    }
    if let failure { throw failure }
}

/// fdatasync through `ops`, reporting its duration to `onSync`; returns errno on failure.
func timedSync(_ ops: FileOperations, _ fd: Int32, onSync: ((Int64) -> Void)?) -> Int32? {
    let started = DispatchTime.now().uptimeNanoseconds
    let failure = ops.sync(fd) == 0 ? nil : errno
    onSync?(Int64(DispatchTime.now().uptimeNanoseconds - started))
    return failure
}

/// Fsyncs a directory so that a create, rename or unlink inside it is durable.
/// - Throws: `LogError` naming `display` when it cannot.
public func syncDirectory(_ path: String, display: String, _ ops: FileOperations = .system) throws(LogError) {
    try ops.syncDirectory(path, display: display)
}

extension FileOperations {
    /// The inode a path names now (nil when nothing is there): tells a file renamed over the
    /// path from the one a reader opened.
    public static func inode(_ path: String) -> UInt64? {
        var st = stat()
        return stat(path, &st) == 0 ? UInt64(st.st_ino) : nil
    }
}
