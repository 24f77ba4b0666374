#if canImport(Glibc)
import Glibc
#endif
import Dispatch

/// The system calls that can fail on a healthy process (the disk fills, the device errs), behind
/// one seam so tests can inject ENOSPC and EIO without a real full disk.
public struct FileOperations: Sendable {
    /// `pwrite(2)`: returns bytes written, or -1 with `errno` set.
    public var write: @Sendable (_ fd: Int32, _ bytes: UnsafeRawBufferPointer, _ offset: Int64) -> Int
    /// `fdatasync(2)`: returns 0, or -1 with `errno` set.
    public var sync: @Sendable (_ fd: Int32) -> Int32

    public init(
        write: @escaping @Sendable (Int32, UnsafeRawBufferPointer, Int64) -> Int,
        sync: @escaping @Sendable (Int32) -> Int32
    ) {
        self.write = write
        self.sync = sync
    }

    /// The real system calls.
    public static let system = FileOperations(
        write: { fd, bytes, offset in pwrite(fd, bytes.baseAddress, bytes.count, off_t(offset)) },
        sync: { fd in fdatasync(fd) }
    )
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

/// fdatasync through `ops`, reporting its duration to `onSync`; returns errno on failure.
func timedSync(_ ops: FileOperations, _ fd: Int32, onSync: ((Int64) -> Void)?) -> Int32? {
    let started = DispatchTime.now().uptimeNanoseconds
    let failure = ops.sync(fd) == 0 ? nil : errno
    onSync?(Int64(DispatchTime.now().uptimeNanoseconds - started))
    return failure
}

/// Fsyncs a directory so that a create, rename or unlink inside it is durable.
public func syncDirectory(_ path: String) {
    let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if fd >= 0 {
        _ = fsync(fd)
        _ = Glibc.close(fd)
    }
}
