#if canImport(Glibc)
import Glibc
#endif

/// Names the calling thread, as `top -H` and perf show it. Foundation's `Thread.name` does not
/// reach the kernel on Linux (nor is pthread_setname_np visible to Swift), so this writes
/// /proc/thread-self/comm; the kernel keeps 15 bytes.
public func nameCurrentThread(_ name: String) {
    #if os(Linux)
    let fd = open("/proc/thread-self/comm", O_WRONLY)
    guard fd >= 0 else { return }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    #endif
}
