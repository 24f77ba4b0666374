#if canImport(Glibc)
import Glibc
#endif
public import LogStore
import Synchronization

/// File operations that fail exactly one effect: the `failAt`-th call (counting from 1, over
/// every kind: write, sync, fsync, truncate, rename, unlink, directory sync) once `arm()` was
/// called, with `errno`. Every other call is the real system call. A test runs an operation
/// under plans 1, 2, 3, … until one never fires: then every effect of it has failed once.
public final class FaultPlan: Sendable {
    public let failAt: Int
    public let error: Int32
    private let state = Mutex<(armed: Bool, calls: Int, fired: Bool)>((false, 0, false))

    public init(failAt: Int, error: Int32 = 5 /* EIO */) {
        self.failAt = failAt
        self.error = error
    }

    public func arm() { state.withLock { $0.armed = true } }
    /// Whether the fault happened.
    public var fired: Bool { state.withLock { $0.fired } }

    /// True when this call is the one to fail (errno is then set).
    private func failsNow() -> Bool {
        let fails = state.withLock { s -> Bool in
            guard s.armed && !s.fired else { return false }
            s.calls += 1
            if s.calls == failAt { s.fired = true }
            return s.fired
        }
        if fails { errno = error }
        return fails
    }

    public var operations: FileOperations {
        let system = FileOperations.system
        return FileOperations(
            write: { [self] fd, bytes, offset in failsNow() ? -1 : system.write(fd, bytes, offset) },
            sync: { [self] fd in failsNow() ? -1 : system.sync(fd) },
            fullSync: { [self] fd in failsNow() ? -1 : system.fullSync(fd) },
            truncate: { [self] fd, length in failsNow() ? -1 : system.truncate(fd, length) },
            rename: { [self] from, to in failsNow() ? -1 : system.rename(from, to) },
            unlink: { [self] path in failsNow() ? -1 : system.unlink(path) },
            syncDirectory: { [self] path in failsNow() ? -1 : system.syncDirectory(path) })
    }
}
